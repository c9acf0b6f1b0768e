"""A patient's opposition to sharing (FHIR R4 Consent) and where it is enforced.

Organisation ``org-a`` stores two studies of two patients; a Consent of the first patient,
``status`` active, ``scope`` patient-privacy, ``provision.type`` deny, makes the node refuse
shares of that patient's studies (403 with the reason), hide them from a peer node's token
(``drimhub/peer``: absent from QIDO, 403 on WADO) and stop capabilities and grants given
before; the owning organisation still finds and reads them. A permit, an inactive Consent, another
scope or a period that does not cover now change nothing. Consent is a stored FHIR type,
searched by its R4 parameters.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.consent import Consent
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

import dicomfactory as f
from conftest import Mint
from drimhub.sharing import consent
from drimhub.store.models import Study

SHARER = "system/*.cruds drimhub/share"
PEER = "system/ImagingStudy.rs drimhub/peer"
SCOPES = "http://terminology.hl7.org/CodeSystem/consentscope"


@pytest.fixture
def studies(client: FlaskClient, app: Flask) -> dict[str, tuple[f.Instance, str]]:
    """Two studies of org-a with their FHIR Patient ids: ``opposed`` (its patient will oppose) and ``other``."""
    found = {"opposed": f.ct(patient_id="PAT-NO", seed=1), "other": f.ct(patient_id="PAT-OK", seed=2)}
    body, ctype = f.multipart([i.data for i in found.values()])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    with app.extensions["drimhub"].sessions() as session:
        refs = {uid: ref for uid, ref in session.execute(select(Study.study_uid, Study.patient_ref))}
    assert all(refs.values())
    return {name: (inst, refs[inst.study]) for name, inst in found.items()}


def opposition(patient: str, *, status: str = "active", scope: str = "patient-privacy", kind: str = "deny",
               period: dict[str, str] | None = None) -> dict[str, Any]:
    """A Consent of ``patient`` (R4): by default, an active opposition to the disclosure of their data."""
    provision: dict[str, Any] = {
        "type": kind,
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose"}]}],
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HOPERAT"}],
    }
    if period:
        provision["period"] = period
    body = {
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": SCOPES, "code": scope}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": "2026-01-15T10:00:00+01:00",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": provision,
    }
    Consent.model_validate(body)
    return body


def record(client: FlaskClient, body: dict[str, Any]) -> str:
    r = client.post("/fhir/Consent", json=body, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.json
    return str(r.json["id"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def share(anon: FlaskClient, mint: Mint, study: str, grantee: dict[str, Any]) -> Any:
    expires = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    return anon.post("/api/shares", headers=bearer(mint(SHARER)),
                     json={"study": study, "grantee": grantee, "permissions": ["read", "download"], "expires": expires})


def uids(answer: Any) -> set[str]:
    return {s["0020000D"]["Value"][0] for s in answer.json}


def iso(**delta: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(**delta)).isoformat()


# --- the rule ------------------------------------------------------------------------------------

#: (Consent changes, opposed?): what makes an opposition, per the rule of drimhub.sharing.consent.
RULE = [
    ({}, True),
    ({"period": {"start": iso(days=-1), "end": iso(days=30)}}, True),
    ({"period": {"start": "2020-01-01"}}, True),
    ({"kind": "permit"}, False),
    ({"status": "inactive"}, False),
    ({"status": "draft"}, False),
    ({"scope": "treatment"}, False),
    ({"period": {"end": "2021-12-31"}}, False),
    ({"period": {"start": iso(days=30)}}, False),
]


@pytest.mark.parametrize("change, opposed", RULE, ids=["deny", "deny-in-period", "deny-open-period", "permit",
                                                       "inactive", "draft", "treatment-scope", "period-past",
                                                       "period-future"])
def test_what_makes_an_opposition(app: Flask, client: FlaskClient, studies: Any, change: dict[str, Any],
                                  opposed: bool) -> None:
    inst, patient = studies["opposed"]
    record(client, opposition(patient, **change))
    with app.extensions["drimhub"].sessions() as session:
        reason = consent.refusal(session, inst.study)
        assert (reason is not None) == opposed
        assert consent.refusal(session, studies["other"][0].study) is None
        assert consent.refusal(session, "1.2.3.4") is None


def test_deleting_or_revising_the_consent_lifts_the_opposition(app: Flask, client: FlaskClient, studies: Any) -> None:
    inst, patient = studies["opposed"]
    body = opposition(patient)
    consent_id = record(client, body)
    put = client.put(f"/fhir/Consent/{consent_id}", json={**body, "id": consent_id, "status": "inactive"})
    assert put.status_code == 200
    with app.extensions["drimhub"].sessions() as session:
        assert consent.refusal(session, inst.study) is None
    second = record(client, body)
    with app.extensions["drimhub"].sessions() as session:
        assert f"Consent/{second}" in str(consent.refusal(session, inst.study))
    assert client.delete(f"/fhir/Consent/{second}").status_code == 204
    with app.extensions["drimhub"].sessions() as session:
        assert consent.refusal(session, inst.study) is None


# --- Consent as a FHIR resource -----------------------------------------------------------------

#: (query, found?) for one stored opposition: the R4 search parameters of Consent.
SEARCHES = [
    ("patient=Patient/{patient}", True), ("patient=Patient/nobody", False), ("status=active", True),
    ("status=inactive", False), (f"scope={SCOPES}|patient-privacy", True), ("scope=treatment", False),
    ("category=http://loinc.org|59284-0", True), ("date=2026-01-15", True), ("date=lt2025", False),
    ("action=disclose", True), ("action=access", False), ("purpose=HOPERAT", True),
    ("period=ge2020-01-01", False), ("_id={id}", True),
]


def test_consent_is_a_searchable_fhir_resource(client: FlaskClient, anon: FlaskClient, mint: Mint,
                                               studies: Any) -> None:
    _, patient = studies["opposed"]
    consent_id = record(client, opposition(patient))
    read = client.get(f"/fhir/Consent/{consent_id}")
    assert read.status_code == 200 and read.json["provision"]["type"] == "deny"
    Consent.model_validate(read.json)
    assert client.get(f"/fhir/Consent/{consent_id}/_history/1").status_code == 200
    for query, found in SEARCHES:
        bundle = client.get("/fhir/Consent?" + query.format(patient=patient, id=consent_id))
        assert bundle.status_code == 200, (query, bundle.json)
        assert [e["resource"]["id"] for e in bundle.json.get("entry", [])] == ([consent_id] if found else []), query
    included = client.get(f"/fhir/Consent?_id={consent_id}&_include=Consent:patient").json
    assert {e["resource"]["resourceType"] for e in included["entry"]} == {"Consent", "Patient"}
    org_b = bearer(mint("system/*.cruds", org="org-b"))
    assert anon.get(f"/fhir/Consent/{consent_id}", headers=org_b).status_code == 404  # its organisation's own


# --- enforcement ----------------------------------------------------------------------------------

def test_opposition_refuses_shares_with_the_reason(client: FlaskClient, anon: FlaskClient, mint: Mint,
                                                   studies: Any) -> None:
    inst, patient = studies["opposed"]
    consent_id = record(client, opposition(patient))
    for grantee in ({"link": True}, {"org": "org-b"}, {"user": "dr-house"}):
        r = share(anon, mint, inst.study, grantee)
        assert r.status_code == 403 and r.json["error"] == "forbidden"
        assert f"Consent/{consent_id}" in r.json["error_description"] and "opposed" in r.json["error_description"]
    assert share(anon, mint, studies["other"][0].study, {"link": True}).status_code == 201
    assert client.get("/api/shares", headers=bearer(mint(SHARER))).json[0]["study"] == studies["other"][0].study


def test_peer_cannot_see_nor_retrieve_an_opposed_study(client: FlaskClient, anon: FlaskClient, mint: Mint,
                                                       studies: Any) -> None:
    opposed, patient = studies["opposed"]
    other = studies["other"][0]
    peer = bearer(mint(PEER, org="node-b"))
    meta = f"/dicom-web/studies/{opposed.study}/metadata"
    wado = (f"/wado?requestType=WADO&studyUID={opposed.study}&seriesUID={opposed.series}&objectUID={opposed.sop}"
            "&contentType=application/dicom")
    assert uids(anon.get("/dicom-web/studies", headers=peer)) == {opposed.study, other.study}  # every organisation
    assert anon.get(meta, headers=peer).status_code == 200
    consent_id = record(client, opposition(patient))
    assert uids(anon.get("/dicom-web/studies", headers=peer)) == {other.study}
    assert anon.get(f"/dicom-web/instances?SOPInstanceUID={opposed.sop}", headers=peer).json == []
    for url in (meta, f"/dicom-web/studies/{opposed.study}", wado,
                f"/dicom-web/studies/{opposed.study}/series/{opposed.series}/instances/{opposed.sop}/frames/1"):
        r = anon.get(url, headers=peer)
        assert r.status_code == 403, url
        assert f"Consent/{consent_id}" in r.json["message"]
    assert [e["resource"]["id"] for e in anon.get("/fhir/ImagingStudy", headers=peer).json["entry"]] == [other.study]
    assert anon.get(f"/dicom-web/studies/{other.study}/metadata", headers=peer).status_code == 200
    # local care: the owning organisation still finds and reads the study
    assert uids(client.get("/dicom-web/studies")) == {opposed.study, other.study}
    assert client.get(meta).status_code == 200 and client.get(wado).status_code == 200


def test_peer_scope_reads_studies_only(anon: FlaskClient, mint: Mint, studies: Any) -> None:
    peer = bearer(mint("system/*.rs drimhub/peer", org="node-b"))
    assert anon.get("/fhir/Patient", headers=peer).json.get("entry", []) == []  # its own organisation's only
    assert anon.get("/fhir/ImagingStudy", headers=peer).json["total"] == 2


def test_opposition_stops_links_and_grants_given_before(client: FlaskClient, anon: FlaskClient, mint: Mint,
                                                        studies: Any) -> None:
    inst, patient = studies["opposed"]
    link = share(anon, mint, inst.study, {"link": True}).json
    assert share(anon, mint, inst.study, {"org": "org-b"}).status_code == 201
    cap, org_b = bearer(link["token"]), bearer(mint("system/*.cruds", org="org-b"))
    meta = f"/dicom-web/studies/{inst.study}/metadata"
    assert anon.get(meta, headers=cap).status_code == 200 and anon.get(meta, headers=org_b).status_code == 200
    record(client, opposition(patient))
    for url in (meta, "/dicom-web/studies", "/fhir/ImagingStudy"):
        r = anon.get(url, headers=cap)
        assert r.status_code == 403 and "opposed" in str(r.get_data(as_text=True)), url
    assert anon.get("/dicom-web/studies", headers=org_b).json == []
    assert anon.get(meta, headers=org_b).status_code == 404
    assert client.get(meta).status_code == 200


def test_a_permit_changes_nothing(client: FlaskClient, anon: FlaskClient, mint: Mint, studies: Any) -> None:
    inst, patient = studies["opposed"]
    record(client, opposition(patient, kind="permit"))
    record(client, opposition(patient, status="inactive"))
    assert share(anon, mint, inst.study, {"link": True}).status_code == 201
    peer = bearer(mint(PEER, org="node-b"))
    assert inst.study in uids(anon.get("/dicom-web/studies", headers=peer))
    assert anon.get(f"/dicom-web/studies/{inst.study}/metadata", headers=peer).status_code == 200


# --- who the Consent names --------------------------------------------------------------------------

ISSUER = "1.2.250.1.999.1"  # an OID issuer: the Patient identifier system is urn:oid:ISSUER


def store(anon: FlaskClient, token: str, inst: f.Instance) -> None:
    body, ctype = f.multipart([inst.data])
    r = anon.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype, **bearer(token)})
    assert r.status_code == 200, r.json


@pytest.fixture
def same_patient(app: Flask, anon: FlaskClient, mint: Mint) -> dict[str, tuple[f.Instance, str]]:
    """One patient (PAT-X, issued by ISSUER) with a study at org-a and one at org-b: two FHIR Patients."""
    found = {"org-a": f.ct(patient_id="PAT-X", IssuerOfPatientID=ISSUER, seed=3),
             "org-b": f.ct(patient_id="PAT-X", IssuerOfPatientID=ISSUER, seed=4)}
    for org, inst in found.items():
        store(anon, mint("system/*.cruds", org=org), inst)
    with app.extensions["drimhub"].sessions() as session:
        refs = dict(session.execute(select(Study.study_uid, Study.patient_ref)).all())
    assert refs[found["org-a"].study] != refs[found["org-b"].study]  # each organisation its own Patient
    return {org: (inst, str(refs[inst.study])) for org, inst in found.items()}


def by_identifier(system: str | None, value: str = "PAT-X") -> dict[str, Any]:
    body = opposition("unused")
    body["patient"] = {"identifier": {"value": value, **({"system": system} if system else {})}}
    return body


@pytest.mark.parametrize("named", ["patient", "identifier"])
def test_opposition_follows_the_patient_across_organisations(client: FlaskClient, anon: FlaskClient, mint: Mint,
                                                             same_patient: Any, named: str) -> None:
    (at_a, patient_a), (at_b, _) = same_patient["org-a"], same_patient["org-b"]
    peer = bearer(mint(PEER, org="node-c"))
    assert uids(anon.get("/dicom-web/studies", headers=peer)) == {at_a.study, at_b.study}
    body = opposition(patient_a) if named == "patient" else by_identifier(f"urn:oid:{ISSUER}")
    consent_id = record(client, body)  # org-a's Consent, naming org-a's Patient or the identifier
    assert uids(anon.get("/dicom-web/studies", headers=peer)) == set()
    for inst in (at_a, at_b):  # org-b's study of the same patient too
        r = anon.get(f"/dicom-web/studies/{inst.study}/metadata", headers=peer)
        assert r.status_code == 403 and f"Consent/{consent_id}" in r.json["message"]
    org_b = mint("system/*.cruds drimhub/share", org="org-b")
    r = anon.post("/api/shares", headers=bearer(org_b), json={"study": at_b.study, "grantee": {"link": True},
                                                              "permissions": ["read"], "expires": iso(days=1)})
    assert r.status_code == 403 and "opposed" in r.json["error_description"]
    assert anon.get(f"/dicom-web/studies/{at_b.study}/metadata", headers=bearer(org_b)).status_code == 200  # care


def test_another_issuer_or_a_study_without_issuer_is_another_patient(app: Flask, client: FlaskClient,
                                                                     anon: FlaskClient, mint: Mint) -> None:
    other_issuer = f.ct(patient_id="PAT-X", IssuerOfPatientID="1.2.250.1.999.2", seed=5)
    no_issuer = f.ct(patient_id="PAT-X", seed=6)
    store(anon, mint("system/*.cruds", org="org-b"), other_issuer)
    store(anon, mint("system/*.cruds", org="org-b"), no_issuer)
    record(client, by_identifier(f"urn:oid:{ISSUER}"))
    with app.extensions["drimhub"].sessions() as session:
        assert consent.refusal(session, other_issuer.study) is None
        assert consent.refusal(session, no_issuer.study) is None


def test_a_patient_identifier_added_later_opposes_too(app: Flask, client: FlaskClient, anon: FlaskClient,
                                                      mint: Mint, studies: Any) -> None:
    _, patient = studies["opposed"]  # a Patient without an issued identifier
    record(client, opposition(patient))
    elsewhere = f.ct(patient_id="PAT-NO", IssuerOfPatientID=ISSUER, seed=7)
    store(anon, mint("system/*.cruds", org="org-b"), elsewhere)
    with app.extensions["drimhub"].sessions() as session:
        assert consent.refusal(session, elsewhere.study) is None
    current = client.get(f"/fhir/Patient/{patient}").json
    current["identifier"] = [*current.get("identifier", []), {"system": f"urn:oid:{ISSUER}", "value": "PAT-NO"}]
    assert client.put(f"/fhir/Patient/{patient}", json=current).status_code == 200
    with app.extensions["drimhub"].sessions() as session:
        assert consent.refusal(session, elsewhere.study) is not None


@pytest.mark.parametrize("patient", [{"reference": "Patient/nobody"}, {"identifier": {"value": "PAT-X"}},
                                     {"display": "Jean Dupont"}])
def test_an_opposition_naming_no_one_is_refused(client: FlaskClient, studies: Any, patient: dict[str, Any]) -> None:
    body = {**opposition("unused"), "patient": patient}
    r = client.post("/fhir/Consent", json=body, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 422 and r.json["resourceType"] == "OperationOutcome"
    assert "name its patient" in r.json["issue"][0]["diagnostics"]
    assert client.post("/fhir/Consent", json={**body, "status": "draft"}).status_code == 201  # no effect: accepted
