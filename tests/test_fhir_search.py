"""FHIR search (R4 search.html) over the real routes and databases (SQLite and PostgreSQL).

One small world per test: three studies stored over STOW for organisation A (their Patients
derived by the STOW hook), one study of organisation B, and DiagnosticReports created over FHIR.
Each parameter type and modifier is checked with a value that matches and one that does not.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.dialects import postgresql

import dicomfactory as f
from conftest import Mint
from drimhub.fhir import search as fhir_search
from drimhub.fhir.dates import date_range
from drimhub.fhir import searchset
from drimhub.fhir.searchset import scope_of
from drimhub.mappings.identifiers import patient_id_system
from drimhub.store import fhirsearch
from drimhub.store.access import Access

IPP = patient_id_system("CHU-TEST")
LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def stow(client: FlaskClient, *items: f.Instance, token: str | None = None) -> None:
    body, ctype = f.multipart([i.data for i in items])
    headers = {"Content-Type": ctype, "Accept": "application/dicom+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    r = client.post("/dicom-web/studies", data=body, headers=headers)
    assert r.status_code == 200, r.json


def post(client: FlaskClient, resource: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    r = client.post(f"/fhir/{resource['resourceType']}", data=orjson.dumps(resource), headers=headers)
    assert r.status_code == 201, r.json
    return r.json


def get(client: FlaskClient, url: str, status: int = 200, **headers: str) -> dict[str, Any]:
    r = client.get(url, headers=headers)
    assert r.status_code == status, r.json
    body = r.json
    if status == 200:
        Bundle.model_validate(body)
    else:
        assert body["resourceType"] == "OperationOutcome"
    return body


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def included(bundle: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle.get("entry", [])
            if e["search"]["mode"] == "include"}


def warnings(bundle: dict[str, Any]) -> list[str]:
    return [i["diagnostics"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"
            for i in e["resource"]["issue"]]


def report(patient: str, study: str, *, status: str = "final", ident: str = "R1", issued: str = "2024-03-16T10:00:00Z",
           effective: str = "2024-03-15", code: str = "18748-4") -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "status": status, "identifier": [{"system": "urn:ris", "value": ident}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{patient}"},
            "imagingStudy": [{"reference": f"ImagingStudy/{study}"}], "issued": issued,
            "effectiveDateTime": effective, "conclusion": "RAS"}


@dataclass
class World:
    s1: f.Instance  # PAT001, CT, 2024-03-15, ACC001, CHEST
    s2: f.Instance  # PAT002, MR, 2023-01-10, ACC002, HEAD
    s3: f.Instance  # PAT001, US, 2024-03-16, ACC003
    other: f.Instance  # organisation B, PAT001
    p1: str
    p2: str
    r1: str
    r2: str
    other_report: str


@pytest.fixture
def world(client: FlaskClient, mint: Mint) -> World:
    s1 = f.ct()
    s2 = f.ct(patient_id="PAT002", patient_name="MARTIN^Luc", modality="MR", study_date="20230110",
              accession="ACC002", BodyPartExamined="HEAD")
    s3 = f.ct(modality="US", study_date="20240316", accession="ACC003")
    stow(client, s1, s2, s3)
    other_token = mint(org="org-b")
    other = f.ct()
    stow(client, other, token=other_token)
    patients = get(client, "/fhir/Patient?_count=10")
    by_id = {}
    for e in patients["entry"]:
        for ident in e["resource"].get("identifier", []):
            by_id[ident["value"]] = e["resource"]["id"]
    p1, p2 = by_id["PAT001"], by_id["PAT002"]
    r1 = post(client, report(p1, s1.study))["id"]
    r2 = post(client, report(p2, s2.study, status="preliminary", ident="R2", issued="2023-01-11T08:00:00Z",
                             effective="2023-01-10", code="24627-2"))["id"]
    other_patient = get(client, "/fhir/Patient", Authorization=f"Bearer {other_token}")["entry"][0]["resource"]["id"]
    other_report = post(client, report(other_patient, other.study, ident="RB"), token=other_token)["id"]
    return World(s1, s2, s3, other, p1, p2, r1, r2, other_report)


def study_ids(client: FlaskClient, query: str) -> set[str]:
    return set(ids(get(client, f"/fhir/ImagingStudy?{query}")))


def report_ids(client: FlaskClient, query: str) -> set[str]:
    return set(ids(get(client, f"/fhir/DiagnosticReport?{query}")))


# --- ImagingStudy -----------------------------------------------------------------------------

def test_imaging_study_parameters(client: FlaskClient, world: World) -> None:
    w = world
    assert study_ids(client, "") == {w.s1.study, w.s2.study, w.s3.study}
    assert study_ids(client, f"identifier=urn:dicom:uid|urn:oid:{w.s1.study}") == {w.s1.study}
    assert study_ids(client, f"identifier={w.s2.study}") == {w.s2.study}
    assert study_ids(client, "identifier=ACC003") == {w.s3.study}
    assert study_ids(client, "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|ACSN|ACC002") \
        == {w.s2.study}
    assert study_ids(client, "identifier=urn:dicom:uid|ACC002") == set()
    assert study_ids(client, f"identifier=urn:dicom:uid|urn:oid:{w.other.study}") == set()
    assert study_ids(client, f"modality={DCM}|MR") == {w.s2.study}
    assert study_ids(client, "modality=CT,US") == {w.s1.study, w.s3.study}
    assert study_ids(client, "modality=http://other|CT") == set()
    assert study_ids(client, "modality:not=CT") == {w.s2.study, w.s3.study}
    assert study_ids(client, f"series={w.s2.series}") == {w.s2.study}
    assert study_ids(client, f"instance=urn:oid:{w.s3.sop}") == {w.s3.study}
    assert study_ids(client, f"dicom-class=urn:ietf:rfc:3986|urn:oid:{w.s1.sop_class}") == {w.s1.study, w.s2.study,
                                                                                            w.s3.study}
    assert study_ids(client, "dicom-class=1.2.3") == set()
    assert study_ids(client, "bodysite=http://snomed.info/sct|816094009") == {w.s1.study, w.s3.study}
    assert study_ids(client, "bodysite=HEAD") == {w.s2.study}
    assert study_ids(client, "status=available") == {w.s1.study, w.s2.study, w.s3.study}
    assert study_ids(client, "status=cancelled") == set()
    assert study_ids(client, "basedon:identifier=ACC001") == {w.s1.study}
    assert study_ids(client, "basedon:identifier=NOPE") == set()
    assert study_ids(client, "referrer:missing=false") == {w.s1.study, w.s2.study, w.s3.study}
    assert study_ids(client, "referrer:missing=true") == set()
    assert study_ids(client, "endpoint=Endpoint/dicomweb") == {w.s1.study, w.s2.study, w.s3.study}
    assert study_ids(client, "endpoint=Endpoint/elsewhere") == set()
    assert study_ids(client, f"_id={w.s1.study},{w.s2.study}") == {w.s1.study, w.s2.study}
    assert study_ids(client, f"patient=Patient/{w.p1}") == {w.s1.study, w.s3.study}
    assert study_ids(client, f"subject={w.p2}") == {w.s2.study}  # a bare id: any target type
    assert study_ids(client, f"subject:Patient={w.p2}") == {w.s2.study}
    assert study_ids(client, f"patient=http://localhost/fhir/Patient/{w.p2}") == {w.s2.study}
    assert study_ids(client, f"patient=http://elsewhere/fhir/Patient/{w.p2}") == set()
    assert study_ids(client, f"patient.identifier={IPP}|PAT002") == {w.s2.study}
    assert study_ids(client, "patient.identifier=urn:other|PAT002") == set()
    assert study_ids(client, f"patient:identifier={IPP}|PAT001") == {w.s1.study, w.s3.study}
    assert study_ids(client, "patient.name=martin") == {w.s2.study}
    assert study_ids(client, "subject:Patient.family=dupont") == {w.s1.study, w.s3.study}
    assert study_ids(client, "started=2024-03") == {w.s1.study, w.s3.study}
    assert study_ids(client, "started=2024-03-15") == {w.s1.study}
    assert study_ids(client, "started=ge2024-03-16") == {w.s3.study}
    assert study_ids(client, "started=lt2024") == {w.s2.study}
    assert study_ids(client, "started=gt2024-03-15") == {w.s3.study}
    assert study_ids(client, "started=le2024-03-15") == {w.s1.study, w.s2.study}
    assert study_ids(client, "started=ne2024-03-15") == {w.s2.study, w.s3.study}
    assert study_ids(client, "started=sa2024-03-15") == {w.s3.study}
    assert study_ids(client, "started=eb2024-01-01") == {w.s2.study}
    assert study_ids(client, "started=ge2024-01-01&started=lt2024-03-16") == {w.s1.study}
    assert study_ids(client, "started=2025") == set()
    assert study_ids(client, "_lastUpdated=ge2000-01-01") == {w.s1.study, w.s2.study, w.s3.study}
    assert study_ids(client, "_lastUpdated=lt2000-01-01") == set()


# --- DiagnosticReport and Patient (stored) ----------------------------------------------------

def test_stored_parameters(client: FlaskClient, world: World) -> None:
    w = world
    assert report_ids(client, "") == {w.r1, w.r2}
    assert report_ids(client, "status=final") == {w.r1}
    assert report_ids(client, "status:not=final") == {w.r2}
    assert report_ids(client, "status=final,preliminary") == {w.r1, w.r2}
    assert report_ids(client, f"code={LOINC}|24627-2") == {w.r2}
    assert report_ids(client, "code=http://other|24627-2") == set()
    assert report_ids(client, f"code={LOINC}|") == {w.r1, w.r2}
    assert report_ids(client, "code=|24627-2") == set()
    assert report_ids(client, "identifier=urn:ris|R2") == {w.r2}
    assert report_ids(client, "identifier=R1") == {w.r1}
    assert report_ids(client, "category=RAD&status=preliminary") == {w.r2}
    assert report_ids(client, "conclusion:missing=true") == {w.r1, w.r2}
    assert report_ids(client, "issued=ge2024-01-01") == {w.r1}
    assert report_ids(client, "issued=2023-01-11T08:00:00Z") == {w.r2}
    assert report_ids(client, "issued=2023-01-11T09:00:00%2B01:00") == {w.r2}
    assert report_ids(client, "issued=lt2023-01-11T08:00:00Z") == set()
    assert report_ids(client, "date=2023") == {w.r2}
    assert report_ids(client, "date=sa2023-01-10") == {w.r1}
    assert report_ids(client, "_lastUpdated=gt2000-01-01") == {w.r1, w.r2}
    assert report_ids(client, f"_id={w.r1}") == {w.r1}
    assert report_ids(client, f"_id={w.other_report}") == set()  # another organisation's
    pat = lambda q: set(ids(get(client, f"/fhir/Patient?{q}")))  # noqa: E731
    assert pat("name=dupo") == {w.p1}
    assert pat("name=DUPONT") == {w.p1}
    assert pat("family:contains=upon") == {w.p1}
    assert pat("family:contains=zzz") == set()
    assert pat("family:exact=dupont") == set()
    assert pat("given=jer") == {w.p1}  # accents and case folded
    assert pat("gender=male") == {w.p1, w.p2}
    assert pat("birthdate=1958-01-01") == {w.p1, w.p2}
    assert pat("birthdate=1960") == set()
    assert pat(f"identifier={IPP}|PAT002") == {w.p2}
    assert report_ids(client, f"patient={w.p1}") == {w.r1}
    assert report_ids(client, f"subject=Patient/{w.p2}") == {w.r2}
    assert report_ids(client, f"subject:Patient={w.p2}") == {w.r2}
    assert report_ids(client, f"imaging-study={w.s2.study}") == {w.r2}
    assert report_ids(client, f"imaging-study=ImagingStudy/{w.other.study}") == set()
    assert report_ids(client, f"patient.identifier={IPP}|PAT001") == {w.r1}
    assert report_ids(client, "patient.name=martin") == {w.r2}
    assert report_ids(client, "patient.name=nobody") == set()
    assert report_ids(client, "imaging-study.modality=MR") == {w.r2}
    assert report_ids(client, "imaging-study.identifier=ACC001") == {w.r1}
    assert report_ids(client, "patient:missing=false") == {w.r1, w.r2}
    assert report_ids(client, "results-interpreter:missing=true") == {w.r1, w.r2}


def test_bad_and_unknown_parameters(client: FlaskClient, world: World) -> None:
    for query in ("ImagingStudy?started=20240315", "ImagingStudy?started=xx2024", "DiagnosticReport?status=",
                  "DiagnosticReport?status:missing=maybe", "ImagingStudy?_count=-1", "ImagingStudy?_sort=modality",
                  "ImagingStudy?_include=ImagingStudy:series", "ImagingStudy?_summary=some",
                  "ImagingStudy?_total=all", "ImagingStudy?_cursor=abc", "DiagnosticReport?patient=Patient/a/b",
                  "DiagnosticReport?subject:Observation=1", "Patient?_elements=$x"):
        get(client, f"/fhir/{query}", 400)
    lenient = get(client, "/fhir/ImagingStudy?colour=blue&modality:text=CT&_federated=true")
    assert len(ids(lenient)) == 3
    found = warnings(lenient)
    assert any("colour" in w for w in found) and any("modality:text" in w for w in found)
    assert not any("_federated" in w for w in found)  # ImagingStudy searches reach the peers (none here)
    assert any("_federated" in w for w in warnings(get(client, "/fhir/DiagnosticReport?_federated=true")))
    get(client, "/fhir/ImagingStudy?_federated=maybe", 400)
    strict = {"Prefer": "handling=strict"}
    get(client, "/fhir/ImagingStudy?colour=blue", 400, **strict)
    get(client, "/fhir/ImagingStudy?modality:text=CT", 400, **strict)
    assert not warnings(get(client, "/fhir/ImagingStudy?modality=CT", **strict))


# --- sort, paging, totals, subsetting ---------------------------------------------------------

def test_sort_total_subsetting_paging(client: FlaskClient, app: Flask, world: World) -> None:
    w = world
    assert ids(get(client, "/fhir/ImagingStudy?_sort=started")) == [w.s2.study, w.s1.study, w.s3.study]
    assert ids(get(client, "/fhir/ImagingStudy?_sort=-started")) == [w.s3.study, w.s1.study, w.s2.study]
    assert ids(get(client, "/fhir/DiagnosticReport?_sort=-issued")) == [w.r1, w.r2]
    assert ids(get(client, "/fhir/DiagnosticReport?_sort=date,_id")) == [w.r2, w.r1]
    assert ids(get(client, "/fhir/Patient?_sort=-family")) == [w.p2, w.p1]
    assert ids(get(client, "/fhir/Patient?_sort=family")) == [w.p1, w.p2]
    counted = get(client, "/fhir/ImagingStudy?_summary=count")
    assert counted["total"] == 3 and "entry" not in counted
    assert get(client, "/fhir/ImagingStudy?_count=1&_total=accurate")["total"] == 3
    assert "total" not in get(client, "/fhir/ImagingStudy?_count=1")
    assert get(client, "/fhir/ImagingStudy")["total"] == 3
    assert "total" not in get(client, "/fhir/ImagingStudy?_total=none")
    summary = get(client, f"/fhir/ImagingStudy?_summary=true&_id={world.s1.study}")["entry"][0]["resource"]
    assert "SUBSETTED" in [t["code"] for t in summary["meta"]["tag"]]
    assert summary["series"] and "instance" not in summary["series"][0]  # instance is not a summary element
    assert summary["subject"] and summary["status"] == "available"
    elements = get(client, "/fhir/DiagnosticReport?_elements=conclusion")["entry"][0]["resource"]
    assert set(elements) == {"resourceType", "id", "meta", "conclusion", "status", "code"}
    text = {"div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">RAS</div>", "status": "generated"}
    r = client.put(f"/fhir/DiagnosticReport/{w.r1}", data=orjson.dumps({**report(w.p1, w.s1.study), "id": w.r1,
                                                                       "text": text}),
                   headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200
    data = get(client, f"/fhir/DiagnosticReport?_summary=data&_id={world.r1}")["entry"][0]["resource"]
    assert "text" not in data and data["conclusion"] == "RAS"
    only_text = get(client, f"/fhir/DiagnosticReport?_summary=text&_id={world.r1}")["entry"][0]["resource"]
    assert set(only_text) == {"resourceType", "id", "meta", "text", "status", "code"}
    first = get(client, "/fhir/ImagingStudy?_sort=-started&_count=2")
    assert ids(first) == [w.s3.study, w.s1.study]
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert parse_qs(urlsplit(following).query)["_sort"] == ["-started"]
    second = get(client, following.removeprefix("http://localhost"))
    assert ids(second) == [w.s2.study]
    assert all(link["relation"] != "next" for link in second["link"])
    one_by_one, url = [], "/fhir/ImagingStudy?_sort=-_lastUpdated,_id&_count=1"
    while url:
        page = get(client, url.removeprefix("http://localhost"))
        one_by_one += ids(page)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), "")
    assert sorted(one_by_one) == sorted([w.s1.study, w.s2.study, w.s3.study])
    cursor = parse_qs(urlsplit(following).query)["_cursor"][0]
    forged = base64.urlsafe_b64encode(orjson.dumps({"s": "0", "k": ["x"], "p": 1})).decode()
    for bad in (forged, cursor[:-3], "!!"):
        get(client, f"/fhir/ImagingStudy?_sort=-started&_count=2&_cursor={bad}", 400)
    get(client, f"/fhir/ImagingStudy?_sort=started&_count=2&_cursor={cursor}", 400)  # another order
    with app.extensions["drimhub"].sessions() as session:  # a deep page is a seek, not an OFFSET
        query = fhir_search.parse("ImagingStudy", [("_sort", "-started"), ("_cursor", cursor)])
        scope = scope_of(session, Access.of_org("org-a"), "http://localhost/fhir")
        p = fhirsearch.plan(scope, query)
        sql = str(fhirsearch.page_statement(p, 2, fhirsearch.Cursor.decode(cursor, p.sort_spec, ["string"]))
                  .compile(dialect=postgresql.dialect()))
        assert "OFFSET" not in sql.upper() and "LIMIT" in sql.upper()


# --- includes ---------------------------------------------------------------------------------

def test_includes_and_visibility(client: FlaskClient, mint: Mint, world: World,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    found = get(client, f"/fhir/ImagingStudy?_id={w.s1.study}&_revinclude=DiagnosticReport:imaging-study"
                        "&_include=ImagingStudy:patient&_include=ImagingStudy:endpoint")
    assert ids(found) == [w.s1.study]
    assert included(found) == {("DiagnosticReport", w.r1), ("Patient", w.p1), ("Endpoint", "dicomweb")}
    reports = get(client, "/fhir/DiagnosticReport?_include=DiagnosticReport:imaging-study"
                          "&_include=DiagnosticReport:patient")
    assert included(reports) == {("ImagingStudy", w.s1.study), ("ImagingStudy", w.s2.study),
                                 ("Patient", w.p1), ("Patient", w.p2)}
    patients = get(client, f"/fhir/Patient?_id={w.p1}&_revinclude=ImagingStudy:patient"
                           "&_revinclude=DiagnosticReport:patient")
    assert included(patients) == {("ImagingStudy", w.s1.study), ("ImagingStudy", w.s3.study),
                                  ("DiagnosticReport", w.r1)}
    other = {"Authorization": f"Bearer {mint(org='org-b')}"}
    # organisation B's report points at A's study; it never shows up in A's revinclude
    b_report = report(get(client, "/fhir/Patient", **other)["entry"][0]["resource"]["id"], w.s1.study, ident="RX")
    r = client.post("/fhir/DiagnosticReport", data=orjson.dumps(b_report),
                    headers={"Content-Type": "application/fhir+json", **other})
    assert r.status_code == 201, r.json
    leaked = r.json["id"]
    seen = get(client, "/fhir/ImagingStudy?_revinclude=DiagnosticReport:imaging-study")
    assert ("DiagnosticReport", leaked) not in included(seen)
    assert ("DiagnosticReport", w.other_report) not in included(seen)
    # and B sees its own report, but not A's study it points at
    b_view = get(client, "/fhir/DiagnosticReport?_include=DiagnosticReport:imaging-study", **other)
    assert set(ids(b_view)) == {leaked, w.other_report}
    assert included(b_view) == {("ImagingStudy", w.other.study)}
    assert study_ids(client, f"_id={w.other.study}") == set()
    token = {"Authorization": f"Bearer {mint(scope='patient/*.rs', patient='CHU-TEST|PAT002')}"}
    assert set(ids(get(client, "/fhir/ImagingStudy", **token))) == {w.s2.study}
    assert set(ids(get(client, "/fhir/DiagnosticReport?_include=DiagnosticReport:patient", **token))) == {w.r2}
    assert set(ids(get(client, "/fhir/Patient?_revinclude=ImagingStudy:patient", **token))) == {w.p2}
    found = get(client, f"/fhir/ImagingStudy?_revinclude=DiagnosticReport:imaging-study&patient={w.p1}", **token)
    assert ids(found) == [] and not included(found)
    found = get(client, "/fhir/Patient?_count=1000&_revinclude=ImagingStudy:patient"
                        "&_revinclude=DiagnosticReport:patient&_total=accurate")
    assert found["total"] == 2
    assert len(included(found)) == 5
    monkeypatch.setattr(searchset, "MAX_INCLUDED", 2)  # beyond the cap: cut, and said so
    found = get(client, "/fhir/Patient?_revinclude=ImagingStudy:patient&_revinclude=DiagnosticReport:patient")
    assert len(included(found)) == 2 and any("included resources" in w for w in warnings(found))



# FHIR R4 search.html §3.1.1.4.2: a value covers its precision; datatypes.html: a time carries a zone
# (this server reads one without as UTC). value ⇒ [low, high) in UTC
DATE_RANGES = [
    pytest.param("2024", "2024-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00", id="R4-search-3.1.1.4.2-year"),
    pytest.param("2024-12", "2024-12-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00", id="R4-search-3.1.1.4.2-month"),
    pytest.param("2024-02-29", "2024-02-29T00:00:00+00:00", "2024-03-01T00:00:00+00:00", id="R4-search-3.1.1.4.2-day"),
    pytest.param("2024-03-05T10:15", "2024-03-05T10:15:00+00:00", "2024-03-05T10:16:00+00:00",
                 id="R4-search-3.1.1.4.2-minute"),
    pytest.param("2024-03-05T10:15:30+02:00", "2024-03-05T08:15:30+00:00", "2024-03-05T08:15:31+00:00",
                 id="R4-search-3.1.1.4.2-second-with-zone"),
    pytest.param("2024-03-05T10:15:30.25Z", "2024-03-05T10:15:30.250000+00:00", "2024-03-05T10:15:30.260000+00:00",
                 id="R4-search-3.1.1.4.2-fraction-is-a-precision"),
    pytest.param("2024-03-05T10:15:30.1234567Z", "2024-03-05T10:15:30.123456+00:00",
                 "2024-03-05T10:15:30.123457+00:00", id="fraction-beyond-microseconds-cut"),
    pytest.param("2024-03-05T10:15:30", "2024-03-05T10:15:30+00:00", "2024-03-05T10:15:31+00:00",
                 id="R4-datatypes-no-zone-read-as-utc"),
]


@pytest.mark.parametrize("value, low, high", DATE_RANGES)
def test_date_range(value: str, low: str, high: str) -> None:
    assert tuple(d.isoformat() for d in date_range(value)) == (low, high)


@pytest.mark.parametrize("value", ["2024-13", "2024-02-30", "2024-03-05T10", "2024-03-05T25:00", "20240305",
                                   "2024-03-05 10:15:30", "2024-03-05T10:15:30+15:00", "yesterday"])
def test_date_range_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        date_range(value)
