"""Every access audited (issue 3): one AuditEvent per request and patient, over HTTP, on SQLite and
PostgreSQL; the ITI-81 search of the trail; X-Request-Id; retention purge.

Requests carry tokens signed with the node's key. Until the resource protection registers its
hook, a stand-in sets ``g.principal`` from the token (and refuses data requests without one), so
that these tests hold in both states.
"""

from __future__ import annotations

import base64
import logging
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from flask import Flask, current_app, g, request
from flask.testing import FlaskClient
from joserfc import jwt
from sqlalchemy import select

import dicomfactory as f
from drimhub.server.audit import classify
from drimhub.server.auth.keys import ALGORITHM
from drimhub.server.auth.principal import Principal
from drimhub.server.auth.scopes import parse_scopes
from drimhub.server.auth.tokens import access_token_claims, sign
from drimhub.server.cli import main
from drimhub.errors import Unauthorized
from drimhub.store import audit as audit_store
from drimhub.store.audit import AuditRecord

ISSUER = "http://localhost"
DATA_SCOPE = "user/ImagingStudy.cruds"
AUDITOR_SCOPE = "user/AuditEvent.rs"
SYSTEM = "urn:drimhub:issuer-of-patient-id:CHU-TEST"
TODAY = date.today().isoformat()
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


def _stand_in_protection() -> None:
    """Until the real hook lands: the principal from a valid token, 401 on data URLs without one."""
    if g.get("principal") is not None or classify(request.method, request.path) is None:
        return
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    try:
        claims = jwt.decode(value, current_app.extensions["drimhub"].signing_key, algorithms=[ALGORITHM]).claims
    except Exception:
        raise Unauthorized("no valid bearer token") from None
    g.principal = Principal(sub=claims["sub"], org=claims["org"], client_id=claims.get("client_id"),
                            scopes=parse_scopes(claims["scope"]), issuer=claims["iss"], token_ref=claims["jti"],
                            patient=claims.get("patient"))


@pytest.fixture
def http(app: Flask) -> FlaskClient:
    hooks = app.before_request_funcs.get(None, [])
    if not any(getattr(h, "__module__", "").startswith("drimhub.server.auth") for h in hooks):
        app.before_request(_stand_in_protection)
    return app.test_client()


def token(app: Flask, scope: str, org: str = "org-a", sub: str = "dr-martin") -> str:
    claims = access_token_claims(issuer=ISSUER, audience=ISSUER, subject=sub, client_id="ris-1", scope=scope, org=org)
    return sign(claims, app.extensions["drimhub"].signing_key)  # type: ignore[no-any-return]


def auth(app: Flask, scope: str = DATA_SCOPE, rid: str | None = None, **kw: Any) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token(app, scope, **kw)}"}
    if rid:
        headers["X-Request-Id"] = rid
    return headers


def events(app: Flask, request_id: str | None = None) -> list[tuple[AuditRecord, dict[str, Any]]]:
    """Stored events (of one request id), each validated as an R4 AuditEvent."""
    with app.extensions["drimhub"].sessions() as session:
        stmt = select(AuditRecord).order_by(AuditRecord.pk)
        if request_id:
            stmt = stmt.where(AuditRecord.request_id == request_id)
        rows = list(session.scalars(stmt))
    result = []
    for row in rows:
        resource = orjson.loads(row.resource)
        AuditEvent.model_validate(resource)
        result.append((row, resource))
    return result


def entity_codes(event: dict[str, Any]) -> list[str]:
    return [e.get("role", {}).get("code") or e["type"]["code"] for e in event["entity"]]


def stow(http: FlaskClient, app: Flask, items: list[f.Instance], rid: str) -> None:
    body, ctype = f.multipart([i.data for i in items])
    r = http.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype, **auth(app, rid=rid)})
    assert r.status_code == 200, r.get_data()


@pytest.fixture
def two_patients(http: FlaskClient, app: Flask) -> tuple[f.Instance, f.Instance]:
    a, b = f.ct(patient_id="PAT-A"), f.ct(patient_id="PAT-B")
    stow(http, app, [a, b], "stow-1")
    return a, b


# --- one event per request and patient ------------------------------------------------------

