"""The audit mapping tables, row by row, and every built AuditEvent valid as FHIR R4 (IHE BALP shape)."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from werkzeug.datastructures import MultiDict

from drimhub.fhir.audit_routes import date_bounds, parse_search
from drimhub.mappings import audit as m
from drimhub.server.audit import classify, redact_query, sanitise_request_id, split_patient_key
from drimhub.errors import InvalidQuery

NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
USER = m.Caller(address="10.0.0.7", issuer="http://localhost", sub="dr-martin", client_id="ris-1", org="chu-a",
                token_ref="5f2b1c0d9e8a4b7c")
PATIENT = m.PatientRef("urn:oid:1.2.250.1.213.1.4.8", "1580199999999")

# (domain, interaction) -> action, restful-interaction code, DICOM event ID
EVENT_KIND_CASES = [
    pytest.param(("dicomweb", "create"), "C", "create", "110104", id="STOW-RS-C-110104"),
    pytest.param(("dicomweb", "read"), "R", "read", "110104", id="WADO-RS-R-110104"),
    pytest.param(("dicomweb", "search-type"), "E", "search-type", "110112", id="QIDO-RS-E-110112"),
    pytest.param(("dicomweb", "delete"), "D", "delete", "110105", id="DELETE-D-110105"),
    pytest.param(("audit", "read"), "R", "read", "110101", id="AuditEvent-read-110101"),
    pytest.param(("audit", "search-type"), "E", "search-type", "110101", id="ITI-81-search-110101"),
    pytest.param(("audit", "delete"), "D", "delete", "110101", id="AuditEvent-delete-attempt-110101"),
    pytest.param(("fhir", "read"), "R", "read", None, id="FHIR-read"),
    pytest.param(("fhir", "update"), "U", "update", None, id="FHIR-update"),
    pytest.param(("fhir", "patch"), "U", "patch", None, id="FHIR-patch-by-action-table"),
    pytest.param(("fhir", "transaction"), "E", "transaction", None, id="FHIR-transaction-execute"),
]


@pytest.mark.parametrize("key, action, subtype, dicom", EVENT_KIND_CASES)
def test_event_kinds(key: tuple[str, str], action: str, subtype: str, dicom: str | None) -> None:
    assert m.kind_for(*key) == m.EventKind(action, subtype, dicom)


# action -> (client type code, server type code, user type code): BALP profiles
AGENT_CASES = [
    pytest.param("C", "110153", "110152", "AUT", id="Create-client-Source"),
    pytest.param("U", "110153", "110152", "AUT", id="Update-client-Source"),
    pytest.param("R", "110152", "110153", "IRCP", id="Read-client-Destination"),
    pytest.param("E", "110153", "110152", "IRCP", id="Query-client-Source"),
    pytest.param("D", "110150", "custodian", "AUT", id="Delete-client-Application"),
]


@pytest.mark.parametrize("action, client, server, user", AGENT_CASES)
def test_agent_types(action: str, client: str, server: str, user: str) -> None:
    types = m.AGENT_TYPES[action]
    assert (types.client[1], types.server[1], types.user[1]) == (client, server, user)


@pytest.mark.parametrize("status, outcome", [
    pytest.param(200, "0", id="200"), pytest.param(204, "0", id="204"), pytest.param(304, "0", id="304"),
    pytest.param(202, "0", id="202-partial-stow"), pytest.param(401, "4", id="401"),
    pytest.param(404, "4", id="404"), pytest.param(500, "8", id="500"), pytest.param(502, "8", id="502"),
])
def test_outcomes(status: int, outcome: str) -> None:
    assert m.outcome_for_status(status) == outcome
    assert outcome in m.OUTCOMES


CLASSIFY_CASES = [
    pytest.param("POST", "/dicom-web/studies", ("dicomweb", "create"), id="STOW"),
    pytest.param("POST", "/dicom-web/studies/1.2.3", ("dicomweb", "create"), id="STOW-study"),
    pytest.param("GET", "/dicom-web/studies", ("dicomweb", "search-type"), id="QIDO-studies"),
    pytest.param("GET", "/dicom-web/studies/1.2/series/3.4/instances", ("dicomweb", "search-type"), id="QIDO-inst"),
    pytest.param("GET", "/dicom-web/studies/1.2.3", ("dicomweb", "read"), id="WADO-study"),
    pytest.param("HEAD", "/dicom-web/studies/1.2.3/metadata", ("dicomweb", "read"), id="WADO-metadata-HEAD"),
    pytest.param("GET", "/dicom-web/studies/1/series/2/instances/3/frames/1,2", ("dicomweb", "read"), id="frames"),
    pytest.param("DELETE", "/dicom-web/studies/1.2.3", ("dicomweb", "delete"), id="DELETE"),
    pytest.param("GET", "/federated/dicom-web/studies", ("dicomweb", "search-type"), id="federated-QIDO"),
    pytest.param("GET", "/wado", ("dicomweb", "read"), id="WADO-URI"),
    pytest.param("GET", "/fhir/AuditEvent", ("audit", "search-type"), id="ITI-81"),
    pytest.param("GET", "/fhir/AuditEvent/abc", ("audit", "read"), id="AuditEvent-read"),
    pytest.param("POST", "/fhir/AuditEvent", ("audit", "create"), id="AuditEvent-create-attempt"),
    pytest.param("GET", "/fhir/ImagingStudy", ("fhir", "search-type"), id="FHIR-search-type"),
    pytest.param("POST", "/fhir/ImagingStudy/_search", ("fhir", "search-type"), id="FHIR-POST-search"),
    pytest.param("GET", "/fhir/Patient/1/_history/2", ("fhir", "vread"), id="FHIR-vread"),
    pytest.param("GET", "/fhir/Patient/1/$everything", ("fhir", "operation"), id="FHIR-operation"),
    pytest.param("POST", "/fhir", ("fhir", "transaction"), id="FHIR-transaction"),
    pytest.param("GET", "/fhir/metadata", None, id="CapabilityStatement-no-data"),
    pytest.param("GET", "/fhir/.well-known/smart-configuration", None, id="SMART-discovery-no-data"),
    pytest.param("OPTIONS", "/dicom-web/studies", None, id="OPTIONS-no-data"),
    pytest.param("GET", "/healthz", None, id="healthz"),
    pytest.param("POST", "/oauth/token", None, id="oauth-token"),
    pytest.param("GET", "/dicom-webx/studies", None, id="prefix-on-segment-boundary"),
]


@pytest.mark.parametrize("method, path, expected", CLASSIFY_CASES)
def test_classify(method: str, path: str, expected: tuple[str, str] | None) -> None:
    assert classify(method, path) == expected


@pytest.mark.parametrize("issuer, system", [
    pytest.param(None, None, id="no-issuer"),
    pytest.param("1.2.250.1.71.4.2.1", "urn:oid:1.2.250.1.71.4.2.1", id="OID"),
    pytest.param("urn:oid:1.2.3", "urn:oid:1.2.3", id="URN-kept"),
    pytest.param("https://chu.example/ipp", "https://chu.example/ipp", id="URL-kept"),
    pytest.param("ASIP-SANTE-INS-NIR", "urn:oid:1.2.250.1.213.1.4.8", id="INS-NIR-known"),
    pytest.param("CHU TEST", "urn:drimhub:issuer-of-patient-id:CHU%20TEST", id="local-name-encoded"),
])
def test_patient_system(issuer: str | None, system: str | None) -> None:
    assert m.patient_system(issuer) == system


@pytest.mark.parametrize("key, expected", [
    pytest.param(None, None, id="unknown-patient"),
    pytest.param("PAT001", m.PatientRef(None, "PAT001"), id="no-issuer"),
    pytest.param("CHU-TEST|PAT001", m.PatientRef("urn:drimhub:issuer-of-patient-id:CHU-TEST", "PAT001"), id="issuer"),
])
def test_split_patient_key(key: str | None, expected: m.PatientRef | None) -> None:
    assert split_patient_key(key) == expected


@pytest.mark.parametrize("token, tail", [
    pytest.param("x" * 40 + "A" * 32, "A" * 32, id="long-token-last-32"),
    pytest.param("abcdefgh", "efgh", id="short-token-half-only"),
    pytest.param("a", "", id="one-char-nothing"),
])
def test_token_tail_never_whole(token: str, tail: str) -> None:
    assert m.token_tail(token) == tail
    assert m.token_tail(token) != token


@pytest.mark.parametrize("header, expected", [
    pytest.param("req-1.2_3", "req-1.2_3", id="kept"),
    pytest.param("a b\r\nX-Evil: 1", "abX-Evil1", id="stripped"),
    pytest.param("x" * 200, "x" * 128, id="cut-to-128"),
    pytest.param("!!!", None, id="nothing-left"),
    pytest.param(None, None, id="absent"),
])
def test_sanitise_request_id(header: str | None, expected: str | None) -> None:
    assert sanitise_request_id(header) == expected


def test_query_credentials_cut_to_their_tail() -> None:
    token = "eyJhbGciOi." + "p" * 40 + "." + "s" * 10 + "T" * 32
    raw = f"PatientID=1&access_token={token}&limit=5".encode()
    redacted = redact_query(raw)
    assert token.encode() not in redacted
    assert redacted == b"PatientID=1&access_token=..." + b"T" * 32 + b"&limit=5"


# --- whole events ---------------------------------------------------------------------------

def facts(domain: str | None, interaction: str | None, **kw: object) -> m.AccessFacts:
    base: dict[str, object] = {"event_id": "e1", "recorded": NOW, "domain": domain, "interaction": interaction,
                               "status": 200, "caller": USER, "server_url": "https://hub.example",
                               "request_id": "req-1"}
    base.update(kw)
    return m.AccessFacts(**base)  # type: ignore[arg-type]


EVENT_CASES = [
    pytest.param(facts("dicomweb", "create", patient=PATIENT, studies=("1.2.3",)), id="STOW-patient"),
    pytest.param(facts("dicomweb", "read", patient=PATIENT, studies=("1.2.3",)), id="WADO-patient"),
    pytest.param(facts("dicomweb", "search-type", patient=PATIENT, raw_query=b"PatientID=1580199999999",
                       query_text="GET /dicom-web/studies?PatientID=1580199999999"), id="QIDO-patient"),
    pytest.param(facts("dicomweb", "search-type", raw_query=b"PatientID=NOPE"), id="QIDO-no-match"),
    pytest.param(facts("dicomweb", "delete", patient=PATIENT, studies=("1.2.3",), status=204), id="DELETE"),
    pytest.param(facts("dicomweb", "read", status=401, security_alert=True, studies=("1.2.3",),
                       caller=m.Caller(address="::1", unverified_tail="T" * 32)), id="401-alert-unverified"),
    pytest.param(facts(None, None, status=401, security_alert=True, caller=m.Caller(address="10.1.1.1")),
                 id="401-non-data-path-anonymous"),
    pytest.param(facts("audit", "search-type", raw_query=b"date=ge2025-01-01"), id="audit-log-used"),
    pytest.param(facts("dicomweb", "read", status=500), id="500-serious-failure"),
]


@pytest.mark.parametrize("access", EVENT_CASES)
def test_built_events_are_valid_r4_audit_events(access: m.AccessFacts) -> None:
    event = m.build_event(access)
    parsed = AuditEvent.model_validate(event)
    assert parsed.type.code == "rest" and parsed.action == access.kind.action
    assert [c["code"] for c in event["subtype"]][0] in (access.kind.interaction or m.SECURITY_ALERT)
    assert event["outcome"] == m.outcome_for_status(access.status)
    client, server = event["agent"][0], event["agent"][1]
    assert client["type"]["coding"][0]["code"] == m.AGENT_TYPES[access.kind.action].client[1]
    assert server["network"] == {"address": "https://hub.example", "type": "5"}
    assert sum(a["requestor"] for a in event["agent"]) == 1
    roles = [e.get("role", {}).get("code") for e in event["entity"]]
    assert roles.count("1") == (1 if access.patient and not access.security_alert else 0)
    assert event["entity"][-1]["what"]["identifier"]["value"] == "req-1"


def test_user_agent_from_token_and_columns() -> None:
    access = facts("dicomweb", "search-type", patient=PATIENT, raw_query=b"PatientID=1580199999999")
    event = m.build_event(access)
    user = event["agent"][2]
    assert user["who"]["identifier"] == {"system": "http://localhost", "value": "dr-martin"}
    assert user["policy"] == ["5f2b1c0d9e8a4b7c"] and user["requestor"] is True
    assert event["agent"][0]["who"]["identifier"]["value"] == "ris-1"
    assert event["agent"][0]["network"] == {"address": "10.0.0.7", "type": "2"}
    query = next(e for e in event["entity"] if e.get("role", {}).get("code") == "24")
    assert base64.b64decode(query["query"]) == b"PatientID=1580199999999"
    assert m.search_columns(access) == {
        "event_id": "e1", "recorded": NOW, "action": "E", "subtype": "search-type 110112", "event_type": "rest",
        "outcome": "0", "patient": "urn:oid:1.2.250.1.213.1.4.8|1580199999999",
        "agent": "http://localhost|dr-martin", "client_id": "ris-1", "org": "chu-a", "request_id": "req-1"}


def test_security_alert_names_no_patient() -> None:
    access = facts("dicomweb", "read", status=403, security_alert=True, patient=PATIENT, studies=("1.2.3",))
    event = m.build_event(access)
    assert [c["code"] for c in event["subtype"]] == ["read", "110113"]
    assert all(e.get("role", {}).get("code") != "1" for e in event["entity"])
    assert m.search_columns(access)["patient"] is None
    assert event["outcomeDesc"] == "HTTP 403"


def test_study_entity_is_an_imaging_study_identifier() -> None:
    what = m.study_entity("1.2.840.1")["what"]
    assert what["type"] == "ImagingStudy"
    assert (what["identifier"]["system"], what["identifier"]["value"]) == ("urn:dicom:uid", "urn:oid:1.2.840.1")


# --- ITI-81 search parameters ---------------------------------------------------------------

@pytest.mark.parametrize("values, since, until", [
    pytest.param(["ge2025-03-01"], "2025-03-01T00:00:00+00:00", None, id="ge-day"),
    pytest.param(["le2025-03-01"], None, "2025-03-02T00:00:00+00:00", id="le-day-inclusive"),
    pytest.param(["lt2025-03-01"], None, "2025-03-01T00:00:00+00:00", id="lt-day"),
    pytest.param(["gt2025-03"], "2025-04-01T00:00:00+00:00", None, id="gt-month"),
    pytest.param(["2025-12"], "2025-12-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00", id="eq-december"),
    pytest.param(["2025"], "2025-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00", id="eq-year"),
    pytest.param(["ge2025-01-01", "le2025-01-31"], "2025-01-01T00:00:00+00:00", "2025-02-01T00:00:00+00:00",
                 id="window"),
    pytest.param(["ge2025-01-01T10:00:00+02:00"], "2025-01-01T08:00:00+00:00", None, id="datetime-with-zone"),
    pytest.param(["le2025-01-01T10:00:00Z"], None, "2025-01-01T10:00:01+00:00", id="le-second-covers-the-second"),
    pytest.param(["le2025-01-01T10:00:00.250Z"], None, "2025-01-01T10:00:00.251000+00:00",
                 id="le-fraction-covers-its-precision"),
    pytest.param(["2025-01-01T10:00"], "2025-01-01T10:00:00+00:00", "2025-01-01T10:01:00+00:00", id="eq-minute"),
])
def test_date_bounds(values: list[str], since: str | None, until: str | None) -> None:
    low, high = date_bounds(values)
    assert (low.astimezone(timezone.utc).isoformat() if low else None) == since
    assert (high.astimezone(timezone.utc).isoformat() if high else None) == until


@pytest.mark.parametrize("query", [
    pytest.param("patient=1", id="no-date"),
    pytest.param("date=ge2025-13-01", id="bad-month"),
    pytest.param("date=yesterday", id="not-a-date"),
    pytest.param("date=ne2025", id="unsupported-prefix"),
    pytest.param("date=2025-01-01T10", id="hour-without-minutes"),
    pytest.param("date=ge2025&_sort=-date", id="unknown-parameter"),
    pytest.param("date=ge2025&outcome=5", id="bad-outcome"),
    pytest.param("date=ge2025&_count=-1", id="bad-count"),
    pytest.param("date=ge2025&subtype=http://other|read", id="subtype-other-system"),
    pytest.param("date=ge2025&subtype=read%25", id="subtype-not-a-code"),
    pytest.param("date=ge2025&patient=a&patient=b", id="repeated-patient"),
])
def test_bad_searches_are_refused(query: str) -> None:
    from urllib.parse import parse_qsl
    with pytest.raises(InvalidQuery):
        parse_search(MultiDict(parse_qsl(query)), "org")


def test_search_parameters_parsed() -> None:
    q = parse_search(MultiDict([("date", "ge2025"), ("patient", "sys|v"), ("agent", "dr"),
                                ("subtype", f"{m.DCM}|110112"), ("outcome", "4"), ("_count", "5")]), "org-a")
    assert (q.patient.system, q.patient.value) == ("sys", "v")  # type: ignore[union-attr]
    assert (q.agent.system, q.agent.value) == (None, "dr")  # type: ignore[union-attr]
    assert (q.subtype, q.outcome, q.count, q.offset, q.org) == ("110112", "4", 5, 0, "org-a")
