"""Batch and transaction Bundles (R4 http.html#transaction): the RIS path, atomicity, conditional
references, per-entry scopes, batch independence."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

import dicomfactory as f
from conftest import Mint
from drimhub.store.models import FhirResource, FhirVersion

FHIR = "application/fhir+json"
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"
PDF = b"%PDF-1.4\n%report\n" + bytes(range(256)) * 4


def _rows(app: Flask) -> tuple[int, int]:
    with app.extensions["drimhub"].sessions() as s:
        return (s.scalar(select(func.count()).select_from(FhirResource)) or 0,
                s.scalar(select(func.count()).select_from(FhirVersion)) or 0)


def _post(client: FlaskClient, bundle: dict[str, Any], **headers: str) -> Any:
    return client.post("/fhir", json=bundle, headers={"Content-Type": FHIR, **headers})


def _ris_bundle(study_uid: str, ins: str = "2800275012345", status: str = "final") -> dict[str, Any]:
    """What a RIS sends for a signed report: the patient (created unless known) and the report."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7f0c3d4e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "identifier": [{"system": INS_TEST, "value": ins}],
                      "name": [{"family": "Durand", "given": ["Anne"]}], "gender": "female"},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={INS_TEST}|{ins}"}},
        {"fullUrl": "urn:uuid:7f0c3d4e-0000-4000-8000-000000000002",
         "resource": {"resourceType": "DiagnosticReport", "status": status,
                      "identifier": [{"system": "urn:oid:1.2.3.4.5", "value": "CR-1"}],
                      "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                                "code": "RAD"}]}],
                      "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
                      "subject": {"reference": "urn:uuid:7f0c3d4e-0000-4000-8000-000000000001"},
                      "imagingStudy": [{"reference": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_uid}"}],
                      "presentedForm": [{"contentType": "application/pdf", "title": "Compte rendu",
                                         "data": base64.b64encode(PDF).decode()}]},
         "request": {"method": "POST", "url": "DiagnosticReport"}},
    ]}


@pytest.fixture
def study(client: FlaskClient) -> str:
    inst = f.ct(accession="ACC-BUNDLE")
    body, ctype = f.multipart([inst.data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    return inst.study


def test_ris_transaction(client: FlaskClient, study: str) -> None:
    r = _post(client, _ris_bundle(study))
    assert r.status_code == 200, r.json
    answer = get_fhir_model_class("Bundle").model_validate(r.json)
    assert answer.type == "transaction-response"
    statuses = [e["response"]["status"] for e in r.json["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    patient_loc, report_loc = (e["response"]["location"] for e in r.json["entry"])
    patient_id, report_id = patient_loc.split("/")[1], report_loc.split("/")[1]
    report = client.get(f"/fhir/DiagnosticReport/{report_id}").json
    assert report["subject"] == {"reference": f"Patient/{patient_id}"}
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study}"}]
    form = report["presentedForm"][0]
    assert "data" not in form and client.get(f"/fhir/{form['url']}", headers={"Accept": "application/pdf"}).data == PDF
    # sent again: the patient is found (200), a second report is created
    again = _post(client, _ris_bundle(study))
    assert [e["response"]["status"] for e in again.json["entry"]] == ["200 OK", "201 Created"]
    assert again.json["entry"][0]["response"]["location"] == patient_loc


def test_transaction_is_all_or_nothing(app: Flask, client: FlaskClient, study: str) -> None:
    before = _rows(app)
    bad = _ris_bundle(study)
    bad["entry"][1]["resource"]["status"] = "not-a-status"
    r = _post(client, bad)
    assert r.status_code == 422 and "Bundle.entry[1]" in r.json["issue"][0]["diagnostics"]
    assert _rows(app) == before
    unknown = _ris_bundle("1.2.3.999")  # conditional reference matching nothing
    r = _post(client, unknown)
    assert r.status_code == 404 and r.json["resourceType"] == "OperationOutcome"
    assert _rows(app) == before


def test_conditional_reference_with_several_matches_is_412(app: Flask, client: FlaskClient, study: str) -> None:
    for family in ("A", "B"):
        client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [{"system": INS_TEST,
                                                                                     "value": "dup"}],
                                           "name": [{"family": family}]}, headers={"Content-Type": FHIR})
    before = _rows(app)
    bundle = _ris_bundle(study)
    bundle["entry"][1]["resource"]["subject"] = {"reference": f"Patient?identifier={INS_TEST}|dup"}
    r = _post(client, bundle)
    assert r.status_code == 412
    assert _rows(app) == before


def test_transaction_needs_every_entry_scope(app: Flask, mint: Mint, study: str) -> None:
    before = _rows(app)
    limited = app.test_client()
    limited.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint('system/Patient.cruds system/ImagingStudy.rs')}"
    r = _post(limited, _ris_bundle(study))
    assert r.status_code == 403 and "Bundle.entry[1]" in r.json["issue"][0]["diagnostics"]
    assert _rows(app) == before


