"""DICOM stored over STOW becomes FHIR at once: ImagingStudy, Patient, DiagnosticReport (issue 4).

Through the real STOW route and database (SQLite and PostgreSQL); the FHIR side is read with the
services (``imagingstudy.read``, ``resources``) and over ``/fhir`` where the routes exist.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import dicomfactory as f
from drimhub.errors import NotFound
from drimhub.fhir import imagingstudy, resources
from drimhub.mappings.identifiers import patient_id_system
from drimhub.store.access import Access
from drimhub.store.engine import write_session
from drimhub.store.models import FhirResource, Study

ORG = "org-a"
IPP_SYSTEM = patient_id_system("CHU-TEST")
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Replacing an instance (other bytes, same SOP Instance UID) updates its report."""
    return {"STOW_DUPLICATE_POLICY": "overwrite"}


def stow(client: FlaskClient, *items: f.Instance) -> None:
    body, ctype = f.multipart([i.data for i in items])
    r = client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
    assert r.status_code == 200, r.json


def session(app: Flask) -> Any:
    return app.extensions["drimhub"].sessions()


def patients(app: Flask, org: str = ORG) -> list[dict[str, Any]]:
    with session(app) as s:
        found = s.query(FhirResource).filter_by(type="Patient", org=org, deleted=False).all()
        return [resources.Stored.of(r).content for r in found]


def reports(app: Flask, sop: str) -> list[resources.Stored]:
    with session(app) as s:
        return resources.find_by_identifier(s, "DiagnosticReport", "urn:dicom:uid", f"urn:oid:{sop}", ORG)


def study_of(app: Flask, uid: str) -> dict[str, Any]:
    with session(app) as s:
        return imagingstudy.read(s, uid, Access.of_org(ORG), "http://x/fhir")


def idents(resource: dict[str, Any]) -> set[tuple[str | None, str]]:
    return {(i.get("system"), i["value"]) for i in resource.get("identifier", [])}


def _observer(name: str, code: str) -> Dataset:
    item = Dataset()
    item.VerifyingObserverName = name
    item.VerifyingOrganization = "CH de Bretagne Sud"
    item.VerificationDateTime = "20240316101500+0100"
    ident = Dataset()
    ident.CodeValue, ident.CodingSchemeDesignator, ident.CodeMeaning = code, "LN", name
    item.VerifyingObserverIdentificationCodeSequence = Sequence([ident])
    return item


def test_ct_study_is_an_imaging_study_with_its_patient(app: Flask, client: FlaskClient) -> None:
    study, series = f.new_uid(), f.new_uid()
    items = [f.ct(study, series, instance_number=n) for n in (2, 1, 3)]
    stow(client, *items)
    resource = study_of(app, study)
    ImagingStudy.model_validate(resource)
    assert resource["id"] == study and resource["numberOfInstances"] == 3
    assert [i["number"] for i in resource["series"][0]["instance"]] == [1, 2, 3]
    ref = resource["subject"]["reference"]
    [patient] = patients(app)
    Patient.model_validate(patient)
    assert ref == f"Patient/{patient['id']}"
    assert (IPP_SYSTEM, "PAT001") in idents(patient)
    assert patient["name"][0]["family"] == "DUPONT" and patient["gender"] == "male"
    r = client.get(f"/fhir/ImagingStudy/{study}")
    assert r.status_code == 200 and r.json == resource
    endpoint = client.get("/fhir/Endpoint/dicomweb")
    assert endpoint.status_code == 200, endpoint.json
    Endpoint.model_validate(endpoint.json)
    assert endpoint.json["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint.json["address"].endswith("/dicom-web") and not endpoint.json["address"].endswith("/")


def test_another_org_does_not_see_the_study(app: Flask, client: FlaskClient) -> None:
    study = f.new_uid()
    stow(client, f.ct(study))
    with session(app) as s, pytest.raises(NotFound):
        imagingstudy.read(s, study, Access.of_org("org-b"), "http://x/fhir")


def test_ins_and_ipp_make_one_patient_and_a_second_study_links_to_it(app: Flask, client: FlaskClient) -> None:
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "1580175123456", "1.2.250.1.213.1.4.10"
    stow(client, f.ct(OtherPatientIDsSequence=Sequence([other])))
    stow(client, f.ct())  # same IPP, another study
    [patient] = patients(app)
    assert {(IPP_SYSTEM, "PAT001"), (INS_TEST, "1580175123456")} <= idents(patient)
    ins = next(i for i in patient["identifier"] if i["system"] == INS_TEST)
    assert ins["type"]["coding"][0]["code"] == "INS-NIR" and ins["use"] == "official"
    with session(app) as s:
        refs = set(s.query(Study.patient_ref).all())
    assert refs == {(patient["id"],)}


def test_a_patient_sent_first_over_fhir_is_linked_not_duplicated(app: Flask, client: FlaskClient) -> None:
    sent = {"resourceType": "Patient", "identifier": [{"system": IPP_SYSTEM, "value": "PAT001"}],
            "name": [{"family": "Dupont", "given": ["Jérôme"]}], "birthDate": "1958-01-01"}
    res = app.extensions["drimhub"]
    with write_session(res.sessions) as s:
        created = resources.create(s, res.blobs, sent, ORG)
    study = f.new_uid()
    stow(client, f.ct(study))
    [patient] = patients(app)
    assert patient["id"] == created.id
    assert patient["name"] == [{"family": "Dupont", "given": ["Jérôme"]}]  # the RIS's demographics win
    assert study_of(app, study)["subject"]["reference"] == f"Patient/{created.id}"


def test_another_org_gets_its_own_patient(app: Flask, client: FlaskClient, mint: Any) -> None:
    stow(client, f.ct())
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint(org='org-b')}"
    stow(other, f.ct())
    assert len(patients(app)) == 1 and len(patients(app, "org-b")) == 1
    assert patients(app)[0]["id"] != patients(app, "org-b")[0]["id"]