def test_stow_of_two_patients_records_two_events(app: Flask, two_patients: tuple[f.Instance, f.Instance]) -> None:
    a, b = two_patients
    found = events(app, "stow-1")
    assert len(found) == 2
    assert {row.patient for row, _ in found} == {f"{SYSTEM}|PAT-A", f"{SYSTEM}|PAT-B"}
    for row, event in found:
        assert (row.action, row.subtype, row.outcome) == ("C", "create 110104", "0")
        study = a.study if row.patient.endswith("PAT-A") else b.study  # type: ignore[union-attr]
        whats = [e["what"]["identifier"]["value"] for e in event["entity"] if "what" in e]
        assert f"urn:oid:{study}" in whats
        assert event["agent"][2]["who"]["identifier"] == {"system": ISSUER, "value": "dr-martin"}


def test_qido_records_one_event_per_patient_with_the_query(
        http: FlaskClient, app: Flask, two_patients: tuple[f.Instance, f.Instance]) -> None:
    raw = "StudyDate=20240315&includefield=00100020"
    r = http.get(f"/dicom-web/studies?{raw}", headers=auth(app, rid="qido-1"))
    assert r.status_code == 200 and len(r.json) == 2
    found = events(app, "qido-1")
    assert sorted(row.patient or "" for row, _ in found) == [f"{SYSTEM}|PAT-A", f"{SYSTEM}|PAT-B"]
    for row, event in found:
        assert (row.action, row.subtype) == ("E", "search-type 110112")
        query = next(e for e in event["entity"] if e.get("role", {}).get("code") == "24")
        assert base64.b64decode(query["query"]).decode() == raw


def test_qido_without_match_records_one_event_without_patient(http: FlaskClient, app: Flask) -> None:
    r = http.get("/dicom-web/studies?PatientID=NOBODY", headers=auth(app, rid="qido-none"))
    assert r.status_code in (200, 204)
    [(row, event)] = events(app, "qido-none")
    assert row.patient is None and "1" not in entity_codes(event)
    assert entity_codes(event) == ["24", "XrequestId"]


def test_wado_of_a_study_records_one_read_event(
        http: FlaskClient, app: Flask, two_patients: tuple[f.Instance, f.Instance]) -> None:
    a, _ = two_patients
    r = http.get(f"/dicom-web/studies/{a.study}", headers={"Accept": MULTIPART_DICOM, **auth(app, rid="wado-1")})
    assert r.status_code == 200
    [(row, event)] = events(app, "wado-1")
    assert (row.action, row.subtype, row.patient) == ("R", "read 110104", f"{SYSTEM}|PAT-A")
    assert event["agent"][0]["type"]["coding"][0]["code"] == "110152"  # the client receives: Destination


def test_frames_and_bulkdata_name_their_patient_found_or_not(
        http: FlaskClient, app: Flask, two_patients: tuple[f.Instance, f.Instance]) -> None:
    """The one-query path of frames and bulk data notes the same patient as the two-query one,
    also when the instance is not found (404); another patient's (403) is a Security Alert."""
    a, b = two_patients
    inst = f"/dicom-web/studies/{a.study}/series/{a.series}/instances/{a.sop}"
    other = f"/dicom-web/studies/{a.study}/series/{a.series}/instances/1.2.3.4"
    cases = [(f"{inst}/frames/1", DATA_SCOPE, "frames-ok", 200, "0"),
             (f"{inst}/bulkdata/7FE00010", DATA_SCOPE, "bulk-ok", 200, "0"),
             (f"{other}/frames/1", DATA_SCOPE, "frames-none", 404, "4"),
             (f"{inst}/frames/9", DATA_SCOPE, "frames-past", 404, "4")]
    for url, scope, rid, status, outcome in cases:
        r = http.get(url, headers=auth(app, scope, rid=rid))
        assert r.status_code == status, (rid, r.get_data()[:200])
        [(row, _)] = events(app, rid)
        assert (row.action, row.outcome, row.patient) == ("R", outcome, f"{SYSTEM}|PAT-A"), rid
    claims = access_token_claims(issuer=ISSUER, audience=ISSUER, subject="p", client_id="app",
                                 scope="patient/ImagingStudy.rs", org="org-a", patient="PAT-B")
    patient_b = {"Authorization": f"Bearer {sign(claims, app.extensions['drimhub'].signing_key)}",
                 "X-Request-Id": "frames-other"}
    assert http.get(f"{inst}/frames/1", headers=patient_b).status_code == 403
    [(row, _)] = events(app, "frames-other")  # refused: a Security Alert, which names no patient
    assert row.patient is None and row.subtype.endswith("110113")
    assert http.get(f"{inst}/frames/1", headers=auth(app, org="org-b", rid="frames-org")).status_code == 404
    [(row, _)] = events(app, "frames-org")
    assert row.patient is None