def test_transaction_order_and_updates(client: FlaskClient) -> None:
    existing = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"},
                           headers={"Content-Type": FHIR}).json
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
        {"resource": {**existing, "gender": "female"},
         "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"1"'}},
        {"resource": {"resourceType": "Patient", "id": "by-ris", "gender": "other"},
         "request": {"method": "PUT", "url": "Patient?identifier=urn:ris|77"}},
    ]}
    r = _post(client, bundle)
    assert r.status_code == 200, r.json
    got, updated, created = r.json["entry"]
    assert got["resource"]["gender"] == "female"  # GET runs after PUT (R4 http.html#trules)
    assert updated["response"]["status"] == "200 OK" and updated["response"]["etag"] == 'W/"2"'
    assert created["response"]["status"] == "201 Created" and created["response"]["location"].startswith(
        "Patient/by-ris/")
    stale = _post(client, {**bundle, "entry": [bundle["entry"][1]]})
    assert stale.status_code == 412


def test_batch_entries_are_independent(app: Flask, client: FlaskClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "nope"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        {"request": {"method": "DELETE", "url": "ImagingStudy/1.2.3"}},
    ]}
    r = _post(client, bundle)
    assert r.status_code == 200
    get_fhir_model_class("Bundle").model_validate(r.json)
    assert r.json["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in r.json["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "404 Not Found", "405 Method Not Allowed"]
    assert r.json["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert _rows(app)[0] == 1


def test_bundle_shape_and_size(client: FlaskClient) -> None:
    assert _post(client, {"resourceType": "Patient"}).status_code == 400
    assert _post(client, {"resourceType": "Bundle", "type": "collection"}).status_code == 400
    bad_url = {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "GET", "url": ""}}]}
    assert _post(client, bad_url).status_code == 400
    huge = {"resourceType": "Bundle", "type": "batch",
            "entry": [{"request": {"method": "GET", "url": "Patient/x"}}] * 501}
    r = _post(client, huge)
    assert r.status_code == 413 and r.json["issue"][0]["code"] == "too-costly"


def test_transaction_matches_conditional_entries_after_its_deletes(client: FlaskClient) -> None:
    """R4 http.html#trules: DELETEs first, then POST/PUT; an ifNoneExist sees what the DELETE left."""
    patient = {"resourceType": "Patient", "identifier": [{"system": INS_TEST, "value": "1111111111111"}]}
    old = client.post("/fhir/Patient", json=patient, headers={"Content-Type": FHIR}).json["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient, "request": {"method": "POST", "url": "Patient",
                                          "ifNoneExist": f"identifier={INS_TEST}|1111111111111"}},
        {"request": {"method": "DELETE", "url": f"Patient?identifier={INS_TEST}|1111111111111"}}]}
    r = _post(client, bundle)
    assert r.status_code == 200, r.json
    created, deleted = r.json["entry"]
    assert created["response"]["status"] == "201 Created" and deleted["response"]["status"] == "204 No Content"
    assert not created["response"]["location"].startswith(f"Patient/{old}/")
    assert client.get(f"/fhir/Patient/{old}").status_code == 410


def test_entry_urls_must_be_on_this_servers_base(client: FlaskClient) -> None:
    patient = {"resourceType": "Patient"}
    for url in ("https://evil.example/fhir/Patient", "http://localhost/other/fhir/Patient"):
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"resource": patient, "request": {"method": "POST", "url": url}}]}
        assert _post(client, bundle).status_code == 400
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": patient, "request": {"method": "POST", "url": "http://localhost/fhir/Patient"}}]}
    assert _post(client, bundle).json["entry"][0]["response"]["status"] == "201 Created"


def test_batch_search_entries_have_a_bounded_count(client: FlaskClient) -> None:
    for i in range(3):
        client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"P{i}"}]},
                    headers={"Content-Type": FHIR})
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"request": {"method": "GET", "url": "Patient?_count=100000"}}]}
    r = _post(client, bundle)
    searchset = r.json["entry"][0]["resource"]
    assert len(searchset["entry"]) == 3
    assert "_count=100" in searchset["link"][0]["url"] and "_count=100000" not in searchset["link"][0]["url"]
