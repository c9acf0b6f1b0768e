"""Who the federation serves, and what it sends to peers (review findings on access, issue 5).

The node under test is the in-process ``app`` (SQLite and PostgreSQL); its peer is a recording
HTTP server on loopback (:class:`Peer`) that answers QIDO-RS, FHIR searches and token requests
from canned bodies and keeps every request it got, so a test sees exactly what reached the peer.
An external identity provider both trust (``TRUSTED_ISSUERS``) is served by the same server.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import click
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey
from joserfc.jwk import RSAKey
from sqlalchemy import update

import dicomfactory as f
from conftest import BASE_URL, Mint
from drimhub.errors import InvalidRequest, PeerUnavailable
from drimhub.federation import smart
from drimhub.federation.outbound import OutboundRefused, guarded_session
from drimhub.federation.peers import PeerInfo, address_refused, origin_of
from drimhub.server.auth.clients import create_client
from drimhub.server.auth.protect import parse_trusted_issuers
from drimhub.server.auth.users import add_user
from drimhub.server.cli import _check_org
from drimhub.store.engine import write_session
from drimhub.store.models import Study

IDP = "https://idp.shared.example/realms/imaging"
READER = "system/ImagingStudy.rs"
PEER_READER = f"{READER} drimhub/peer"
SUBJECT_INCLUDE = "ImagingStudy:subject"
ISSUER = "1.2.250.1.71.4.2.7"  # a hospital's Issuer of Patient ID (an OID)
_TOMORROW = datetime.now(timezone.utc) + timedelta(days=1)


@dataclass
class Peer:
    """A peer node as seen from the wire: canned answers by path, every request recorded."""

    key: ECKey
    answers: dict[str, Any] = field(default_factory=dict)
    seen: list[tuple[str, str, list[tuple[str, str]], str | None]] = field(default_factory=list)
    url: str = ""

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.seen]


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    key = ECKey.generate_key("P-384", private=True)
    key.ensure_kid()
    state = Peer(key)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            state.seen.append((self.command, parts.path, parse_qsl(parts.query), self.headers.get("Authorization")))
            if parts.path == "/jwks":
                body, ctype = orjson.dumps({"keys": [key.as_dict(private=False)]}), "application/json"
            elif parts.path in state.answers:
                body, ctype = orjson.dumps(state.answers[parts.path]), "application/json"
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def app_config(peer: Peer) -> dict[str, Any]:
    return {"TRUSTED_ISSUERS": f"{IDP}={peer.url}/jwks", "PEER_TIMEOUT": 5}


@pytest.fixture(autouse=True)
def fresh_peer(peer: Peer) -> None:
    peer.seen.clear()
    peer.answers.clear()


def _add_peer(client: FlaskClient, mint: Mint, peer: Peer, **body: Any) -> None:
    added = client.post("/api/peers", json={"name": "p", "url": peer.url, "allow_private": True, **body},
                        headers={"Authorization": f"Bearer {mint('drimhub/admin')}"})
    assert added.status_code == 201, added.json


def _external(peer: Peer, scope: str = READER, **claims: Any) -> str:
    """A token of the identity provider both nodes trust."""
    now = int(time.time())
    body = {"iss": IDP, "sub": "dr-martin", "aud": BASE_URL, "exp": now + 300, "iat": now, "scope": scope,
            "org": "org-a", **claims}
    return jwt.encode({"alg": "ES384", "kid": peer.key.kid, "typ": "JWT"}, body, peer.key, algorithms=["ES384"])


def _bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def _cached_copy(client: FlaskClient, app: Flask) -> f.Instance:
    """A study held as peer p's cached copy (stored, then handed to the cache's organisation)."""
    inst = f.ct()
    body, ctype = f.multipart([inst.data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    with write_session(app.extensions["drimhub"].sessions) as session:
        session.execute(update(Study).where(Study.study_uid == inst.study).values(org="peer:p", origin="p",
                                                                                       expires_at=_TOMORROW))
    return inst


# --- 2. the cache's organisations are reserved ---------------------------------------------------

def test_cached_copies_are_not_seen_through_the_plain_root_by_any_token(client: FlaskClient, anon: FlaskClient,
                                                                         app: Flask, mint: Mint) -> None:
    inst = _cached_copy(client, app)
    for scope in (f"{READER} drimhub/cross-org.s", PEER_READER):
        auth = _bearer(mint(scope, org="org-b"))
        found = anon.get(f"/dicom-web/studies?StudyInstanceUID={inst.study}", headers=auth)
        assert found.status_code == 200 and found.json == [], scope
        assert anon.get(f"/dicom-web/studies/{inst.study}/metadata", headers=auth).status_code == 404, scope
        fhir = anon.get(f"/fhir/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{inst.study}", headers=auth).json
        assert not [e for e in fhir.get("entry", []) if e["search"]["mode"] == "match"], scope


def test_a_token_acting_for_a_cache_organisation_is_refused(client: FlaskClient, anon: FlaskClient, app: Flask,
                                                            mint: Mint) -> None:
    inst = _cached_copy(client, app)
    auth = _bearer(mint(org="peer:p"))
    found = anon.get(f"/dicom-web/studies?StudyInstanceUID={inst.study}", headers=auth)
    assert found.status_code == 401 and "reserved" in found.headers["WWW-Authenticate"]
    body, ctype = f.multipart([f.ct(inst.study).data])
    assert anon.post("/dicom-web/studies", data=body, headers={**auth, "Content-Type": ctype}).status_code == 401


def test_cache_organisations_cannot_be_given_to_clients_users_or_issuers(app: Flask) -> None:
    with write_session(app.extensions["drimhub"].sessions) as session:
        with pytest.raises(InvalidRequest, match="reserved"):
            create_client(session, "sneaky", READER, org="peer:p", secret=True)
        with pytest.raises(InvalidRequest, match="reserved"):
            add_user(session, "sneaky", "a-long-enough-password", scope=READER, org="peer:p")
    with pytest.raises(click.BadParameter, match="reserved"):
        _check_org("peer:p")
    with pytest.raises(ValueError, match="reserved"):
        parse_trusted_issuers("https://idp.example=https://idp.example/jwks;org=peer:p")


# --- 3. a peer node's token is answered locally ---------------------------------------------------

def test_a_peer_nodes_token_makes_no_transitive_federation(client: FlaskClient, anon: FlaskClient, app: Flask,
                                                           mint: Mint, peer: Peer) -> None:
    _add_peer(client, mint, peer, client_id="us", scope=READER, token_url=f"{peer.url}/token")
    inst = _cached_copy(client, app)
    as_peer = _bearer(mint(PEER_READER, org="node-x"))
    found = anon.get(f"/federated/dicom-web/studies?StudyInstanceUID={inst.study}", headers=as_peer)
    assert found.status_code == 200 and found.json == [] and "Warning" not in found.headers  # no cache either
    fhir = anon.get("/fhir/ImagingStudy?_federated=true", headers=as_peer)
    assert fhir.status_code == 200
    assert anon.get(f"/federated/dicom-web/studies/{f.new_uid()}/metadata", headers=as_peer).status_code == 404
    assert peer.seen == []
    # the same search by a local user reaches the peer (its token endpoint first) and the cached copy
    local = client.get(f"/federated/dicom-web/studies?StudyInstanceUID={inst.study}")
    assert [m["0020000D"]["Value"][0] for m in local.json] == [inst.study]
    assert "/token" in peer.paths()


# --- 4. only a shared identity provider's token is relayed -----------------------------------------

def test_relay_peers_get_only_a_shared_identity_providers_token(client: FlaskClient, anon: FlaskClient,
                                                                 mint: Mint, peer: Peer) -> None:
    _add_peer(client, mint, peer, auth="relay")
    peer.answers["/dicom-web/studies"] = []
    own = anon.get("/federated/dicom-web/studies", headers=_bearer(mint(READER), Host="evil.example"))
    assert own.status_code == 200
    assert peer.seen == []  # this node's own token never leaves it
    assert own.headers["Warning"] == "299 localhost: peer p needs a token of a shared identity provider"
    external = _external(peer)
    shared = anon.get("/federated/dicom-web/studies", headers=_bearer(external))
    assert shared.status_code == 200 and "Warning" not in shared.headers
    [(_, path, _, authorization)] = [s for s in peer.seen if s[1] != "/jwks"]
    assert path == "/dicom-web/studies" and authorization == f"Bearer {external}"


# --- 5. patient/ scopes reach peers only for a patient named with its issuer -----------------------

def _imaging_study(uid: str, patient: str) -> dict[str, Any]:
    return {"resourceType": "ImagingStudy", "id": uid, "status": "available", "subject": {"reference": f"Patient/{patient}"},
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]}


def _patient(pid: str, system: str, value: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "identifier": [{"system": system, "value": value}]}


def test_patient_scopes_federate_only_with_an_issuer_and_keep_only_that_patient(anon: FlaskClient,
                                                                                 client: FlaskClient, mint: Mint,
                                                                                 peer: Peer) -> None:
    _add_peer(client, mint, peer, auth="relay")
    mine, theirs = f.new_uid(), f.new_uid()
    peer.answers["/dicom-web/studies"] = [
        {"0020000D": {"vr": "UI", "Value": [mine]}, "00100020": {"vr": "LO", "Value": ["P1"]},
         "00100021": {"vr": "LO", "Value": [ISSUER]}},
        {"0020000D": {"vr": "UI", "Value": [theirs]}, "00100020": {"vr": "LO", "Value": ["P1"]},
         "00100021": {"vr": "LO", "Value": ["another.hospital"]}}]
    peer.answers["/fhir/ImagingStudy"] = {"resourceType": "Bundle", "type": "searchset", "total": 2, "entry": [
        {"resource": _imaging_study(mine, "a"), "search": {"mode": "match"}},
        {"resource": _imaging_study(theirs, "b"), "search": {"mode": "match"}},
        {"resource": _patient("a", f"urn:oid:{ISSUER}", "P1"), "search": {"mode": "include"}},
        {"resource": _patient("b", "urn:oid:9.9.9", "P1"), "search": {"mode": "include"}}]}
    scope = "patient/ImagingStudy.rs"

    bare = _bearer(_external(peer, scope, patient="P1"))  # a PatientID without its issuer: no peer
    assert anon.get("/federated/dicom-web/studies", headers=bare).json == []
    fhir = anon.get("/fhir/ImagingStudy?_federated=true", headers=bare).json
    assert not [e for e in fhir.get("entry", []) if e["search"]["mode"] == "match"]
    assert [s for s in peer.seen if s[1] != "/jwks"] == []

    named = _bearer(_external(peer, scope, patient=f"{ISSUER}|P1"))
    found = anon.get("/federated/dicom-web/studies", headers=named)
    assert [m["0020000D"]["Value"][0] for m in found.json] == [mine]
    [qido] = [s for s in peer.seen if s[1] == "/dicom-web/studies"]
    assert ("PatientID", "P1") in qido[2] and ("IssuerOfPatientID", ISSUER) in qido[2]
    fhir = anon.get("/fhir/ImagingStudy?_federated=true&patient=Patient/other", headers=named)
    assert fhir.status_code == 200, fhir.json
    entries = fhir.json["entry"]
    assert [e["resource"]["id"] for e in entries if e["search"]["mode"] == "match"] == [mine]
    assert [e["resource"]["id"] for e in entries if e["search"]["mode"] == "include"] == ["a"]
    [search] = [s for s in peer.seen if s[1] == "/fhir/ImagingStudy"]
    assert ("patient.identifier", f"urn:oid:{ISSUER}|P1") in search[2]
    assert ("_include", SUBJECT_INCLUDE) in search[2] and ("patient", "Patient/other") not in search[2]


def test_fhir_includes_of_a_duplicate_match_are_left_out(client: FlaskClient, mint: Mint, peer: Peer) -> None:
    _add_peer(client, mint, peer, auth="relay")
    inst = f.ct()
    body, ctype = f.multipart([inst.data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    other = f.new_uid()
    peer.answers["/fhir/ImagingStudy"] = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": _imaging_study(inst.study, "dup"), "search": {"mode": "match"}},
        {"resource": _imaging_study(other, "kept"), "search": {"mode": "match"}},
        {"resource": _patient("dup", "urn:oid:9.9.9", "X"), "search": {"mode": "include"}},
        {"resource": _patient("kept", "urn:oid:9.9.9", "Y"), "search": {"mode": "include"}}]}
    external = _bearer(_external(peer, f"{READER} system/Patient.rs"))
    got = client.get("/fhir/ImagingStudy?_federated=true", headers=external).json
    peers = [e for e in got["entry"] if e["fullUrl"].startswith(peer.url)]
    assert [(e["search"]["mode"], e["resource"]["id"]) for e in peers] == [("match", other), ("include", "kept")]


# --- 19. a bad token endpoint URL is a peer error, not a 500 ----------------------------------------

def test_a_token_endpoint_url_requests_refuses_is_a_peer_error() -> None:
    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()
    for bad in ("https://" + "a" * 64 + ".example/token", "https://exa mple.org/token"):
        peer = PeerInfo("p", "https://peer.example/dicom-web", None, "smart-backend", "us", READER, bad, False, 2.0)
        with pytest.raises(PeerUnavailable, match="token endpoint unreachable"):
            smart.access_token(peer, key)


# --- 20. addresses inside addresses; refusals that do not reveal -----------------------------------

@pytest.mark.parametrize("address", ["2002:7f00:1::1", "2002:a00:1::1", "2002:a9fe:a9fe::1",
                                     "2001:0:4136:e378:8000:63bf:80ff:fffe", "::ffff:127.0.0.1"])
def test_ipv6_addresses_carrying_an_internal_ipv4_address_are_refused(address: str) -> None:
    assert address_refused(address) is not None


def test_a_public_6to4_address_is_not_refused() -> None:
    assert address_refused("2002:808:808::1") is None


def test_a_refusal_does_not_reveal_the_address_a_name_resolves_to() -> None:
    with guarded_session(origin_of("https://localhost:9"), allow_private=False, timeout=2) as session:
        with pytest.raises(OutboundRefused, match="refused") as refused:
            session.get("https://localhost:9/dicom-web/studies")
    assert "127.0.0.1" not in refused.value.message and "::1" not in refused.value.message


def test_a_cross_organisation_search_sees_unexpired_cached_copies_only(client: FlaskClient, anon: FlaskClient,
                                                                        app: Flask, mint: Mint) -> None:
    fresh, stale = _cached_copy(client, app), _cached_copy(client, app)
    with write_session(app.extensions["drimhub"].sessions) as session:
        session.execute(update(Study).where(Study.study_uid == stale.study)
                        .values(expires_at=datetime.now(timezone.utc) - timedelta(minutes=1)))
    auth = _bearer(mint(f"{READER} drimhub/cross-org.s", org="region"))
    found = anon.get("/federated/dicom-web/studies", headers=auth)
    assert found.status_code == 200
    assert [m["0020000D"]["Value"][0] for m in found.json] == [fresh.study]
