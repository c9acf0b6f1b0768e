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
IHE RAD MADO (MadoDicomKosDocumentReference, trial use)
    ``context.related``: the Study Instance UID as the ImagingStudy has it (type DCM 110180,
    system ``urn:dicom:uid``, value ``urn:oid:<uid>``, :func:`~drimhub.mappings.imagingstudy.study_uid_identifier`;
    the ``study-instance-uid`` search also takes the bare UID) with a literal reference to the
    ImagingStudy, and the Accession Number typed v2-0203 ACSN + DCM 121022 with its issuer as
    system; ``category`` Medical-Imaging (the code the MADO examples use, from the EEHRxF
    document priority categories); modalities in the extension ``ext-R5-DocumentReference.modality``
    (searched by ``modality``) and, as R4 has it, in ``context.event``; the Body Part Examined of
    each series (SNOMED CT by PS3.16 Annex L, :func:`~drimhub.mappings.imagingstudy.body_site`) in
    ``ext-R5-DocumentReference.bodySite`` (searched by ``bodysite``); ``context.period.start`` the
    study's StudyDate/StudyTime.

Left out because this node cannot know them: ``context.facilityType`` and
``context.practiceSetting`` (XDS affinity-domain codes of the producing facility and clinical
specialty: nothing in the stored DICOM says them, and a guess would mislead a consumer that
filters on them), ``attachment.language`` (a KOS has no language), ``author`` (no sending
organisation is known as a resource).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from drimhub.mappings.dicom import DCM, LOINC, attr_datetime, text
from drimhub.mappings.identifiers import uid_urn
from drimhub.mappings.imagingstudy import accession_identifier, patient_subject, study_uid_identifier
from drimhub.mappings.kos import KOS_SOP_CLASS

#: MADO's R4 carrier of R5 DocumentReference.modality.
MODALITY_EXTENSION = "https://profiles.ihe.net/RAD/MADO/StructureDefinition/ext-R5-DocumentReference.modality"
#: MADO's R4 carrier of R5 DocumentReference.bodySite (its ``concept``).
BODY_SITE_EXTENSION = "https://profiles.ihe.net/RAD/MADO/StructureDefinition/ext-R5-DocumentReference.bodySite"
#: DocumentReference.category of an imaging manifest (the MADO examples' code).
MEDICAL_IMAGING = {"system": "http://hl7.eu/fhir/eu-health-data-api/CodeSystem/eehrxf-document-priority-category-cs",
                   "code": "Medical-Imaging", "display": "Medical imaging"}
#: Identifier.system of an OID written as a URI (MHD uniqueId of a DICOM document).
URI_SYSTEM = "urn:ietf:rfc:3986"
DCMUID = "http://dicom.nema.org/resources/ontology/DCMUID"
IMAGING_STUDY_TYPE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}


@dataclass(frozen=True)
class PublishedManifest:
    """What the DocumentReference of one manifest says.

    ``attrs`` are the study's stored attributes; ``body_sites`` the Body Part Examined codings of
    its series (:func:`~drimhub.mappings.imagingstudy.body_site`); ``url`` is where this KOS is
    served (its own URL); ``sha1`` the base64 SHA-1 of its bytes; ``created`` a FHIR instant.
    """

    sop_uid: str
    study_uid: str
    attrs: Dataset
    modalities: Sequence[str]
    body_sites: Sequence[dict[str, str]]
    patient_ref: str | None
    url: str
    size: int
    sha1: str
    created: str


def study_related(study_uid: str) -> dict[str, Any]:
    """context.related of the study: MADO's Study Instance UID identifier and the ImagingStudy."""
    return {"reference": f"ImagingStudy/{study_uid}", "type": "ImagingStudy",
            "identifier": study_uid_identifier(study_uid)}


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
        "category": [{"coding": [MEDICAL_IMAGING]}],
        "subject": patient_subject(m.attrs, m.patient_ref),
        "date": m.created,
        "content": [{
            "attachment": {"contentType": "application/dicom", "url": m.url, "size": m.size, "hash": m.sha1,
                           "title": "Manifest", "creation": m.created},
            "format": {"system": DCMUID, "code": KOS_SOP_CLASS, "display": "Key Object Selection Document"},
        }],
        "context": context,
    }
    extensions = [{"url": MODALITY_EXTENSION, "valueCodeableConcept": c} for c in modality_codes]
    sites = {(c.get("system"), c.get("code"), c.get("display")): c for c in m.body_sites}
    extensions += [{"url": BODY_SITE_EXTENSION,
                    "valueCodeableConcept": {"coding": [c]} if "code" in c else {"text": c.get("display", "")}}
                   for c in sites.values()]
    if extensions:
        resource["extension"] = extensions
    description = text(m.attrs, "StudyDescription")
    if description:
        resource["description"] = description
    return resource