def test_delete_records_one_delete_event(
        http: FlaskClient, app: Flask, two_patients: tuple[f.Instance, f.Instance]) -> None:
    _, b = two_patients
    r = http.delete(f"/dicom-web/studies/{b.study}", headers=auth(app, rid="del-1"))
    assert r.status_code == 204
    [(row, event)] = events(app, "del-1")
    assert (row.action, row.subtype, row.patient) == ("D", "delete 110105", f"{SYSTEM}|PAT-B")
    assert event["agent"][0]["type"]["coding"][0]["code"] == "110150"


def test_refused_request_records_one_security_alert(http: FlaskClient, app: Flask) -> None:
    forged = "eyJhbGciOiJub25lIn0." + "e30" + "." + "x" * 40 + "SECRETTAIL" * 4
    r = http.get("/dicom-web/studies?PatientID=PAT-A", headers={"Authorization": f"Bearer {forged}",
                                                                 "X-Request-Id": "bad-1"})
    assert r.status_code == 401
    [(row, event)] = events(app, "bad-1")
    assert (row.subtype, row.outcome, row.patient, row.agent) == ("search-type 110113", "4", None, None)
    assert forged.encode() not in row.resource
    assert "1" not in entity_codes(event)
    r = http.get("/dicom-web/studies", headers={"X-Request-Id": "none-1"})
    assert r.status_code == 401
    assert [row.subtype for row, _ in events(app, "none-1")] == ["search-type 110113"]


def test_no_whole_token_is_ever_stored(http: FlaskClient, app: Flask, two_patients: Any) -> None:
    headers = auth(app, rid="tok-1")
    bearer = headers["Authorization"].split()[1]
    http.get(f"/dicom-web/studies?access_token={bearer}", headers=headers)  # answered or refused: audited
    assert events(app, "tok-1")
    for row, event in events(app):
        assert bearer.encode() not in row.resource
        assert bearer.encode() not in base64.b64decode(
            next((e["query"] for e in event["entity"] if "query" in e), ""))


def test_request_id_is_echoed_generated_and_recorded(http: FlaskClient, app: Flask) -> None:
    r = http.get("/dicom-web/studies", headers=auth(app, rid="abc 123!"))
    assert r.headers["X-Request-Id"] == "abc123"
    [(_, event)] = events(app, "abc123")
    assert event["entity"][-1]["what"]["identifier"]["value"] == "abc123"
    generated = http.get("/healthz").headers["X-Request-Id"]
    assert uuid.UUID(generated)
    assert events(app, generated) == []  # no health data: no event


def test_log_records_carry_the_request_id(http: FlaskClient, app: Flask,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="drimhub.server.audit"):
        http.get("/dicom-web/studies", headers=auth(app, rid="log-1"))
    ids = [getattr(r, "request_id", None) for r in caplog.records if r.name == "drimhub.server.audit"]
    assert ids == ["log-1"]


