"""A published KOS manifest ⇒ its FHIR R4 DocumentReference (the IHE RAD MADO / MHD view of it).

Pure: the manifest's facts in, the resource JSON (a dict) out. The writer stores it as a FHIR
resource of the study's organisation, with the KOS SOP Instance UID as its id.

Sources

R4 DocumentReference
    status ``current``; type LOINC 18748-4 "Diagnostic imaging study"; subject the study's
    Patient; ``date`` when the reference was made; ``masterIdentifier`` the document's unique id
    (MHD: an OID as ``urn:oid:`` in system ``urn:ietf:rfc:3986``), repeated in ``identifier``
    (MADO invariant mado-docref-1); ``content.attachment`` the KOS (``application/dicom``, its
    URL, size, SHA-1 base64 hash) with ``format`` the KOS SOP Class (DCMUID system).
IHE RAD MADO (MadoDicomKosDocumentReference)
    ``context.related``: the Study Instance UID as an Identifier typed DCM 110180 in system
    ``urn:dicom:uid`` (here also a literal reference to the ImagingStudy), and the Accession
    Number typed v2-0203 ACSN + DCM 121022 with its issuer as system; modalities in the
    extension ``ext-R5-DocumentReference.modality`` (searched by MADO's ``modality``) and, as
    R4 has it, in ``context.event``; ``context.period.start`` the study's start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from drimhub.mappings.dicom import DCM, LOINC, attr_datetime, display_name, text
from drimhub.mappings.identifiers import DICOM_UID_SYSTEM, patient_id_system, uid_urn
from drimhub.mappings.imagingstudy import accession_identifier
from drimhub.mappings.kos import KOS_SOP_CLASS

#: MADO's R4 carrier of R5 DocumentReference.modality.
MODALITY_EXTENSION = "https://profiles.ihe.net/RAD/MADO/StructureDefinition/ext-R5-DocumentReference.modality"
#: Identifier.system of an OID written as a URI (MHD uniqueId of a DICOM document).
URI_SYSTEM = "urn:ietf:rfc:3986"
DCMUID = "http://dicom.nema.org/resources/ontology/DCMUID"
IMAGING_STUDY_TYPE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
STUDY_UID_TYPE = {"system": DCM, "code": "110180", "display": "Study Instance UID"}


@dataclass(frozen=True)
class PublishedManifest:
    """What the DocumentReference of one manifest says.

    ``attrs`` are the study's stored attributes; ``url`` is where the KOS is served; ``created``
    a FHIR instant.
    """

    sop_uid: str
    study_uid: str
    attrs: Dataset
    modalities: Sequence[str]
    patient_ref: str | None
    url: str
    size: int
    sha1: str
    created: str


def _subject(attrs: Dataset, patient_ref: str | None) -> dict[str, Any]:
    """``Patient/<id>``; without a Patient resource, a logical reference by Patient ID and issuer."""
    if patient_ref:
        return {"reference": f"Patient/{patient_ref}"}
    out: dict[str, Any] = {"type": "Patient"}
    patient_id = text(attrs, "PatientID")
    if patient_id is not None:
        system = patient_id_system(text(attrs, "IssuerOfPatientID"))
        out["identifier"] = {**({"system": system} if system else {}), "value": patient_id}
    out["display"] = display_name(attrs.get("PatientName")) or patient_id or "unknown patient"
    return out


def study_related(study_uid: str) -> dict[str, Any]:
    """context.related of the study: MADO's Study Instance UID identifier and the ImagingStudy."""
    return {"reference": f"ImagingStudy/{study_uid}", "type": "ImagingStudy",
            "identifier": {"type": {"coding": [STUDY_UID_TYPE]}, "system": DICOM_UID_SYSTEM, "value": study_uid}}


def document_reference(m: PublishedManifest) -> dict[str, Any]:
    """The DocumentReference of manifest ``m`` (R4 JSON, without id and meta)."""
    modality_codes = [{"coding": [{"system": DCM, "code": code}]} for code in dict.fromkeys(m.modalities) if code]
    related = [study_related(m.study_uid)]
    accession = accession_identifier(m.attrs)
    if accession is not None:
        related.append({"identifier": accession})
    context: dict[str, Any] = {"related": related}
    if modality_codes:
        context["event"] = modality_codes
    started = attr_datetime(m.attrs, "StudyDate", "StudyTime")
    if started:
        context["period"] = {"start": started}
    master = {"system": URI_SYSTEM, "value": uid_urn(m.sop_uid)}
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "masterIdentifier": master,
        "identifier": [{"use": "official", **master}],
        "status": "current",
        "type": {"coding": [IMAGING_STUDY_TYPE]},
        "subject": _subject(m.attrs, m.patient_ref),
        "date": m.created,
        "content": [{
            "attachment": {"contentType": "application/dicom", "url": m.url, "size": m.size, "hash": m.sha1,
                           "title": "Manifest", "creation": m.created},
            "format": {"system": DCMUID, "code": KOS_SOP_CLASS, "display": "Key Object Selection Document"},
        }],
        "context": context,
    }
    if modality_codes:
        resource["extension"] = [{"url": MODALITY_EXTENSION, "valueCodeableConcept": c} for c in modality_codes]
    description = text(m.attrs, "StudyDescription")
    if description:
        resource["description"] = description
    return resource
