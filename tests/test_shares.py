"""Share grants (``/api/shares``) and share links: one study, for its grantee only, until revoked or expired.

Organisation ``org-a`` stores two studies of two patients (``shared`` and ``other``) and grants
the first: to a link (a capability token, a bearer on ``/dicom-web``, ``/wado`` and ``/fhir``
for that study only), to organisation ``org-b``, or to the user ``dr-house``. Every answer is
the real app's, over a real database (SQLite and PostgreSQL); one test drives the link with
dicomweb-client against a live server on loopback.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from dicomweb_client.api import DICOMwebClient
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jws

import dicomfactory as f
from conftest import Mint
from drimhub.store.access import Access, Grantee
from drimhub.store.audit import AuditRecord
from drimhub.store.models import Study
from drimhub.store.network import Share
from sqlalchemy import select

SHARER = "system/*.cruds drimhub/share"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
PNG = {"Accept": "image/png"}


@pytest.fixture
def studies(client: FlaskClient) -> dict[str, f.Instance]:
    """Two studies of org-a, of two patients: ``shared`` (the one granted) and ``other``."""
    found = {"shared": f.ct(patient_id="PAT-S", seed=1), "other": f.ct(patient_id="PAT-O", seed=2)}
    body, ctype = f.multipart([i.data for i in found.values()])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    return found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def later(**delta: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(**delta)).replace(microsecond=0).isoformat()


def grant(anon: FlaskClient, mint: Mint, study: str, grantee: dict[str, Any], permissions: list[str] | None = None,
          expires: str | None = None, org: str = "org-a", **extra: Any) -> Any:
    body = {"study": study, "grantee": grantee, "permissions": permissions or ["read"],
            "expires": expires or later(days=7), **extra}
    r = anon.post("/api/shares", json=body, headers=bearer(mint(SHARER, org=org)))
    assert r.status_code == 201, r.json
    return r.json


def link(anon: FlaskClient, mint: Mint, study: str, permissions: list[str] | None = None,
         expires: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    created = grant(anon, mint, study, {"link": True}, permissions, expires)
    return created, bearer(created["token"])


def instance_urls(inst: f.Instance) -> dict[str, str]:
    study = f"/dicom-web/studies/{inst.study}"
    series = f"{study}/series/{inst.series}"
    instance = f"{series}/instances/{inst.sop}"
    return {"study": study, "series": series, "instance": instance}


def wado_uri(inst: f.Instance, content_type: str) -> str:
    return (f"/wado?requestType=WADO&studyUID={inst.study}&seriesUID={inst.series}&objectUID={inst.sop}"
            f"&contentType={content_type}")


# --- the grant --------------------------------------------------------------------------------

def test_link_grant_and_its_capability_token(anon: FlaskClient, mint: Mint, studies: dict[str, f.Instance]) -> None:
    expires = later(days=3)
    r = anon.post("/api/shares", headers=bearer(mint(SHARER)),
                  json={"study": studies["shared"].study, "grantee": {"link": True}, "permissions": ["read"],
                        "expires": expires, "note": "pour le Dr Martin"})
    assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store"
    share = r.json
    assert set(share) == {"id", "study", "grantee", "permissions", "expires", "note", "created", "createdBy", "token"}
    assert share["study"] == studies["shared"].study
    assert (share["grantee"], share["permissions"]) == ({"link": True}, ["read"])
    assert datetime.fromisoformat(share["expires"]) == datetime.fromisoformat(expires)
    assert (share["note"], share["createdBy"]) == ("pour le Dr Martin", "tester")
    assert r.headers["Location"].endswith(f"/api/shares/{share['id']}")
    compact = jws.extract_compact(share["token"].encode())
    claims = orjson.loads(compact.payload)
    assert compact.headers()["typ"] == "at+jwt"
    assert claims["exp"] == int(datetime.fromisoformat(expires).timestamp())  # never outlives the grant
    assert (claims["sub"], claims["share"], claims["org"]) == (f"share:{share['id']}", share["id"], "org-a")
    assert claims["scope"] == "system/ImagingStudy.rs" and claims["iss"] == claims["aud"] == "http://localhost"
    listed = anon.get("/api/shares", headers=bearer(mint(SHARER)))
    assert [s["id"] for s in listed.json] == [share["id"]] and "token" not in listed.json[0]  # shown once


#: (body change, why it is a 400): each rule of the POST body.
BAD_BODIES = [
    ({"expires": None}, "expires-mandatory"),
    ({"expires": "2030-01-01T00:00:00"}, "expires-needs-a-zone"),
    ({"expires": "2020-01-01T00:00:00Z"}, "expires-in-the-past"),
    ({"expires": "yesterday"}, "expires-not-iso-8601"),
    ({"expires": (datetime.now(timezone.utc) + timedelta(days=400)).isoformat()}, "expires-beyond-max-days"),
    ({"permissions": ["download"]}, "download-without-read"),
    ({"permissions": ["read", "write"]}, "unknown-permission"),
    ({"permissions": []}, "no-permission"),
    ({"grantee": {"org": "org-b", "user": "x"}}, "two-grantees"),
    ({"grantee": {"link": False}}, "link-false"),
    ({"grantee": {"org": ""}}, "empty-org"),
    ({"grantee": {"org": "org-a"}}, "own-org"),
    ({"study": "not-a-uid"}, "bad-study-uid"),
    ({"note": 3}, "note-not-a-string"),
    ({"admin": True}, "unknown-field"),
]


@pytest.mark.parametrize("change", [b for b, _ in BAD_BODIES], ids=[i for _, i in BAD_BODIES])
def test_bad_grants_are_400(anon: FlaskClient, mint: Mint, studies: dict[str, f.Instance],
                            change: dict[str, Any]) -> None:
    body = {"study": studies["shared"].study, "grantee": {"org": "org-b"}, "permissions": ["read"],
            "expires": later(days=1), **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = anon.post("/api/shares", json=body, headers=bearer(mint(SHARER)))
    assert r.status_code == 400 and r.json["error"] == "invalid_request" and r.json["error_description"]


def test_grants_of_one_organisation(anon: FlaskClient, mint: Mint, studies: dict[str, f.Instance]) -> None:
    uid = studies["shared"].study
    # a study of another organisation, or unknown, is not found; the scope is needed
    r = anon.post("/api/shares", json={"study": uid, "grantee": {"link": True}, "permissions": ["read"],
                                       "expires": later(days=1)}, headers=bearer(mint(SHARER, org="org-b")))
    assert r.status_code == 404 and r.json["error"] == "not-found"
    r = anon.post("/api/shares", json={"study": uid, "grantee": {"link": True}, "permissions": ["read"],
                                       "expires": later(days=1)}, headers=bearer(mint("system/*.cruds")))
    assert r.status_code == 403 and r.json["error"] == "insufficient_scope"
    one = grant(anon, mint, uid, {"org": "org-b"})
    two = grant(anon, mint, studies["other"].study, {"user": "dr-house"}, ["read", "download"])
    mine = bearer(mint(SHARER))
    assert [s["id"] for s in anon.get("/api/shares", headers=mine).json] == [one["id"], two["id"]]
    assert [s["id"] for s in anon.get(f"/api/shares?study={uid}", headers=mine).json] == [one["id"]]
    assert anon.get("/api/shares?study=x", headers=mine).status_code == 400
    assert anon.get(f"/api/shares/{two['id']}", headers=mine).json == two
    theirs = bearer(mint(SHARER, org="org-b"))
    assert anon.get("/api/shares", headers=theirs).json == []
    assert anon.get(f"/api/shares/{one['id']}", headers=theirs).status_code == 404
    assert anon.delete(f"/api/shares/{one['id']}", headers=theirs).status_code == 404
    assert anon.delete(f"/api/shares/{one['id']}", headers=mine).status_code == 204
    assert "revoked" in anon.get(f"/api/shares/{one['id']}", headers=mine).json
    assert anon.delete(f"/api/shares/{one['id']}", headers=mine).status_code == 204  # again: no change


# --- the link: its study only -----------------------------------------------------------------

def test_link_sees_its_study_only(anon: FlaskClient, mint: Mint, studies: dict[str, f.Instance]) -> None:
    shared, other = studies["shared"], studies["other"]
    _, cap = link(anon, mint, shared.study, ["read", "download"])
    found = anon.get("/dicom-web/studies", headers=cap)
    assert found.status_code == 200 and [s["0020000D"]["Value"][0] for s in found.json] == [shared.study]
    assert anon.get(f"/dicom-web/studies?StudyInstanceUID={other.study}", headers=cap).json == []
    assert anon.get(f"/dicom-web/instances?SOPInstanceUID={other.sop}", headers=cap).json == []
    theirs = instance_urls(other)
    for url in (theirs["study"], f"{theirs['study']}/metadata", f"{theirs['instance']}/frames/1",
                f"{theirs['instance']}/rendered", wado_uri(other, "application/dicom"),
                # a path of the other study under the shared one's never widens the capability
                f"/dicom-web/studies/{shared.study}/series/{other.series}/metadata",
                f"/dicom-web/studies/{shared.study}/series/{other.series}/instances/{other.sop}"):
        r = anon.get(url, headers={"Accept": MULTIPART_DICOM, **cap} if url == theirs["study"] else cap)
        assert r.status_code == 404, url
    assert anon.get(instance_urls(shared)["study"], headers={"Accept": MULTIPART_DICOM, **cap}).status_code == 200
    bundle = anon.get("/fhir/ImagingStudy", headers=cap)
    assert [e["resource"]["id"] for e in bundle.json["entry"]] == [shared.study]
    assert anon.get(f"/fhir/ImagingStudy/{shared.study}", headers=cap).status_code == 200
    assert anon.get(f"/fhir/ImagingStudy/{other.study}", headers=cap).status_code == 404


#: Requests a capability may never make (403): other FHIR types, reaching parameters, batches, /api.
REFUSED = [
    ("GET", "/fhir/DiagnosticReport"),
    ("GET", "/fhir/Patient"),
    ("GET", "/fhir/Consent"),
    ("GET", "/fhir/ImagingStudy?_revinclude=DiagnosticReport:imaging-study"),
    ("GET", "/fhir/ImagingStudy?_include=ImagingStudy:patient"),
    ("GET", "/fhir/ImagingStudy?patient.name=DUPONT"),
    ("POST", "/fhir"),
    ("GET", "/api/shares"),
    ("POST", "/api/shares"),
    ("GET", "/api/peers"),
    ("DELETE", "/dicom-web/studies/{study}"),
    ("POST", "/dicom-web/studies"),
]


def test_link_is_refused_anything_else(anon: FlaskClient, mint: Mint, studies: dict[str, f.Instance]) -> None:
    share, cap = link(anon, mint, studies["shared"].study, ["read", "download"])
    for method, url in REFUSED:
        r = anon.open(url.format(study=studies["shared"].study), method=method, headers=cap, json={})
        assert r.status_code == 403, (method, url, r.get_data())
    assert anon.get(instance_urls(studies["shared"])["study"] + "/metadata", headers=cap).status_code == 200


def test_read_only_link_cannot_download(anon: FlaskClient, mint: Mint, studies: dict[str, f.Instance]) -> None:
    inst = studies["shared"]
    u = instance_urls(inst)
    _, reader = link(anon, mint, inst.study, ["read"])
    _, downloader = link(anon, mint, inst.study, ["read", "download"])
    reads = [(f"{u['study']}/metadata", {}), (f"{u['instance']}/metadata", {}), (f"{u['instance']}/frames/1", {}),
             (f"{u['instance']}/rendered", PNG), (f"{u['study']}/thumbnail", PNG),
             (wado_uri(inst, "image/jpeg"), {}), (f"/dicom-web/studies/{inst.study}/series", {})]
    for url, headers in reads:
        assert anon.get(url, headers={**headers, **reader}).status_code == 200, url
    downloads = [(u["study"], {"Accept": MULTIPART_DICOM}), (u["series"], {"Accept": MULTIPART_DICOM}),
                 (u["instance"], {"Accept": MULTIPART_DICOM}), (f"{u['instance']}/bulkdata/7FE00010", {}),
                 (wado_uri(inst, "application/dicom"), {}),
                 (wado_uri(inst, "").removesuffix("&contentType="), {})]  # no contentType: may be DICOM
    for url, headers in downloads:
        refused = anon.get(url, headers={**headers, **reader})
        assert refused.status_code == 403, url
        assert "download" in refused.json["message"]
        assert anon.get(url, headers={**headers, **downloader}).status_code == 200, url


def test_link_with_a_standard_client(live_server: str, anon: FlaskClient, mint: Mint,
                                     studies: dict[str, f.Instance]) -> None:
    inst = studies["shared"]
    _, cap = link(anon, mint, inst.study, ["read", "download"])
    dicomweb = DICOMwebClient(url=f"{live_server}/dicom-web", headers=cap)
    assert [s["0020000D"]["Value"][0] for s in dicomweb.search_for_studies()] == [inst.study]
    [retrieved] = dicomweb.retrieve_study(inst.study)
    assert retrieved.SOPInstanceUID == inst.sop


# --- the link: expiry and revocation, each request ----------------------------------------------

def test_link_fails_after_expiry(anon: FlaskClient, mint: Mint, studies: dict[str, f.Instance]) -> None:
    share, cap = link(anon, mint, studies["shared"].study, expires=later(seconds=2))
    url = instance_urls(studies["shared"])["study"] + "/metadata"
    assert anon.get(url, headers=cap).status_code == 200
    time.sleep(max(0.0, datetime.fromisoformat(share["expires"]).timestamp() - time.time()) + 0.2)
    r = anon.get(url, headers=cap)
    assert r.status_code == 401 and "expired" in r.json["message"]
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert anon.get("/fhir/ImagingStudy", headers=cap).status_code == 401


def test_link_fails_at_once_after_revocation(anon: FlaskClient, mint: Mint, studies: dict[str, f.Instance]) -> None:
    share, cap = link(anon, mint, studies["shared"].study)
    assert anon.get("/dicom-web/studies", headers=cap).status_code == 200
    assert anon.delete(f"/api/shares/{share['id']}", headers=bearer(mint(SHARER))).status_code == 204
    for url in ("/dicom-web/studies", instance_urls(studies["shared"])["study"] + "/metadata", "/fhir/ImagingStudy"):
        r = anon.get(url, headers=cap)
        assert r.status_code == 401, url
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"] and "revoked" in r.headers["WWW-Authenticate"]


def test_a_share_claim_only_counts_in_this_nodes_own_grants(app: Flask, anon: FlaskClient, mint: Mint,
                                                             studies: dict[str, f.Instance]) -> None:
    share, _ = link(anon, mint, studies["shared"].study)
    forged = mint("system/ImagingStudy.rs", share=share["id"])  # a signed token, but not the grant's jti
    assert anon.get("/dicom-web/studies", headers=bearer(forged)).status_code == 401
    with app.extensions["drimhub"].sessions() as session:
        assert session.scalar(select(Share.token_jti).where(Share.id == share["id"])) is not None


def test_every_use_of_a_link_is_audited(app: Flask, anon: FlaskClient, mint: Mint,
                                        studies: dict[str, f.Instance]) -> None:
    share, cap = link(anon, mint, studies["shared"].study)
    jti = orjson.loads(jws.extract_compact(share["token"].encode()).payload)["jti"]
    url = instance_urls(studies["shared"])["study"] + "/metadata"
    assert anon.get(url, headers={**cap, "X-Request-Id": "link-use-1"}).status_code == 200
    with app.extensions["drimhub"].sessions() as session:
        [row] = session.scalars(select(AuditRecord).where(AuditRecord.request_id == "link-use-1")).all()
    event = orjson.loads(row.resource)
    assert (row.agent, row.org, row.action, row.outcome) == (f"http://localhost|share:{share['id']}", "org-a", "R", "0")
    assert row.patient and row.patient.endswith("PAT-S")
    [user] = [a for a in event["agent"] if "policy" in a]  # who: the link, by its token's jti
    assert user["who"]["identifier"]["value"] == f"share:{share['id']}" and user["policy"] == [jti]
    assert {"address": "127.0.0.1", "type": "2"} in [a.get("network") for a in event["agent"]]  # from where
    assert f"urn:oid:{studies['shared'].study}" in [e["what"]["identifier"]["value"]
                                                     for e in event["entity"] if "what" in e]
    assert event["recorded"]


# --- organisation and user grants ---------------------------------------------------------------

def test_org_grant_lets_the_grantee_see_that_study(anon: FlaskClient, mint: Mint,
                                                   studies: dict[str, f.Instance]) -> None:
    shared, other = studies["shared"], studies["other"]
    org_b = bearer(mint("system/*.cruds", org="org-b"))
    metadata = instance_urls(shared)["study"] + "/metadata"
    assert anon.get("/dicom-web/studies", headers=org_b).json == []
    assert anon.get(metadata, headers=org_b).status_code == 404
    share = grant(anon, mint, shared.study, {"org": "org-b"}, ["read"])
    found = anon.get("/dicom-web/studies", headers=org_b).json
    assert [s["0020000D"]["Value"][0] for s in found] == [shared.study]  # that one, not the other
    assert anon.get(metadata, headers=org_b).status_code == 200
    assert anon.get(f"/fhir/ImagingStudy/{shared.study}", headers=org_b).status_code == 200
    assert anon.get(f"/fhir/ImagingStudy/{other.study}", headers=org_b).status_code == 404
    urls = instance_urls(shared)
    for url in (urls["study"], urls["series"], urls["instance"]):  # read only: the instances are not shared
        retrieve = anon.get(url, headers={"Accept": MULTIPART_DICOM, **org_b})
        assert retrieve.status_code == 403, url
        assert 'error="insufficient_scope"' in retrieve.headers["WWW-Authenticate"]
        assert "shared for reading only" in retrieve.headers["WWW-Authenticate"]
    r = anon.get(wado_uri(shared, "application/dicom"), headers=org_b)
    assert r.status_code == 403 and "reading only" in r.headers["WWW-Authenticate"]
    assert anon.get(f"{urls['instance']}/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"',
                                                             **org_b}).status_code == 200  # frames are "read"
    assert anon.get(instance_urls(other)["study"], headers={"Accept": MULTIPART_DICOM, **org_b}).status_code == 404
    assert anon.get(metadata, headers=bearer(mint("system/*.cruds", org="org-c"))).status_code == 404
    assert anon.delete(f"/api/shares/{share['id']}", headers=bearer(mint(SHARER))).status_code == 204
    assert anon.get("/dicom-web/studies", headers=org_b).json == []
    assert anon.get(metadata, headers=org_b).status_code == 404


def test_user_grant_lets_that_user_see_and_download(anon: FlaskClient, mint: Mint,
                                                    studies: dict[str, f.Instance]) -> None:
    shared = studies["shared"]
    grant(anon, mint, shared.study, {"user": "dr-house"}, ["read", "download"])
    house = bearer(mint("user/ImagingStudy.rs", org="org-c", sub="dr-house"))
    colleague = bearer(mint("user/ImagingStudy.rs", org="org-c", sub="dr-wilson"))
    study = instance_urls(shared)["study"]
    assert [s["0020000D"]["Value"][0] for s in anon.get("/dicom-web/studies", headers=house).json] == [shared.study]
    assert anon.get(study, headers={"Accept": MULTIPART_DICOM, **house}).status_code == 200
    assert anon.get("/dicom-web/studies", headers=colleague).json == []
    assert anon.get(f"{study}/metadata", headers=colleague).status_code == 404


def test_expired_org_grant_is_no_grant(app: Flask, anon: FlaskClient, mint: Mint,
                                       studies: dict[str, f.Instance]) -> None:
    share = grant(anon, mint, studies["shared"].study, {"org": "org-b"})
    with app.extensions["drimhub"].sessions() as session, session.begin():
        row = session.scalars(select(Share).where(Share.id == share["id"])).one()
        row.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert anon.get("/dicom-web/studies", headers=bearer(mint("system/*.cruds", org="org-b"))).json == []


def test_user_grant_names_the_users_issuer(app: Flask, anon: FlaskClient, mint: Mint,
                                           studies: dict[str, f.Instance]) -> None:
    shared, other = studies["shared"], studies["other"]
    mine = grant(anon, mint, shared.study, {"user": "dr-house"})
    theirs = grant(anon, mint, other.study, {"user": "dr-house", "issuer": "https://idp.example/realms/x"})
    assert mine["grantee"] == {"user": "dr-house", "issuer": "http://localhost"}  # this node's, by default
    assert theirs["grantee"] == {"user": "dr-house", "issuer": "https://idp.example/realms/x"}
    house = bearer(mint("user/ImagingStudy.rs", org="org-c", sub="dr-house"))  # a token of this node
    assert [s["0020000D"]["Value"][0] for s in anon.get("/dicom-web/studies", headers=house).json] == [shared.study]
    assert anon.get(instance_urls(other)["study"] + "/metadata", headers=house).status_code == 404
    with app.extensions["drimhub"].sessions() as session:  # the same sub from the other issuer: the other study
        external = Access(frozenset({"org-c"}), grantee=Grantee("org-c", "https://idp.example/realms/x", "dr-house"))
        assert set(session.scalars(select(Study.study_uid).where(*external.study_filter()))) == {other.study}
    r = anon.post("/api/shares", json={"study": shared.study, "grantee": {"user": "u", "issuer": ""},
                                       "permissions": ["read"], "expires": later(days=1)},
                  headers=bearer(mint(SHARER)))
    assert r.status_code == 400


def test_grants_and_oppositions_are_subqueries_not_value_lists(app: Flask, anon: FlaskClient, mint: Mint,
                                                               studies: dict[str, f.Instance]) -> None:
    for _ in range(3):
        grant(anon, mint, studies["shared"].study, {"org": "org-b"})
    access = Access(frozenset({"org-b"}), grantee=Grantee("org-b", "http://localhost", "tester"), opposed=True)
    stmt = select(Study.study_uid).where(*access.study_filter())
    sql = str(stmt.compile(compile_kwargs={"literal_binds": False}))
    assert sql.count("EXISTS") >= 3 and studies["shared"].study not in str(stmt.compile().params)
    with app.extensions["drimhub"].sessions() as session:
        assert list(session.scalars(stmt)) == [studies["shared"].study]
