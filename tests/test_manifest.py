"""KOS manifests (DRIM-M / IHE XDS-I.b), their MADO DocumentReference and the KOS-SOPInstanceUID check.

The KOS is checked against the PS3.3 module tables it claims (``drimhub.mappings.kos.ATTRIBUTE_TYPES``),
its Retrieve URLs are fetched from a live server, and the DocumentReference is searched with every
MADO parameter, with right and wrong values.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from fhir.resources.R4B.documentreference import DocumentReference
from flask import Flask
from flask.testing import FlaskClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

import dicomfactory as f
from drimhub.mappings import kos
from drimhub.mappings.kos import ATTRIBUTE_TYPES, KOS_SOP_CLASS, REQUEST_ITEM_TYPES
from drimhub.server.auth import tokens
from drimhub.server.auth.policy import SHARE_SCOPE
from drimhub.store.network import Manifest

PUBLISHER = f"system/*.cruds {SHARE_SCOPE}"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
ACCESSION_ISSUER = "1.2.250.1.999.1.2"
PLACER_ISSUER = "1.2.250.1.999.1.3"


@dataclass
class Study:
    uid: str
    series: dict[str, list[f.Instance]]

    @property
    def instances(self) -> list[f.Instance]:
        return [i for items in self.series.values() for i in items]


def _issuer(oid: str) -> Sequence:
    item = Dataset()
    item.UniversalEntityID, item.UniversalEntityIDType = oid, "ISO"
    return Sequence([item])


def _order(accession: str) -> Sequence:
    """A Request Attributes item: the placer order number with its issuer (an OID), as a RIS sends it."""
    item = Dataset()
    item.AccessionNumber, item.RequestedProcedureID = accession, "RP-7"
    item.PlacerOrderNumberImagingServiceRequest = "PO-42"
    item.OrderPlacerIdentifierSequence = _issuer(PLACER_ISSUER)
    return Sequence([item])


def make_study(accession: str = "ACC-KOS-1", patient_id: str = "1580101123456") -> Study:
    uid, ct_series, doc_series = f.new_uid(), f.new_uid(), f.new_uid()
    common: dict[str, Any] = {"accession": accession, "patient_id": patient_id, "IssuerOfPatientID": INS_TEST_OID,
                              "IssuerOfAccessionNumberSequence": _issuer(ACCESSION_ISSUER)}
    cts = [f.ct(uid, ct_series, instance_number=n, seed=n, BodyPartExamined="CHEST",
                RequestAttributesSequence=_order(accession), **common) for n in (2, 1)]
    docs = [f.pdf(uid, doc_series, series_number=2, **common)]
    return Study(uid, {ct_series: cts, doc_series: docs})


def stow(client: FlaskClient, study: Study) -> None:
    body, ctype = f.multipart([i.data for i in study.instances])
    headers = {"Content-Type": ctype, "Accept": "application/dicom+json"}
    r = client.post("/dicom-web/studies", data=body, headers=headers)
    assert r.status_code == 200, r.json


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def study(client: FlaskClient) -> Study:
    stored = make_study()
    stow(client, stored)
    return stored


@pytest.fixture
def publisher(mint: Any) -> dict[str, str]:
    return auth(mint(scope=PUBLISHER))


def publish(client: FlaskClient, uid: str, headers: dict[str, str]) -> dict[str, Any]:
    r = client.post(f"/api/studies/{uid}/manifest", headers=headers)
    assert r.status_code == 201, r.json
    assert r.headers["Location"] == r.json["url"]
    return dict(r.json)


def kos_of(client: FlaskClient, uid: str) -> Dataset:
    r = client.get(f"/api/studies/{uid}/manifest")
    assert r.status_code == 200 and r.mimetype == "application/dicom"
    assert r.data[128:132] == b"DICM"
    return dcmread(io.BytesIO(r.data))


# --- the KOS itself -------------------------------------------------------------------------

def _present(ds: Dataset, keyword: str, kind: str) -> None:
    if kind in ("1", "1C"):
        assert keyword in ds and ds[keyword].value not in (None, "", []), f"Type {kind} {keyword} missing or empty"
    elif kind == "2":
        assert keyword in ds, f"Type 2 {keyword} missing"


def test_kos_is_a_key_object_selection_manifest(client: FlaskClient, study: Study, publisher: dict[str, str]) -> None:
    published = publish(client, study.uid, publisher)
    assert published["study"] == study.uid
    sop = published["sopInstanceUID"]
    assert published["url"] == f"http://localhost/api/studies/{study.uid}/manifests/{sop}"
    ds = kos_of(client, study.uid)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == KOS_SOP_CLASS
    assert ds.SOPInstanceUID == published["sopInstanceUID"] and ds.SOPInstanceUID.startswith("2.25.")
    assert ds.StudyInstanceUID == study.uid and ds.Modality == "KO"
    assert ds.SeriesInstanceUID not in study.series
    for module, keyword, kind in ATTRIBUTE_TYPES:  # every condition of a 1C holds for this study
        if kind != "3":
            _present(ds, keyword, kind)
    # Patient and study as stored: the INS issuer kept
    assert (ds.PatientID, ds.IssuerOfPatientID, ds.PatientSex) == ("1580101123456", INS_TEST_OID, "M")
    assert str(ds.PatientName) == "DUPONT^Jérôme" and ds.AccessionNumber == "ACC-KOS-1"
    assert ds.IssuerOfAccessionNumberSequence[0].UniversalEntityID == ACCESSION_ISSUER
    assert ds.Manufacturer == "drimhub"
    request, = ds.ReferencedRequestSequence
    for keyword, kind in REQUEST_ITEM_TYPES:
        _present(request, keyword, kind)
    assert (request.StudyInstanceUID, request.AccessionNumber) == (study.uid, "ACC-KOS-1")
    assert request.IssuerOfAccessionNumberSequence[0].UniversalEntityID == ACCESSION_ISSUER
    # the placer order number with its issuer, as stored (DRIM-M)
    assert (request.PlacerOrderNumberImagingServiceRequest, request.RequestedProcedureID) == ("PO-42", "RP-7")
    assert request.OrderPlacerIdentifierSequence[0].UniversalEntityID == PLACER_ISSUER
    assert request.FillerOrderNumberImagingServiceRequest == ""
    # evidence: one study item, one series item per series with its WADO-RS URL, every instance
    evidence, = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == study.uid
    series = {item.SeriesInstanceUID: item for item in evidence.ReferencedSeriesSequence}
    assert set(series) == set(study.series) and len(evidence.ReferencedSeriesSequence) == len(study.series)
    location = kos.retrieve_location_uid(None, "http://localhost")  # no DRIMHUB_NODE_UID: from the base URL
    assert location.startswith("2.25.") and kos.is_uid(location)
    for uid, items in study.series.items():
        assert series[uid].RetrieveURL == f"http://localhost/dicom-web/studies/{study.uid}/series/{uid}"
        assert series[uid].RetrieveLocationUID == location
        assert {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in series[uid].ReferencedSOPSequence} \
            == {(i.sop_class, i.sop) for i in items}
    # content tree: TID 2010, title 113030 Manifest, one IMAGE / COMPOSITE item per instance
    assert (ds.ValueType, ds.ContinuityOfContent) == ("CONTAINER", "SEPARATE")
    title, = ds.ConceptNameCodeSequence
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113030", "DCM", "Manifest")
    template, = ds.ContentTemplateSequence
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "2010")
    kinds = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: item.ValueType for item in ds.ContentSequence}
    assert all(item.RelationshipType == "CONTAINS" for item in ds.ContentSequence)
    assert kinds == {i.sop: ("IMAGE" if i.sop_class != f.ENCAPSULATED_PDF else "COMPOSITE") for i in study.instances}
    check_type_1(ds)


#: Type 1 attributes of the Key Object Selection Document IOD (PS3.3 A.35.4), written out by hand from
#: the module tables, independently of kos.ATTRIBUTE_TYPES: top level, then in the items of the sequences.
TYPE_1 = {
    "": ["StudyInstanceUID",  # General Study C.7.2.1
         "Modality", "SeriesInstanceUID", "SeriesNumber",  # Key Object Document Series C.17.6.1
         "InstanceNumber", "ContentDate", "ContentTime", "CurrentRequestedProcedureEvidenceSequence",  # C.17.6.2
         "ValueType", "ConceptNameCodeSequence",  # SR Document Content C.17.3 (root)
         "SOPClassUID", "SOPInstanceUID"],  # SOP Common C.12.1
    "CurrentRequestedProcedureEvidenceSequence": ["StudyInstanceUID", "ReferencedSeriesSequence"],  # C.17-3
    "ReferencedSeriesSequence": ["SeriesInstanceUID", "ReferencedSOPSequence"],  # Table C.17-3a
    "ReferencedSOPSequence": ["ReferencedSOPClassUID", "ReferencedSOPInstanceUID"],  # Table 10-11
    "ConceptNameCodeSequence": ["CodeValue", "CodingSchemeDesignator", "CodeMeaning"],  # Table 8.8-1
    "ContentSequence": ["RelationshipType", "ValueType", "ReferencedSOPSequence"],  # C.17.3, IMAGE/COMPOSITE
    "ReferencedRequestSequence": ["StudyInstanceUID"],  # Table C.17-3c
    "ContentTemplateSequence": ["MappingResource", "TemplateIdentifier"],  # Table C.17.3-1 (1C, present)
}
#: Type 2 attributes (present, possibly empty) of the same modules.
TYPE_2 = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber", "ReferencedPerformedProcedureStepSequence",
          "Manufacturer"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_kos_passes_dciodvfy(client: FlaskClient, study: Study, publisher: dict[str, str], tmp_path: Any) -> None:
    """An independent validator (David Clunie's dciodvfy) finds no error in the KOS: only the warning
    that RetrieveURL, which XDS-I.b and DRIM-M require, is an extension of older IOD tables."""
    publish(client, study.uid, publisher)
    r = client.get(f"/api/studies/{study.uid}/manifest")
    (tmp_path / "kos.dcm").write_bytes(r.data)
    checked = subprocess.run(["dciodvfy", str(tmp_path / "kos.dcm")], capture_output=True, text=True, timeout=60)
    report = checked.stdout + checked.stderr
    assert report.splitlines()[0] == "KeyObjectSelectionDocument", report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report


def check_type_1(ds: Dataset, where: str = "") -> None:
    """Every Type 1 attribute of :data:`TYPE_1` present with a value, at every level, recursively."""
    for keyword in TYPE_1.get(where, []):
        assert keyword in ds and ds[keyword].value not in (None, "", []), f"Type 1 {keyword} in {where or 'root'}"
    if not where:
        assert all(keyword in ds for keyword in TYPE_2), [k for k in TYPE_2 if k not in ds]
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                check_type_1(item, element.keyword)


def test_kos_of_a_study_known_by_its_uids_only() -> None:
    """Nothing but UIDs stored: Type 2 attributes empty, no Referenced Request (no accession: 1C not met)."""
    image = kos.ManifestInstance("1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.2", True, 1)
    study = kos.ManifestStudy("1.2.3", Dataset(), [kos.ManifestSeries("1.2.3.4", [image]),
                                                   kos.ManifestSeries("1.2.3.5", [])])
    ds = dcmread(io.BytesIO(kos.encode(kos.manifest(study, dicomweb_base="https://node.example/dicom-web/",
                                                    sop_uid="2.25.1", series_uid="2.25.2",
                                                    created=datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)))))
    for _module, keyword, kind in ATTRIBUTE_TYPES:
        if kind in ("1", "2"):
            _present(ds, keyword, kind)
    assert ds.PatientName == "" and ds.AccessionNumber == "" and "ReferencedRequestSequence" not in ds
    assert (ds.ContentDate, ds.ContentTime, ds.TimezoneOffsetFromUTC) == ("20300102", "030405", "+0000")
    series, = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence  # the empty one left out
    assert series.RetrieveURL == "https://node.example/dicom-web/studies/1.2.3/series/1.2.3.4"
    assert "RetrieveLocationUID" not in series  # none given
    check_type_1(ds)
    with pytest.raises(ValueError, match="no instance"):
        kos.manifest(kos.ManifestStudy("1.2.3", Dataset(), []), dicomweb_base="x", sop_uid="2.25.1",
                     series_uid="2.25.2", created=datetime.now(timezone.utc))


def test_publication_rules(client: FlaskClient, anon: FlaskClient, study: Study, mint: Any,
                           publisher: dict[str, str]) -> None:
    url = f"/api/studies/{study.uid}/manifest"
    assert client.get(url).status_code == 404  # nothing published yet
    assert anon.post(url).status_code == 401
    refused = client.post(url)  # ImagingStudy rights, no share scope
    assert refused.status_code == 403 and refused.json["error"] == "insufficient_scope"
    assert client.post(url, headers=auth(mint(scope=PUBLISHER, org="org-b"))).status_code == 404
    assert client.post(f"/api/studies/{f.new_uid()}/manifest", headers=publisher).status_code == 404
    publish(client, study.uid, publisher)
    assert client.get(url, headers=auth(mint(org="org-b"))).status_code == 404  # another organisation's study
    assert client.get(url, headers=auth(mint(scope="system/Patient.rs"))).status_code == 403


def test_opposition_refuses_publication(client: FlaskClient, study: Study, publisher: dict[str, str]) -> None:
    patient = client.get(f"/fhir/ImagingStudy/{study.uid}").json["subject"]["reference"]
    consent = {"resourceType": "Consent", "status": "active",
               "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                     "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
               "patient": {"reference": patient},
               "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                          "code": "OPTOUT"}]},
               "provision": {"type": "deny"}}
    assert client.post("/fhir/Consent", json=consent, headers={"Content-Type": "application/fhir+json"}) \
        .status_code == 201
    r = client.post(f"/api/studies/{study.uid}/manifest", headers=publisher)
    assert r.status_code == 403 and "oppos" in r.json["error_description"]


@pytest.mark.parametrize("app_config", [{"BASE_URL": None}])
def test_retrieve_urls_answer(app: Flask, client: FlaskClient, live_server: str) -> None:
    """The node's own URLs come from the request (no BASE_URL): the KOS names the live server."""
    stored = make_study()
    stow(client, stored)
    claims = tokens.access_token_claims(issuer=live_server, audience=live_server, subject="tester",
                                        client_id="test-client", scope=PUBLISHER, org="org-a", ttl=600)
    headers = auth(tokens.sign(claims, app.extensions["drimhub"].signing_key))
    r = requests.post(f"{live_server}/api/studies/{stored.uid}/manifest", headers=headers, timeout=10)
    assert r.status_code == 201, r.text
    kos = dcmread(io.BytesIO(requests.get(r.json()["url"], headers=headers, timeout=10).content))
    urls = [item.RetrieveURL for item in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence]
    assert len(urls) == 2 and all(u.startswith(f"{live_server}/dicom-web/studies/{stored.uid}/series/") for u in urls)
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    for url, (series_uid, items) in zip(sorted(urls), sorted(stored.series.items(), key=lambda kv: kv[0])):
        answer = requests.get(url, headers={**headers, **accept}, timeout=10)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("multipart/related")
        parts = [dcmread(io.BytesIO(p)) for p in _parts(answer)]
        assert sorted(p.SOPInstanceUID for p in parts) == sorted(i.sop for i in items)
        assert {p.SeriesInstanceUID for p in parts} == {series_uid}


def _parts(response: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related answer."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    out = []
    for chunk in response.content.split(b"--" + boundary)[1:-1]:
        out.append(chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n"))
    return out


# --- the MADO DocumentReference ---------------------------------------------------------------

def test_document_reference_found_by_mado_parameters(client: FlaskClient, study: Study,
                                                     publisher: dict[str, str]) -> None:
    published = publish(client, study.uid, publisher)
    sop = published["sopInstanceUID"]
    assert published["documentReference"] == f"DocumentReference/{sop}"
    doc = client.get(f"/fhir/DocumentReference/{sop}").json
    DocumentReference.model_validate(doc)
    assert doc["status"] == "current" and doc["type"]["coding"][0]["code"] == "18748-4"
    assert doc["masterIdentifier"] == {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{sop}"}
    subject = client.get(f"/fhir/ImagingStudy/{study.uid}").json["subject"]
    assert doc["subject"] == subject
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] == "application/dicom" and attachment["url"] == published["url"]
    assert attachment["size"] == len(client.get(f"/api/studies/{study.uid}/manifest").data)
    related = doc["context"]["related"]
    assert related[0]["reference"] == f"ImagingStudy/{study.uid}"
    study_identifier = client.get(f"/fhir/ImagingStudy/{study.uid}").json["identifier"][0]
    assert related[0]["identifier"] == study_identifier  # as the ImagingStudy writes it
    assert (study_identifier["system"], study_identifier["value"]) == ("urn:dicom:uid", f"urn:oid:{study.uid}")
    assert {c["coding"][0]["code"] for c in doc["context"]["event"]} == {"CT", "DOC"}
    assert doc["context"]["period"]["start"].startswith("2024-")  # StudyDate/StudyTime
    assert doc["category"][0]["coding"][0]["code"] == "Medical-Imaging"
    assert "language" not in attachment and "facilityType" not in doc["context"]
    extensions = {(e["url"].rsplit(".", 1)[-1], c.get("code")) for e in doc["extension"]
                  for c in e["valueCodeableConcept"]["coding"]}
    assert extensions == {("modality", "CT"), ("modality", "DOC"), ("bodySite", "816094009")}  # CHEST, Annex L

    def found(query: str) -> list[str]:
        r = client.get(f"/fhir/DocumentReference?{query}")
        assert r.status_code == 200, r.json
        return [e["resource"]["id"] for e in r.json.get("entry", [])]

    right = {"study-instance-uid": study.uid, "accession-number": "ACC-KOS-1", "modality": "CT",
             "bodysite": "http://snomed.info/sct|816094009",
             "patient": subject["reference"], "subject": subject["reference"], "status": "current",
             "type": "http://loinc.org|18748-4", "identifier": f"urn:oid:{sop}",
             "date": f"ge{doc['date'][:10]}"}
    wrong = {"study-instance-uid": f.new_uid(), "accession-number": "ACC-OTHER", "modality": "MR",
             "bodysite": "http://snomed.info/sct|69536005",
             "patient": "Patient/nobody", "subject": "Patient/nobody", "status": "superseded",
             "type": "http://loinc.org|11111-1", "identifier": f"urn:oid:{f.new_uid()}", "date": "lt2000-01-01"}
    for name in right:
        assert found(f"{name}={right[name]}") == [sop], name
        assert found(f"{name}={wrong[name]}") == [], name
    # the study identifier by its urn:oid: form and its system, as by its bare UID
    assert found(f"study-instance-uid=urn:oid:{study.uid}") == [sop]
    assert found(f"study-instance-uid=urn:dicom:uid|urn:oid:{study.uid}") == [sop]
    assert found(f"study-instance-uid=urn:oid:{f.new_uid()}") == []
    assert found(f"study-instance-uid={study.uid}&accession-number=ACC-KOS-1&modality=CT") == [sop]
    assert found(f"study-instance-uid={study.uid}&accession-number=ACC-KOS-1&modality=MR") == []
    assert found(f"accession-number={ACCESSION_ISSUER}|ACC-KOS-1") == []  # the issuer system is urn:oid:
    assert found(f"accession-number=urn:oid:{ACCESSION_ISSUER}|ACC-KOS-1") == [sop]
    # written by the node only
    assert client.post("/fhir/DocumentReference", json=doc,
                       headers={"Content-Type": "application/fhir+json"}).status_code == 405
    assert client.delete(f"/fhir/DocumentReference/{sop}").status_code == 405


def test_publishing_again_supersedes(client: FlaskClient, study: Study, publisher: dict[str, str]) -> None:
    first = publish(client, study.uid, publisher)["sopInstanceUID"]
    second = publish(client, study.uid, publisher)["sopInstanceUID"]
    assert kos_of(client, study.uid).SOPInstanceUID == second
    assert client.get(f"/fhir/DocumentReference/{first}").json["status"] == "superseded"
    for sop in (first, second):  # each DocumentReference serves its own KOS, its size and SHA-1 those bytes
        attachment = client.get(f"/fhir/DocumentReference/{sop}").json["content"][0]["attachment"]
        assert attachment["url"] == f"http://localhost/api/studies/{study.uid}/manifests/{sop}"
        r = client.get(attachment["url"])
        assert r.status_code == 200 and r.mimetype == "application/dicom"
        assert dcmread(io.BytesIO(r.data)).SOPInstanceUID == sop
        assert attachment["size"] == len(r.data)
        assert attachment["hash"] == base64.b64encode(hashlib.sha1(r.data).digest()).decode()
    assert client.get(f"/api/studies/{study.uid}/manifests/{f.new_uid()}").status_code == 404
    other = make_study(accession="ACC-KOS-3")
    stow(client, other)
    assert client.get(f"/api/studies/{other.uid}/manifests/{first}").status_code == 404  # not that study's
    new = client.get(f"/fhir/DocumentReference/{second}").json
    assert new["relatesTo"] == [{"code": "replaces", "target": {"reference": f"DocumentReference/{first}"}}]
    current = client.get(f"/fhir/DocumentReference?study-instance-uid={study.uid}&status=current").json
    assert [e["resource"]["id"] for e in current["entry"]] == [second]


def test_document_reference_seen_as_its_study(client: FlaskClient, anon: FlaskClient, study: Study, mint: Any,
                                              publisher: dict[str, str]) -> None:
    """A peer node's token and a grantee find and read the manifest's DocumentReference as they see the
    study; another organisation does not; a patient's opposition hides it from the peer."""
    sop = publish(client, study.uid, publisher)["sopInstanceUID"]
    query = f"/fhir/DocumentReference?study-instance-uid={study.uid}"

    def sees(headers: dict[str, str]) -> tuple[bool, bool]:
        read, search = client.get(f"/fhir/DocumentReference/{sop}", headers=headers), client.get(query, headers=headers)
        assert read.status_code in (200, 404) and search.status_code == 200, (read.json, search.json)
        return read.status_code == 200, [e["resource"]["id"] for e in search.json.get("entry", [])] == [sop]

    reader = "system/DocumentReference.rs system/ImagingStudy.rs"
    peer = auth(mint(scope=f"{reader} drimhub/peer", org="org-peer"))
    stranger = auth(mint(scope=reader, org="org-b"))
    assert sees(peer) == (True, True)
    assert sees(stranger) == (False, False)
    expires = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    share = {"study": study.uid, "grantee": {"org": "org-b"}, "permissions": ["read"], "expires": expires}
    r = anon.post("/api/shares", json=share, headers=auth(mint(scope=f"system/*.cruds {SHARE_SCOPE}")))
    assert r.status_code == 201, r.json
    assert sees(stranger) == (True, True)  # the grantee now sees the study, so its manifest
    assert anon.delete(f"/api/shares/{r.json['id']}",
                       headers=auth(mint(scope=f"system/*.cruds {SHARE_SCOPE}"))).status_code == 204
    assert sees(stranger) == (False, False)
    patient = client.get(f"/fhir/ImagingStudy/{study.uid}").json["subject"]["reference"]
    assert client.post("/fhir/Consent", json=_opt_out(patient),
                       headers={"Content-Type": "application/fhir+json"}).status_code == 201
    read = client.get(query, headers=peer)
    assert read.status_code == 200 and not read.json.get("entry")  # opposed: hidden from the peer
    assert sees({}) == (True, True)  # the owning organisation's care is unchanged


def _opt_out(patient: str) -> dict[str, Any]:
    return {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": patient},
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
            "provision": {"type": "deny"}}


@pytest.mark.parametrize("app_config", [{"NODE_UID": "1.2.250.1.999.77"}])
def test_configured_node_uid_is_the_retrieve_location(client: FlaskClient, study: Study,
                                                      publisher: dict[str, str]) -> None:
    publish(client, study.uid, publisher)
    series = kos_of(client, study.uid).CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {item.RetrieveLocationUID for item in series} == {"1.2.250.1.999.77"}


def test_node_uid_rules(tmp_path: Any) -> None:
    from drimhub.errors import DrimhubError
    from drimhub.server.app import create_app

    derived = kos.retrieve_location_uid(None, "https://pacs.example/")
    assert derived == kos.retrieve_location_uid(None, "https://pacs.example")  # stable
    assert derived != kos.retrieve_location_uid(None, "https://other.example") and kos.is_uid(derived)
    for bad in ("1.2.x", "01.2", "1..2", "1." + "2" * 70):
        assert not kos.is_uid(bad)
        with pytest.raises(ValueError):
            kos.retrieve_location_uid(bad, "https://pacs.example")
    with pytest.raises(DrimhubError, match="DRIMHUB_NODE_UID"):
        create_app({"NODE_UID": "not-an-oid", "DATA_DIR": str(tmp_path), "AUTO_MIGRATE": False})


# --- KOS-SOPInstanceUID ---------------------------------------------------------------------

@pytest.mark.parametrize("root", ["/dicom-web", "/federated/dicom-web"])
def test_kos_header_check(app: Flask, client: FlaskClient, anon: FlaskClient, study: Study,
                          publisher: dict[str, str], root: str) -> None:
    other = make_study(accession="ACC-KOS-2")
    stow(client, other)
    mine = publish(client, study.uid, publisher)["sopInstanceUID"]
    theirs = publish(client, other.uid, publisher)["sopInstanceUID"]
    series = next(iter(study.series))
    urls = [f"{root}/studies/{study.uid}/series/{series}", f"{root}/studies/{study.uid}/metadata",
            f"{root}/studies/{study.uid}/series/{series}/instances/{study.series[series][0].sop}"]
    for url in urls:
        assert client.get(url, headers={"KOS-SOPInstanceUID": mine}).status_code == 200, url
        assert client.get(url).status_code == 200  # no header: no restriction
        assert client.get(url, headers={"KOS-SOPInstanceUID": theirs}).status_code == 404, url
        assert client.get(url, headers={"KOS-SOPInstanceUID": f.new_uid()}).status_code == 404, url
        assert client.get(url, headers={"KOS-SOPInstanceUID": "not a uid"}).status_code == 404, url
    assert client.get(f"{root}/studies", headers={"KOS-SOPInstanceUID": mine}).status_code == 404  # no study
    assert anon.get(urls[0], headers={"KOS-SOPInstanceUID": mine}).status_code == 401  # authentication first
    with app.extensions["drimhub"].sessions() as session:
        assert session.query(Manifest).filter_by(sop_uid=mine, study_uid=study.uid).count() == 1