def test_encapsulated_pdf_is_a_final_report_with_its_pdf(app: Flask, client: FlaskClient) -> None:
    doc = f.pdf(DocumentTitle="Compte rendu TDM")
    stow(client, doc)
    [report] = reports(app, doc.sop)
    DiagnosticReport.model_validate(report.content)
    assert report.content["status"] == "final"
    assert report.content["imagingStudy"] == [{"reference": f"ImagingStudy/{doc.study}"}]
    [form] = report.content["presentedForm"]
    assert form["contentType"] == "application/pdf" and form["title"] == "Compte rendu TDM"
    binary = form["url"].removeprefix("Binary/")
    with session(app) as s:
        stored = resources.read(s, "Binary", binary, Access.of_org(ORG))
    data = app.extensions["drimhub"].blobs.path(stored.blob_key).read_bytes()
    assert data.startswith(b"%PDF-") and data.endswith(b"%%EOF\n")
    assert form["size"] == len(data) and form["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert report.content["subject"]["reference"] == f"Patient/{patients(app)[0]['id']}"


@pytest.mark.parametrize("completion, verification, status", [
    pytest.param("COMPLETE", "VERIFIED", "final", id="complete-verified-final"),
    pytest.param("PARTIAL", "VERIFIED", "preliminary", id="partial-verified-preliminary"),
    pytest.param("PARTIAL", "UNVERIFIED", "partial", id="partial-unverified-partial"),
])
def test_sr_is_a_report_with_status_and_interpreter(app: Flask, client: FlaskClient, completion: str,
                                                    verification: str, status: str) -> None:
    doc = f.sr(CompletionFlag=completion, VerificationFlag=verification,
               VerifyingObserverSequence=Sequence([_observer("KERBRAT^Anne^^Dr", "10001")]))
    stow(client, doc)
    [report] = reports(app, doc.sop)
    content = report.content
    DiagnosticReport.model_validate(content)
    assert content["status"] == status
    assert content["conclusion"] == "Pas d'anomalie décelée."
    assert content["resultsInterpreter"][0]["display"] == "Dr Anne KERBRAT"
    assert content["resultsInterpreter"][0]["identifier"]["value"] == "10001"
    assert content["presentedForm"][0]["contentType"] == "text/html"


def test_same_sr_again_changes_nothing_and_a_replacement_updates_the_report(
        app: Flask, client: FlaskClient) -> None:
    study, series, sop = f.new_uid(), f.new_uid(), f.new_uid()
    draft = f.sr(study, series, sop, CompletionFlag="PARTIAL", VerificationFlag="UNVERIFIED")
    stow(client, draft)
    stow(client, draft)  # the same bytes: already stored
    assert client.delete(f"/dicom-web/studies/{study}").status_code == 204
    stow(client, draft)  # stored anew after a DICOM delete: same content, same report version
    [first] = reports(app, sop)
    assert first.version == 1 and first.content["status"] == "partial"
    stow(client, f.sr(study, series, sop, CompletionFlag="COMPLETE", VerificationFlag="VERIFIED"))  # replaced
    [final] = reports(app, sop)
    assert final.id == first.id and final.version == 2 and final.content["status"] == "final"
