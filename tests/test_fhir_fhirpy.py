"""Issue 4's scenario with a real FHIR client (fhirpy) against a live server (SQLite and PostgreSQL).

A RIS creates a Patient and a final DiagnosticReport with its PDF; the modality stores the study
over STOW; a referring physician finds the report from the study
(``ImagingStudy?patient=…&_revinclude=DiagnosticReport:imaging-study``) and downloads the PDF
byte for byte; a hub pages through 250 studies and 250 reports by ``next`` links (``_count=7``),
seeing each once, in order.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle
from fhirpy import SyncFHIRClient

import dicomfactory as f
from conftest import Mint
from drimhub.mappings.identifiers import patient_id_system

IPP = patient_id_system("CHU-TEST")
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
COUNT = 250


@pytest.fixture
def app_config() -> dict[str, Any]:
    """No fixed base URL: the node names itself by the live server's address (its ``next``
    links must lead back to it); tokens keep the test issuer."""
    return {"BASE_URL": None, "ISSUER": "http://localhost"}


@pytest.fixture
def fhir(live_server: str, mint: Mint) -> SyncFHIRClient:
    return SyncFHIRClient(f"{live_server}/fhir", authorization=f"Bearer {mint(audience=live_server)}")


def stow(live_server: str, token: str, *items: f.Instance) -> None:
    body, ctype = f.multipart([i.data for i in items])
    r = requests.post(f"{live_server}/dicom-web/studies", data=body, timeout=120,
                      headers={"Content-Type": ctype, "Accept": "application/dicom+json", "Authorization": token})
    assert r.status_code == 200, r.text


def test_report_found_from_its_study_and_its_pdf_downloaded(fhir: SyncFHIRClient, live_server: str) -> None:
    patient = fhir.resource("Patient", identifier=[{"system": IPP, "value": "PAT-F"}],
                            name=[{"family": "Durand", "given": ["Anne"]}], gender="female")
    patient.save()
    study = f.ct(patient_id="PAT-F", patient_name="DURAND^Anne", accession="ACC-F")
    stow(live_server, fhir.authorization, study)
    report = fhir.resource(
        "DiagnosticReport", status="final", subject=patient.to_reference(),
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        code={"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
        imagingStudy=[{"reference": f"ImagingStudy/{study.study}"}], issued="2024-03-16T10:00:00Z",
        presentedForm=[{"contentType": "application/pdf", "data": base64.b64encode(PDF).decode()}])
    report.save()

    search = (fhir.resources("ImagingStudy").search(patient=f"Patient/{patient.id}")
              .revinclude("DiagnosticReport", "imaging-study"))
    bundle = search.fetch_raw()
    Bundle.model_validate(bundle)
    found = {(e.resource.resourceType, e.resource.id): e.search.mode for e in bundle.entry}
    assert found == {("ImagingStudy", study.study): "match", ("DiagnosticReport", report.id): "include"}
    served = next(e.resource for e in bundle.entry if e.resource.resourceType == "DiagnosticReport")
    url = served.presentedForm[0].url
    assert url.startswith("Binary/") and "data" not in served.presentedForm[0]
    pdf = requests.get(f"{fhir.url}/{url}", headers={"Authorization": fhir.authorization, "Accept": "application/pdf"},
                       timeout=30)
    assert pdf.status_code == 200 and pdf.headers["Content-Type"].startswith("application/pdf")
    assert pdf.content == PDF


def test_paging_through_250_studies_and_250_reports(fhir: SyncFHIRClient, live_server: str) -> None:
    studies = [f.ct(rows=4, cols=4, study_date=f"202001{i % 28 + 1:02d}", accession=f"A{i}") for i in range(COUNT)]
    stow(live_server, fhir.authorization, *studies)
    started = {s.study: f"{s_date[:4]}-{s_date[4:6]}-{s_date[6:]}" for s, s_date in
               ((s, f"202001{i % 28 + 1:02d}") for i, s in enumerate(studies))}
    first = fhir.resources("ImagingStudy").sort("-started").limit(7).fetch_raw()
    Bundle.model_validate(first)
    assert len(first.entry) == 7 and "_cursor=" in next(link.url for link in first.link if link.relation == "next")
    seen = [s.id for s in fhir.resources("ImagingStudy").sort("-started").limit(7)]
    assert len(seen) == len(set(seen)) == COUNT and set(seen) == set(started)
    assert [started[uid] for uid in seen] == sorted(started.values(), reverse=True)

    entries = [{"resource": {"resourceType": "DiagnosticReport", "status": "final", "issued": f"2024-02-{i % 28 + 1:02d}T10:00:00Z",
                             "identifier": [{"system": "urn:ris", "value": f"R{i}"}],
                             "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
                             "imagingStudy": [{"reference": f"ImagingStudy/{studies[i].study}"}]},
                "request": {"method": "POST", "url": "DiagnosticReport"}} for i in range(COUNT)]
    r = requests.post(fhir.url, json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, timeout=120,
                      headers={"Authorization": fhir.authorization, "Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    reports = list(fhir.resources("DiagnosticReport").sort("issued", "-_id").limit(7))
    keys = [(rep.issued, rep.id) for rep in reports]
    assert len(keys) == len(set(keys)) == COUNT
    assert keys == sorted(sorted(keys, key=lambda k: k[1], reverse=True), key=lambda k: k[0])
    in_order = [rep.identifier[0].value for rep in fhir.resources("DiagnosticReport").limit(7)]
    assert in_order == [f"R{i}" for i in range(COUNT)]  # default order: as created