def test_no_access_without_a_trace(http: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(audit_store, "append", broken)
    r = http.get("/dicom-web/studies", headers=auth(app, rid="fail-1"))
    assert r.status_code == 500 and r.headers["X-Request-Id"] == "fail-1"
    assert b"disk full" not in r.get_data()


# --- the auditor's search (ITI-81) ----------------------------------------------------------

def search(http: FlaskClient, app: Flask, query: str, scope: str = AUDITOR_SCOPE, org: str = "org-a") -> Any:
    return http.get(f"/fhir/AuditEvent?{query}", headers=auth(app, scope, org=org, sub="auditor-1"))


def test_search_by_date_patient_agent(http: FlaskClient, app: Flask, two_patients: Any) -> None:
    a, _ = two_patients
    http.get(f"/dicom-web/studies/{a.study}/metadata", headers=auth(app, rid="meta-1"))
    r = search(http, app, f"date=ge{TODAY}&patient=PAT-A")
    assert r.status_code == 200 and r.mimetype == "application/fhir+json"
    bundle = Bundle.model_validate(r.json)
    assert bundle.type == "searchset" and bundle.total == 2
    assert [e["resource"]["action"] for e in r.json["entry"]] == ["C", "R"]
    assert search(http, app, f"date=ge{TODAY}&patient={SYSTEM}|PAT-A").json["total"] == 2
    assert search(http, app, f"date=ge{TODAY}&patient=other|PAT-A").json["total"] == 0
    assert search(http, app, f"date=ge{TODAY}&agent={ISSUER}|dr-martin&subtype=110104").json["total"] == 3
    assert search(http, app, f"date=lt{TODAY}&patient=PAT-A").json["total"] == 0
    assert search(http, app, f"date=ge{TODAY}&patient=PAT-A", org="org-b").json["total"] == 0
    used = search(http, app, f"date=ge{TODAY}&subtype=110101&agent=auditor-1")
    assert used.json["total"] >= 5  # every earlier read of the trail is itself in the trail


def test_search_pages_and_reads_one(http: FlaskClient, app: Flask, two_patients: Any) -> None:
    first = search(http, app, f"date=ge{TODAY}&subtype=create&_count=1").json
    assert first["total"] == 2 and len(first["entry"]) == 1
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = http.get(next_url.replace("http://localhost", ""), headers=auth(app, AUDITOR_SCOPE)).json
    assert second["entry"][0]["fullUrl"] != first["entry"][0]["fullUrl"]
    assert not [link for link in second["link"] if link["relation"] == "next"]
    event_id = first["entry"][0]["resource"]["id"]
    one = http.get(f"/fhir/AuditEvent/{event_id}", headers=auth(app, AUDITOR_SCOPE))
    assert one.status_code == 200 and one.json == first["entry"][0]["resource"]
    assert http.get(f"/fhir/AuditEvent/{event_id}", headers=auth(app, AUDITOR_SCOPE, org="org-b")).status_code == 404


@pytest.mark.parametrize("query, scope, status", [
    pytest.param("patient=PAT-A", AUDITOR_SCOPE, 400, id="no-date-400"),
    pytest.param(f"date=ge{TODAY}&_sort=date", AUDITOR_SCOPE, 400, id="unknown-parameter-400"),
    pytest.param(f"date=ge{TODAY}", DATA_SCOPE, 403, id="no-auditor-scope-403"),
    pytest.param(f"date=ge{TODAY}", "patient/AuditEvent.rs", 403, id="patient-scope-403"),
    pytest.param(f"date=ge{TODAY}", "system/AuditEvent.rs", 200, id="system-auditor-200"),
])
def test_search_refusals(http: FlaskClient, app: Flask, query: str, scope: str, status: int) -> None:
    r = search(http, app, query, scope)
    assert r.status_code == status
    if status != 200:
        assert r.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_trail_cannot_be_written(http: FlaskClient, app: Flask, method: str) -> None:
    r = http.open("/fhir/AuditEvent/x", method=method, headers=auth(app, "user/AuditEvent.cruds"), json={})
    assert r.status_code == 405 and r.json["resourceType"] == "OperationOutcome"


# --- retention --------------------------------------------------------------------------------

def _old_and_new(app: Flask) -> None:
    now = datetime.now(timezone.utc)
    rows = []
    for age in (400, 366, 10):
        columns = {"event_id": str(uuid.uuid4()), "recorded": now - timedelta(days=age), "action": "R",
                   "subtype": "read 110104", "event_type": "rest", "outcome": "0", "patient": None, "agent": None,
                   "client_id": None, "org": "org-a", "request_id": f"age-{age}"}
        rows.append((columns, b"{}"))
    audit_store.append(app.extensions["drimhub"].sessions, rows)


def test_purge_removes_old_events_only(app: Flask) -> None:
    _old_and_new(app)
    assert audit_store.purge(app.extensions["drimhub"].sessions, 365) == 2
    assert [row.request_id for row, _ in ((r, None) for r in _rows(app))] == ["age-10"]


def test_purge_command(app: Flask, tmp_path: Any) -> None:
    _old_and_new(app)
    env = {"DRIMHUB_DATA_DIR": app.config["DATA_DIR"], "DRIMHUB_DATABASE_URL": app.config["DATABASE_URL"]}
    r = CliRunner().invoke(main, ["audit", "purge"], env=env)
    assert r.exit_code == 0, r.output
    assert "removed 2 audit events older than 365 days" in r.output
    r = CliRunner().invoke(main, ["audit", "purge", "--days", "5"], env=env)
    assert "removed 1 audit events" in r.output and _rows(app) == []


def _rows(app: Flask) -> list[AuditRecord]:
    with app.extensions["drimhub"].sessions() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.pk)))
