"""FHIR RESTful interactions on stored resources (R4 http.html), through the Flask test client.

Every status the issue names (200 201 204 400 404 405 406 409 410 412 415 422), the headers
(ETag, Last-Modified, Location), OperationOutcome bodies, R4B validation of every resource read,
organisations kept apart and the patient/ compartment.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from flask import Flask
from flask.testing import FlaskClient

from conftest import Mint

FHIR = "application/fhir+json"
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"


def patient(value: str = "1234567890123", family: str = "Dupont") -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": INS_TEST, "value": value}],
            "name": [{"family": family, "given": ["Jérôme"]}], "gender": "male", "birthDate": "1970-03-02"}


def report(patient_id: str, status: str = "final") -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "status": status,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
            "subject": {"reference": f"Patient/{patient_id}"}, "issued": "2024-05-01T10:00:00+02:00",
            "conclusion": "Normal."}


def valid(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` after checking it validates as its fhir.resources R4B model."""
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    return body


def outcome(response: Any, status: int, code: str | None = None) -> str:
    """Assert an OperationOutcome error answer; its diagnostics."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == FHIR
    body = valid(response.json)
    assert body["resourceType"] == "OperationOutcome"
    if code is not None:
        assert body["issue"][0]["code"] == code, body
    return str(body["issue"][0]["diagnostics"])


def post(client: FlaskClient, body: Any, url: str = "/fhir/Patient", **headers: str) -> Any:
    return client.post(url, json=body, headers={"Content-Type": FHIR, **headers})


def put(client: FlaskClient, url: str, body: Any, **headers: str) -> Any:
    return client.put(url, json=body, headers={"Content-Type": FHIR, **headers})


@pytest.fixture
def org_b(app: Flask, mint: Mint) -> FlaskClient:
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint('system/*.cruds', org='org-b')}"
    return other


# --- create, read, vread ----------------------------------------------------------------------

def test_create_then_read(client: FlaskClient) -> None:
    r = post(client, patient())
    assert r.status_code == 201
    created = valid(r.json)
    pid = created["id"]
    assert r.headers["Location"] == f"http://localhost/fhir/Patient/{pid}/_history/1"
    assert r.headers["ETag"] == 'W/"1"'
    assert created["meta"]["versionId"] == "1" and created["meta"]["lastUpdated"].endswith("Z")
    read = client.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200 and read.mimetype == FHIR
    assert valid(read.json) == created
    assert read.headers["ETag"] == 'W/"1"' and read.headers["Last-Modified"].endswith("GMT")
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json == created
    outcome(client.get(f"/fhir/Patient/{pid}/_history/2"), 404, "not-found")
    outcome(client.get("/fhir/Patient/unknown-id"), 404, "not-found")


def test_prefer_return(client: FlaskClient) -> None:
    minimal = post(client, patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.data == b"" and minimal.headers["Location"]
    oo = post(client, patient(), Prefer="return=OperationOutcome")
    assert oo.status_code == 201 and valid(oo.json)["resourceType"] == "OperationOutcome"


def test_media_types(client: FlaskClient) -> None:
    pid = post(client, patient()).json["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"Accept": "application/json"}).status_code == 200
    assert client.get(f"/fhir/Patient/{pid}?_format=json").status_code == 200
    outcome(client.get(f"/fhir/Patient/{pid}", headers={"Accept": "application/fhir+xml"}), 406, "not-supported")
    outcome(client.get(f"/fhir/Patient/{pid}?_format=xml"), 406)
    outcome(client.post("/fhir/Patient", data="<Patient/>", headers={"Content-Type": "application/fhir+xml"}), 415)
    outcome(client.post("/fhir/Patient", data="{not json", headers={"Content-Type": FHIR}), 400, "invalid")
    outcome(post(client, {**patient(), "resourceType": "Observation"}), 400)
    outcome(post(client, [1, 2]), 400)


def test_invalid_resource_is_422(client: FlaskClient) -> None:
    message = outcome(post(client, {**patient(), "birthDate": "1970-13-45"}), 422, "processing")
    assert "birthDate" in message
    outcome(post(client, {**patient(), "unknownElement": 1}), 422)


def test_unknown_type_and_derived_types(client: FlaskClient) -> None:
    outcome(client.get("/fhir/Observation/1"), 404, "not-supported")
    outcome(post(client, {"resourceType": "Observation"}, "/fhir/Observation"), 404, "not-supported")
    for method, url in [("POST", "/fhir/ImagingStudy"), ("PUT", "/fhir/ImagingStudy/1.2.3"),
                        ("DELETE", "/fhir/ImagingStudy/1.2.3"), ("PATCH", "/fhir/Endpoint/x")]:
        r = client.open(url, method=method, json={"resourceType": "ImagingStudy"},
                        headers={"Content-Type": "application/json-patch+json" if method == "PATCH" else FHIR})
        message = outcome(r, 405, "not-supported")
        assert "read-only" in message
        assert "GET" in r.headers["Allow"] and method not in r.headers["Allow"]


# --- update, If-Match, patch ------------------------------------------------------------------

def test_update_versions_and_if_match(client: FlaskClient) -> None:
    created = post(client, patient()).json
    pid = created["id"]
    changed = {**created, "gender": "female"}
    r = put(client, f"/fhir/Patient/{pid}", changed, **{"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"2"' and valid(r.json)["gender"] == "female"
    outcome(put(client, f"/fhir/Patient/{pid}", changed, **{"If-Match": 'W/"1"'}), 412)  # stale
    outcome(put(client, f"/fhir/Patient/{pid}", {**changed, "id": "other"}), 400)
    outcome(put(client, f"/fhir/Patient/{pid}", {k: v for k, v in changed.items() if k != "id"}), 400)
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json["gender"] == "male"


def test_update_as_create_with_client_id(client: FlaskClient, org_b: FlaskClient) -> None:
    r = put(client, "/fhir/Patient/ris-42", {**patient(), "id": "ris-42"})
    assert r.status_code == 201 and r.json["id"] == "ris-42"
    assert put(client, "/fhir/Patient/ris-42", {**patient(), "id": "ris-42"}).status_code == 200
    # the id is taken by org-a: org-b can neither take it nor change it
    outcome(put(org_b, "/fhir/Patient/ris-42", {**patient(family="Other"), "id": "ris-42"}), 409)
    assert client.get("/fhir/Patient/ris-42").json["name"][0]["family"] == "Dupont"


def test_patch(client: FlaskClient) -> None:
    pid = post(client, patient()).json["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    r = client.patch(f"/fhir/Patient/{pid}", json=ops, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200 and valid(r.json)["gender"] == "female" and r.json["meta"]["versionId"] == "2"
    outcome(client.patch(f"/fhir/Patient/{pid}", json=ops, headers={"Content-Type": FHIR}), 415)
    for bad in ([{"op": "replace", "path": "/id", "value": "x"}],
                [{"op": "replace", "path": "/resourceType", "value": "Group"}],
                [{"op": "replace", "path": "/birthDate", "value": "not a date"}],
                [{"op": "remove", "path": "/nothing"}]):
        outcome(client.patch(f"/fhir/Patient/{pid}", json=bad,
                             headers={"Content-Type": "application/json-patch+json"}), 422)
    stale = client.patch(f"/fhir/Patient/{pid}", json=ops,
                         headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'})
    outcome(stale, 412)


# --- delete, history --------------------------------------------------------------------------

def test_delete_then_gone_and_history(client: FlaskClient) -> None:
    created = post(client, patient()).json
    pid = created["id"]
    put(client, f"/fhir/Patient/{pid}", {**created, "gender": "other"})
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    outcome(client.get(f"/fhir/Patient/{pid}"), 410, "deleted")
    outcome(client.get(f"/fhir/Patient/{pid}/_history/3"), 410)
    assert client.get(f"/fhir/Patient/{pid}/_history/2").json["gender"] == "other"
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204  # already deleted: no effect
    assert client.delete("/fhir/Patient/never-was").status_code == 204
    history = valid(client.get(f"/fhir/Patient/{pid}/_history").json)
    assert history["type"] == "history"
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in history["entry"][0]
    # brought back by an update
    assert put(client, f"/fhir/Patient/{pid}", created).status_code == 201
    assert client.get(f"/fhir/Patient/{pid}").json["meta"]["versionId"] == "4"


def test_type_history_pages(client: FlaskClient) -> None:
    for i in range(5):
        post(client, patient(str(i)))
    page = client.get("/fhir/Patient/_history?_count=2").json
    seen = []
    while True:
        valid(page)
        seen += [e["resource"]["identifier"][0]["value"] for e in page["entry"]]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        page = client.get(nxt[0].removeprefix("http://localhost")).json
    assert seen == ["4", "3", "2", "1", "0"]
    assert client.get("/fhir/Patient/_history?_since=2999-01-01T00:00:00Z").json.get("entry") == []
    outcome(client.get("/fhir/Patient/_history?_count=abc"), 400)


def test_delete_referenced_patient_is_409(client: FlaskClient) -> None:
    pid = post(client, patient()).json["id"]
    rid = post(client, report(pid), "/fhir/DiagnosticReport").json["id"]
    assert "DiagnosticReport/" + rid in outcome(client.delete(f"/fhir/Patient/{pid}"), 409, "conflict")
    assert client.delete(f"/fhir/DiagnosticReport/{rid}").status_code == 204
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204


# --- DiagnosticReport rules -------------------------------------------------------------------

def test_report_status_lifecycle(client: FlaskClient) -> None:
    pid = post(client, patient()).json["id"]
    r = post(client, report(pid, "preliminary"), "/fhir/DiagnosticReport").json
    for status, expected in [("final", 200), ("preliminary", 422), ("amended", 200), ("final", 422),
                             ("corrected", 200), ("entered-in-error", 200), ("final", 422)]:
        r2 = put(client, f"/fhir/DiagnosticReport/{r['id']}", {**r, "status": status})
        assert r2.status_code == expected, (status, r2.json)
        if expected == 422:
            assert "cannot go from" in outcome(r2, 422)


def test_report_patient_must_exist(client: FlaskClient, org_b: FlaskClient) -> None:
    outcome(post(client, report("no-such-patient"), "/fhir/DiagnosticReport"), 422)
    pid = post(org_b, patient()).json["id"]  # org-b's patient is not org-a's
    outcome(post(client, report(pid), "/fhir/DiagnosticReport"), 422)


def test_report_inline_pdf_moves_to_binary(client: FlaskClient) -> None:
    import base64
    import hashlib

    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 10
    pid = post(client, patient()).json["id"]
    body = {**report(pid), "presentedForm": [{"contentType": "application/pdf", "title": "CR",
                                              "data": base64.b64encode(pdf).decode()}]}
    r = post(client, body, "/fhir/DiagnosticReport")
    form = valid(r.json)["presentedForm"][0]
    assert "data" not in form and form["url"].startswith("Binary/") and form["title"] == "CR"
    assert form["size"] == len(pdf) and form["hash"] == base64.b64encode(hashlib.sha1(pdf).digest()).decode()
    raw = client.get(f"/fhir/{form['url']}", headers={"Accept": "application/pdf"})
    assert raw.status_code == 200 and raw.mimetype == "application/pdf" and raw.data == pdf


# --- organisations and the patient compartment ------------------------------------------------

def test_other_organisation_sees_nothing(client: FlaskClient, org_b: FlaskClient) -> None:
    created = post(client, patient()).json
    pid = created["id"]
    for url in [f"/fhir/Patient/{pid}", f"/fhir/Patient/{pid}/_history/1", f"/fhir/Patient/{pid}/_history"]:
        outcome(org_b.get(url), 404)
    assert org_b.get("/fhir/Patient/_history").json.get("entry") == []
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    outcome(org_b.patch(f"/fhir/Patient/{pid}", json=ops, headers={"Content-Type": "application/json-patch+json"}),
            404)
    outcome(put(org_b, f"/fhir/Patient/{pid}", {**created, "gender": "female"}), 409)
    assert org_b.delete(f"/fhir/Patient/{pid}").status_code == 204  # as for an id it does not know
    r = client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200 and r.json == created


def test_patient_scope_compartment(app: Flask, client: FlaskClient, mint: Mint) -> None:
    mine = post(client, patient("111")).json["id"]
    other = post(client, patient("222")).json["id"]
    my_report = post(client, report(mine), "/fhir/DiagnosticReport").json["id"]
    other_report = post(client, report(other), "/fhir/DiagnosticReport").json["id"]
    scoped = app.test_client()
    scoped.environ_base["HTTP_AUTHORIZATION"] = (
        f"Bearer {mint('patient/*.rs', patient='1.2.250.1.213.1.4.10|111')}")
    assert scoped.get(f"/fhir/Patient/{mine}").status_code == 200
    assert scoped.get(f"/fhir/DiagnosticReport/{my_report}").status_code == 200
    outcome(scoped.get(f"/fhir/Patient/{other}"), 404)
    outcome(scoped.get(f"/fhir/DiagnosticReport/{other_report}"), 404)
    outcome(post(scoped, patient("333")), 403)  # no c permission


def test_scopes_per_interaction(app: Flask, client: FlaskClient, mint: Mint) -> None:
    pid = post(client, patient()).json["id"]
    reader = app.test_client()
    reader.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint('system/Patient.r')}"
    assert reader.get(f"/fhir/Patient/{pid}").status_code == 200
    outcome(reader.get(f"/fhir/DiagnosticReport/{pid}"), 403)
    outcome(reader.get("/fhir/Patient/_history"), 403)  # type history is a search (s)
    outcome(post(reader, patient()), 403)
    outcome(reader.delete(f"/fhir/Patient/{pid}"), 403)


# --- conditional interactions (search criteria) ------------------------------------------------

def test_conditional_create_update_delete(client: FlaskClient) -> None:
    criteria = f"identifier={INS_TEST}|555"
    first = post(client, patient("555"), **{"If-None-Exist": criteria})
    assert first.status_code == 201
    again = post(client, patient("555"), **{"If-None-Exist": criteria})
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    # conditional update: one match → update it; the body may leave out the id
    r = put(client, f"/fhir/Patient?{criteria}", {**patient("555"), "gender": "female"})
    assert r.status_code == 200 and r.json["id"] == first.json["id"] and r.json["meta"]["versionId"] == "2"
    outcome(put(client, f"/fhir/Patient?{criteria}", {**patient("555"), "id": "another"}), 400)
    # no match → create
    created = put(client, f"/fhir/Patient?identifier={INS_TEST}|556", patient("556"))
    assert created.status_code == 201
    # several matches → 412
    post(client, patient("556"))
    outcome(put(client, f"/fhir/Patient?identifier={INS_TEST}|556", patient("556")), 412)
    outcome(post(client, patient("556"), **{"If-None-Exist": f"identifier={INS_TEST}|556"}), 412)
    outcome(client.delete(f"/fhir/Patient?identifier={INS_TEST}|556"), 412)
    assert client.delete(f"/fhir/Patient?{criteria}").status_code == 204
    outcome(client.get(f"/fhir/Patient/{first.json['id']}"), 410)


def test_report_study_from_accession(client: FlaskClient) -> None:
    import dicomfactory as f

    inst = f.ct(accession="ACC-REST-1")
    body, ctype = f.multipart([inst.data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    pid = post(client, patient()).json["id"]
    acsn = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": "ACC-REST-1"}
    r = post(client, {**report(pid), "basedOn": [{"identifier": acsn}]}, "/fhir/DiagnosticReport")
    assert r.status_code == 201 and r.json["imagingStudy"] == [{"reference": f"ImagingStudy/{inst.study}"}]
    # a study not stored yet may be named by its UID: the images may come after the report
    later = post(client, {**report(pid), "imagingStudy": [{"reference": "ImagingStudy/1.2.826.0.1.99"}]},
                 "/fhir/DiagnosticReport")
    assert later.status_code == 201
    unknown = post(client, {**report(pid), "basedOn": [{"identifier": {**acsn, "value": "NOPE"}}]},
                   "/fhir/DiagnosticReport")
    assert unknown.status_code == 201 and "imagingStudy" not in unknown.json


# --- review fixes: conditional interactions ----------------------------------------------------

def _as(app: Flask, mint: Mint, scope: str) -> FlaskClient:
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint(scope)}"
    return other


def test_conditional_create_match_not_shown_to_a_create_only_token(app: Flask, client: FlaskClient,
                                                                  mint: Mint) -> None:
    pid = post(client, patient(family="Secret")).json["id"]
    creator = _as(app, mint, "system/Patient.c")
    assert creator.get(f"/fhir/Patient/{pid}").status_code == 403
    for criteria in (f"_id={pid}", "name=Sec"):
        r = post(creator, patient(value="999", family="Other"), **{"If-None-Exist": criteria})
        assert r.status_code == 200 and r.get_data() == b"", r.get_data(as_text=True)
        assert r.headers["Location"] == f"http://localhost/fhir/Patient/{pid}/_history/1"
        assert r.headers["ETag"] == 'W/"1"'
    searcher = _as(app, mint, "system/Patient.cs")
    r = post(searcher, patient(value="999"), **{"If-None-Exist": f"_id={pid}"})
    assert r.status_code == 200 and r.json["name"][0]["family"] == "Secret"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(value="999"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "name=Sec"}}]}
    r = creator.post("/fhir", json=bundle, headers={"Content-Type": FHIR})
    assert r.status_code == 200, r.get_data(as_text=True)
    entry = r.json["entry"][0]
    assert "resource" not in entry and entry["response"]["location"] == f"Patient/{pid}/_history/1"


def test_conditional_update_and_delete_need_the_search_grant(app: Flask, client: FlaskClient, mint: Mint) -> None:
    pid = post(client, patient()).json["id"]
    updater = _as(app, mint, "system/Patient.u")
    outcome(put(updater, f"/fhir/Patient?_id={pid}", {**patient(family="X")}), 403)
    outcome(_as(app, mint, "system/Patient.d").delete(f"/fhir/Patient?_id={pid}"), 403)
    assert client.get(f"/fhir/Patient/{pid}").json["name"][0]["family"] == "Dupont"
    assert put(_as(app, mint, "system/Patient.us"), f"/fhir/Patient?_id={pid}",
               {**patient(family="X"), "id": pid}).status_code == 200


@pytest.mark.parametrize("query", ["_format=json", "_count=5", "_pretty=true", "", "_format=json&_pretty=true",
                                   "identifier=1234567890123&_count=1", "identifier=1234567890123&_sort=_id"])
def test_conditional_interactions_without_criteria_are_refused(client: FlaskClient, query: str) -> None:
    pids = [post(client, patient(value=v)).json["id"] for v in ("1234567890123", "1234567890124")]
    outcome(client.delete(f"/fhir/Patient?{query}"), 400)
    outcome(put(client, f"/fhir/Patient?{query}", patient(family="Overwritten")), 400)
    outcome(post(client, patient(value="77"), **{"If-None-Exist": query or "_pretty=true"}), 400)
    for pid in pids:
        assert client.get(f"/fhir/Patient/{pid}").json["name"][0]["family"] == "Dupont"


def test_conditional_update_without_match_does_not_overwrite_an_existing_id(client: FlaskClient) -> None:
    pid = post(client, patient()).json["id"]
    body = {**patient(value="555", family="Intruder"), "id": pid}
    outcome(put(client, "/fhir/Patient?identifier=nothing-matches", body), 409)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "PUT", "url": "Patient?identifier=nothing-matches"}}]}
    outcome(client.post("/fhir", json=bundle, headers={"Content-Type": FHIR}), 409)
    assert client.get(f"/fhir/Patient/{pid}").json["name"][0]["family"] == "Dupont"
    created = put(client, "/fhir/Patient?identifier=nothing-matches", {**body, "id": "brand-new-id"})
    assert created.status_code == 201 and created.json["id"] == "brand-new-id"


# --- review fixes: request body cap ------------------------------------------------------------

def test_fhir_body_larger_than_the_cap_is_413(app: Flask, client: FlaskClient) -> None:
    app.config["FHIR_MAX_BODY"] = 1000
    big = {**patient(), "name": [{"family": "D" * 2000}]}
    outcome(post(client, big), 413)
    outcome(put(client, "/fhir/Patient/p1", {**big, "id": "p1"}), 413)
    form = "name=" + "x" * 2000
    outcome(client.post("/fhir/Patient/_search", data=form,
                        headers={"Content-Type": "application/x-www-form-urlencoded"}), 413)
    assert post(client, patient()).status_code == 201
    assert client.post("/fhir/Binary", data=b"%PDF" * 1000, headers={"Content-Type": "application/pdf"}).status_code == 201


def test_chunked_fhir_body_larger_than_the_cap_is_413(app: Flask, live_server: str, mint: Mint) -> None:
    import requests

    app.config["FHIR_MAX_BODY"] = 1000

    def chunks() -> Any:
        yield b'{"resourceType": "Patient", "name": [{"family": "'
        for _ in range(100):
            yield b"D" * 100
        yield b'"}]}'

    r = requests.post(f"{live_server}/fhir/Patient", data=chunks(), timeout=10,
                      headers={"Authorization": f"Bearer {mint()}", "Content-Type": FHIR})
    assert r.status_code == 413, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_imagingstudy_read_has_last_modified(client: FlaskClient) -> None:
    import dicomfactory as f

    study = f.new_uid()
    body, ctype = f.multipart([f.ct(study).data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    r = client.get(f"/fhir/ImagingStudy/{study}")
    assert r.status_code == 200 and r.json["meta"]["lastUpdated"]
    assert r.headers["Last-Modified"].endswith(" GMT")
