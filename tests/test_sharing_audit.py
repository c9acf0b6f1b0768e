"""Share grants leave a trace, and a gateway introspecting a link learns what it is.

- creating and revoking a grant (``/api/shares``) and a push request are audited, naming the
  study and its patient;
- ``/oauth/introspect`` answers a link's capability as active only while its grant is, with the
  ``share`` and the ``study`` it is confined to; a revoked link's ``jti`` is in the revoked tokens.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import oauthhelpers as h
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jws
from sqlalchemy import select

import dicomfactory as f
from conftest import Mint
from drimhub.server.audit import classify
from drimhub.store.audit import AuditRecord
from drimhub.store.network import Share
from drimhub.store.security import RevokedToken
from test_shares import SHARER, bearer, grant, later, link


@pytest.fixture
def study(client: FlaskClient) -> f.Instance:
    inst = f.ct(patient_id="PAT-AUD", seed=7)
    body, ctype = f.multipart([inst.data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    return inst


def events(app: Flask, request_id: str) -> list[AuditRecord]:
    with app.extensions["drimhub"].sessions() as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.request_id == request_id)))


def studies_named(row: AuditRecord) -> list[str]:
    event = orjson.loads(row.resource)
    return [e["what"]["identifier"]["value"] for e in event["entity"] if "what" in e and "identifier" in e["what"]]


def test_sharing_urls_are_data_urls() -> None:
    assert classify("POST", "/api/shares") == ("sharing", "create")
    assert classify("DELETE", "/api/shares/abc") == ("sharing", "delete")
    assert classify("GET", "/api/jobs/j1") == ("sharing", "read")
    assert classify("POST", "/api/peers/node-c/push") == ("sharing", "create")
    assert classify("GET", "/api/peers") is None and classify("POST", "/api/peers/node-c") is None


def test_creating_and_revoking_a_link_is_audited_with_the_study(app: Flask, anon: FlaskClient, mint: Mint,
                                                                study: f.Instance) -> None:
    body = {"study": study.study, "grantee": {"link": True}, "permissions": ["read"], "expires": later(days=7)}
    r = anon.post("/api/shares", json=body,
                  headers={**bearer(mint(SHARER)), "X-Request-Id": "grant-1"})
    assert r.status_code == 201
    [created] = events(app, "grant-1")
    assert (created.action, created.outcome, created.org) == ("C", "0", "org-a")
    assert created.patient and created.patient.endswith("PAT-AUD")
    assert f"urn:oid:{study.study}" in studies_named(created)
    r = anon.delete(f"/api/shares/{r.json['id']}", headers={**bearer(mint(SHARER)), "X-Request-Id": "revoke-1"})
    assert r.status_code == 204
    [revoked] = events(app, "revoke-1")
    assert revoked.action == "D" and revoked.patient and revoked.patient.endswith("PAT-AUD")
    assert f"urn:oid:{study.study}" in studies_named(revoked)


def test_a_refused_grant_is_audited_too(app: Flask, anon: FlaskClient, mint: Mint, study: f.Instance) -> None:
    r = anon.post("/api/shares", json={"study": study.study, "grantee": {"org": "org-b"}, "permissions": ["read"],
                                       "expires": later(days=7)},
                  headers={**bearer(mint("system/*.cruds")), "X-Request-Id": "grant-refused"})
    assert r.status_code == 403
    assert events(app, "grant-refused")  # a Security Alert at least


# --- introspection of a link -------------------------------------------------------------------

def introspect(anon: FlaskClient, auth: tuple[str, str], token: str) -> dict[str, Any]:
    r = anon.post("/oauth/introspect", data={"token": token}, auth=auth)
    assert r.status_code == 200, r.get_json()
    body: dict[str, Any] = r.get_json()
    return body


@pytest.fixture
def gateway(app: Flask) -> tuple[str, str]:
    client_id, secret = h.register(app, "system/*.rs", secret=True, name="gateway")
    assert secret
    return client_id, secret


def test_introspection_of_a_link_names_its_share_and_study(app: Flask, anon: FlaskClient, mint: Mint,
                                                           study: f.Instance, gateway: tuple[str, str]) -> None:
    share, _ = link(anon, mint, study.study)
    answer = introspect(anon, gateway, share["token"])
    assert answer["active"] is True
    assert (answer["share"], answer["study"], answer["org"]) == (share["id"], study.study, "org-a")
    assert anon.delete(f"/api/shares/{share['id']}", headers=bearer(mint(SHARER))).status_code == 204
    assert introspect(anon, gateway, share["token"]) == {"active": False}
    jti = orjson.loads(jws.extract_compact(share["token"].encode()).payload)["jti"]
    with app.extensions["drimhub"].sessions() as session:
        assert session.scalar(select(RevokedToken.jti).where(RevokedToken.jti == jti)) == jti


def test_introspection_of_an_expired_grant_is_inactive(app: Flask, anon: FlaskClient, mint: Mint,
                                                       study: f.Instance, gateway: tuple[str, str]) -> None:
    share, _ = link(anon, mint, study.study)
    with app.extensions["drimhub"].sessions() as session, session.begin():
        row = session.scalars(select(Share).where(Share.id == share["id"])).one()
        row.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)  # the token's exp is still ahead
    assert introspect(anon, gateway, share["token"]) == {"active": False}


def test_a_forged_share_claim_is_inactive(anon: FlaskClient, mint: Mint, study: f.Instance,
                                          gateway: tuple[str, str]) -> None:
    share = grant(anon, mint, study.study, {"link": True})
    forged = mint("system/ImagingStudy.rs", share=share["id"])  # signed, but not the grant's jti
    assert introspect(anon, gateway, forged) == {"active": False}
