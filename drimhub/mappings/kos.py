"""A stored study ⇒ its DICOM Key Object Selection manifest (KOS, title 113030 "Manifest").

The manifest IHE XDS-I.b publishes and DRIM-M (the French DRIMbox network) relies on: it names
every instance of the study and, for each series, the WADO-RS URL this node serves it at
(Retrieve URL (0008,1190) = ``{dicomweb base}/studies/{study}/series/{series}``), so that a
consumer that holds only the manifest can fetch the images.

Pure: plain facts in (:class:`ManifestStudy`), a pydicom ``Dataset`` out; no Flask, no SQL.

Sources (PS3.3, 2025 edition)

A.35.4 Key Object Selection Document IOD
    Patient (C.7.1.1), General Study (C.7.2.1), Key Object Document Series (C.17.6.1), General
    Equipment (C.7.5.1), Key Object Document (C.17.6.2), SR Document Content (C.17.3), SOP
    Common (C.12.1). :data:`ATTRIBUTE_TYPES` lists the attributes emitted with their Type.
C.17.6.2 Key Object Document
    Referenced Request Sequence (0040,A370), 1C: present when the study has an Accession Number
    or a stored order (the document pertains to that Requested Procedure), built from the
    Referenced Request Macro (Table C.17-3c) with the placer order number and its issuer as
    stored (DRIM-M expects them); Current Requested Procedure Evidence Sequence (0040,A375), 1:
    one study item (Hierarchical SOP Instance Reference Macro, Table C.17-3) with one Referenced
    Series Sequence item per series, its Retrieve URL (0008,1190) and Retrieve Location UID
    (0040,E011) (IHE XDS-I.b: the Imaging Document Source's OID, :func:`retrieve_location_uid`).
PS3.16 TID 2010 "Key Object Selection"
    Root CONTAINER, concept name from CID 7010 (113030 DCM "Manifest"), Continuity of Content
    SEPARATE; one IMAGE (an instance with pixel data) or COMPOSITE (any other) item per
    instance, relationship CONTAINS, without a concept name.

Patient identity is copied as stored: Patient ID with its Issuer of Patient ID and Issuer of
Patient ID Qualifiers Sequence (the French INS keeps its OID there), never rewritten.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

#: Key Object Selection Document Storage (PS3.4 Table B.5-1).
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
#: Document title of a manifest (PS3.16 CID 7010 "Key Object Selection Document Title").
MANIFEST_TITLE = ("113030", "DCM", "Manifest")
#: Template of the content tree (PS3.16 TID 2010 "Key Object Selection"), in the DCMR resource.
TEMPLATE = ("DCMR", "2010")
MANUFACTURER = "drimhub"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

#: (module, keyword, Type) of every top-level attribute this builder writes (PS3.3 A.35.4 and
#: the module tables named in the module docstring). Type 1: present with a value; Type 2:
#: present, possibly empty; 1C: present with a value when its condition holds; 3: optional.
ATTRIBUTE_TYPES: tuple[tuple[str, str, str], ...] = (
    ("Patient C.7.1.1", "PatientName", "2"),
    ("Patient C.7.1.1", "PatientID", "2"),
    ("Patient C.7.1.1", "IssuerOfPatientID", "3"),
    ("Patient C.7.1.1", "IssuerOfPatientIDQualifiersSequence", "3"),
    ("Patient C.7.1.1", "PatientBirthDate", "2"),
    ("Patient C.7.1.1", "PatientSex", "2"),
    ("General Study C.7.2.1", "StudyInstanceUID", "1"),
    ("General Study C.7.2.1", "StudyDate", "2"),
    ("General Study C.7.2.1", "StudyTime", "2"),
    ("General Study C.7.2.1", "ReferringPhysicianName", "2"),
    ("General Study C.7.2.1", "StudyID", "2"),
    ("General Study C.7.2.1", "AccessionNumber", "2"),
    ("General Study C.7.2.1", "IssuerOfAccessionNumberSequence", "3"),
    ("General Study C.7.2.1", "StudyDescription", "3"),
    ("Key Object Document Series C.17.6.1", "Modality", "1"),
    ("Key Object Document Series C.17.6.1", "SeriesInstanceUID", "1"),
    ("Key Object Document Series C.17.6.1", "SeriesNumber", "1"),
    ("Key Object Document Series C.17.6.1", "SeriesDescription", "3"),
    ("Key Object Document Series C.17.6.1", "ReferencedPerformedProcedureStepSequence", "2"),
    ("General Equipment C.7.5.1", "Manufacturer", "2"),
    ("General Equipment C.7.5.1", "SoftwareVersions", "3"),
    ("Key Object Document C.17.6.2", "InstanceNumber", "1"),
    ("Key Object Document C.17.6.2", "ContentDate", "1"),
    ("Key Object Document C.17.6.2", "ContentTime", "1"),
    ("Key Object Document C.17.6.2", "ReferencedRequestSequence", "1C"),
    ("Key Object Document C.17.6.2", "CurrentRequestedProcedureEvidenceSequence", "1"),
    ("SR Document Content C.17.3", "ValueType", "1"),
    ("SR Document Content C.17.3", "ConceptNameCodeSequence", "1"),
    ("SR Document Content C.17.3", "ContinuityOfContent", "1C"),
    ("SR Document Content C.17.3", "ContentTemplateSequence", "1C"),
    ("SR Document Content C.17.3", "ContentSequence", "1C"),
    ("SOP Common C.12.1", "SOPClassUID", "1"),
    ("SOP Common C.12.1", "SOPInstanceUID", "1"),
    ("SOP Common C.12.1", "SpecificCharacterSet", "1C"),
    ("SOP Common C.12.1", "InstanceCreationDate", "3"),
    ("SOP Common C.12.1", "InstanceCreationTime", "3"),
    ("SOP Common C.12.1", "TimezoneOffsetFromUTC", "3"),
)

#: Referenced Request Macro (PS3.3 Table C.17-3c): (keyword, Type) in each request item.
REQUEST_ITEM_TYPES: tuple[tuple[str, str], ...] = (
    ("StudyInstanceUID", "1"), ("ReferencedStudySequence", "2"), ("AccessionNumber", "2"),
    ("IssuerOfAccessionNumberSequence", "3"), ("PlacerOrderNumberImagingServiceRequest", "2"),
    ("FillerOrderNumberImagingServiceRequest", "2"), ("RequestedProcedureID", "2"),
    ("RequestedProcedureDescription", "2"), ("RequestedProcedureCodeSequence", "2"),
)

#: Patient and General Study attributes copied from the stored study, with their Type.
_COPIED = [(keyword, kind) for module, keyword, kind in ATTRIBUTE_TYPES
           if module.startswith(("Patient ", "General Study ")) and keyword != "StudyInstanceUID"]


@dataclass(frozen=True)
class ManifestInstance:
    """One instance to reference: its UIDs and whether it is an image (IMAGE item) or not (COMPOSITE)."""

    sop_uid: str
    sop_class: str
    image: bool
    number: int | None = None


@dataclass(frozen=True)
class ManifestSeries:
    """One series of the study and its instances."""

    uid: str
    instances: Sequence[ManifestInstance]


@dataclass(frozen=True)
class ManifestStudy:
    """The study: its stored study-level attributes (Patient, General Study modules), its series,
    and the items of its series' Request Attributes Sequence (0040,0275) (the order, as stored)."""

    study_uid: str
    attrs: Dataset
    series: Sequence[ManifestSeries]
    requests: Sequence[Dataset] = ()


def retrieve_location_uid(configured: str | None, base_url: str) -> str:
    """The node's Retrieve Location UID (0040,E011): the Imaging Document Source's OID of IHE XDS-I.b.

    ``configured`` (``DRIMHUB_NODE_UID``) when set; else a UUID-derived UID (PS3.5 B.2:
    ``2.25.`` and the UUID as a decimal integer) of a name-based UUID (RFC 9562 version 5, URL
    namespace) of the node's public base URL: stable for as long as the base URL is.

    Raises
    ------
    ValueError
        ``configured`` is not a UID (digits and dots, at most 64 characters, PS3.5 9.1).
    """
    if configured:
        if not is_uid(configured):
            raise ValueError(f"DRIMHUB_NODE_UID {configured!r} is not a DICOM UID")
        return configured
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, base_url.rstrip('/')).int}"


def is_uid(value: str) -> bool:
    """True for a DICOM UID (PS3.5 9.1: components of digits, no leading zero, at most 64 characters)."""
    return len(value) <= 64 and _UID.match(value) is not None


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of the Code Sequence Macro (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _sop_reference(instance: ManifestInstance) -> Dataset:
    """SOP Instance Reference Macro (PS3.3 Table 10-11)."""
    item = Dataset()
    item.ReferencedSOPClassUID = instance.sop_class
    item.ReferencedSOPInstanceUID = instance.sop_uid
    return item


def _ordered(instances: Sequence[ManifestInstance]) -> list[ManifestInstance]:
    return sorted(instances, key=lambda i: (i.number is None, i.number or 0, i.sop_uid))


def _referenced(study: ManifestStudy) -> list[ManifestSeries]:
    """The series with at least one instance (Referenced SOP Sequence is Type 1: one item or more)."""
    return [series for series in study.series if series.instances]


def series_url(dicomweb_base: str, study_uid: str, series_uid: str) -> str:
    """The WADO-RS Retrieve Series URL of a series (PS3.18 §10.4.1.1.1), this node's Retrieve URL."""
    return f"{dicomweb_base.rstrip('/')}/studies/{study_uid}/series/{series_uid}"


def _copy_study_attributes(ds: Dataset, study: ManifestStudy) -> None:
    """Patient and General Study modules: stored values as they are, Type 2 ones empty when unknown."""
    ds.StudyInstanceUID = study.study_uid
    for keyword, kind in _COPIED:
        if keyword in study.attrs and study.attrs[keyword].value not in (None, ""):
            ds[keyword] = study.attrs[keyword]
        elif kind == "2":
            setattr(ds, keyword, None)


#: Request Attributes (PS3.3 Table 10-9) copied into the Referenced Request item when stored.
_REQUEST_COPIED = ("PlacerOrderNumberImagingServiceRequest", "OrderPlacerIdentifierSequence",
                   "FillerOrderNumberImagingServiceRequest", "OrderFillerIdentifierSequence",
                   "RequestedProcedureID", "RequestedProcedureDescription", "RequestedProcedureCodeSequence")


def _stored_request(study: ManifestStudy, accession: str | None) -> Dataset | None:
    """The stored Request Attributes item of the study's order: the one of its Accession Number
    (any, without one) that carries an order number or a requested procedure."""
    for item in study.requests:
        if accession and item.get("AccessionNumber") not in (None, "", accession):
            continue
        if any(item.get(k) not in (None, "") for k in _REQUEST_COPIED):
            return item
    return None


def _request(study: ManifestStudy) -> Dataset | None:
    """The Referenced Request item (Table C.17-3c) of the study's order, None without one.

    An order is known by the study's Accession Number or a stored Request Attributes item: then
    the document pertains to a Requested Procedure (the 1C condition). The placer order number
    with its issuer (Order Placer Identifier Sequence), the filler's and the requested procedure
    are copied as stored; Type 2 ones not stored are empty.
    """
    accession = study.attrs.get("AccessionNumber") or None
    stored = _stored_request(study, accession)
    if not accession and stored is None:
        return None
    item = Dataset()
    item.StudyInstanceUID = study.study_uid
    item.ReferencedStudySequence = DicomSequence()
    item.AccessionNumber = accession or (stored.get("AccessionNumber") if stored is not None else None)
    issuer = study.attrs.get("IssuerOfAccessionNumberSequence")
    if issuer:
        item.IssuerOfAccessionNumberSequence = issuer
    for keyword in _REQUEST_COPIED:
        if stored is not None and stored.get(keyword) not in (None, ""):
            item[keyword] = stored[keyword]
        elif keyword == "RequestedProcedureCodeSequence":
            item.RequestedProcedureCodeSequence = DicomSequence()
        elif not keyword.endswith("IdentifierSequence"):  # Type 3 issuers: absent when unknown
            setattr(item, keyword, None)
    return item


def _evidence(study: ManifestStudy, dicomweb_base: str, location_uid: str | None) -> Dataset:
    """The one study item of the Current Requested Procedure Evidence Sequence (Table C.17-3)."""
    item = Dataset()
    item.StudyInstanceUID = study.study_uid
    series_items = []
    for series in _referenced(study):
        entry = Dataset()
        entry.SeriesInstanceUID = series.uid
        entry.RetrieveURL = series_url(dicomweb_base, study.study_uid, series.uid)  # (0008,1190)
        if location_uid:
            entry.RetrieveLocationUID = location_uid  # (0040,E011): XDS-I.b's Imaging Document Source
        entry.ReferencedSOPSequence = DicomSequence([_sop_reference(i) for i in _ordered(series.instances)])
        series_items.append(entry)
    item.ReferencedSeriesSequence = DicomSequence(series_items)
    return item


def _content(study: ManifestStudy) -> DicomSequence:
    """TID 2010 rows 6 and 8: one IMAGE or COMPOSITE item, CONTAINS, per referenced instance."""
    items = []
    for series in _referenced(study):
        for instance in _ordered(series.instances):
            item = Dataset()
            item.RelationshipType = "CONTAINS"
            item.ValueType = "IMAGE" if instance.image else "COMPOSITE"
            item.ReferencedSOPSequence = DicomSequence([_sop_reference(instance)])
            items.append(item)
    return DicomSequence(items)


def manifest(study: ManifestStudy, *, dicomweb_base: str, sop_uid: str, series_uid: str, created: datetime,
             software_version: str = "", location_uid: str | None = None) -> Dataset:
    """The KOS manifest of ``study``, with its file meta information (Explicit VR Little Endian).

    Parameters
    ----------
    study : ManifestStudy
        The study as stored.
    dicomweb_base : str
        This node's DICOMweb base URL (``…/dicom-web``): the root of every Retrieve URL.
    sop_uid, series_uid : str
        New UIDs of the manifest and of its series (the caller generates them).
    created : datetime
        When the manifest is made (timezone-aware): Content and Instance Creation Date/Time, in UTC.
    location_uid : str, optional
        Retrieve Location UID (0040,E011) of every series (:func:`retrieve_location_uid`).

    Returns
    -------
    Dataset
        A Key Object Selection Document instance; :func:`encode` gives its Part 10 bytes.

    Raises
    ------
    ValueError
        The study has no instance (PS3.3 C.17.6.2: the evidence sequence needs one item or more).
    """
    if not _referenced(study):
        raise ValueError(f"study {study.study_uid} has no instance to reference")
    moment = created.astimezone(timezone.utc)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = KOS_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # SOP Common (C.12.1): UTF-8 for names copied as stored (1C: needed as soon as one is not ASCII)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = KOS_SOP_CLASS, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = "+0000"
    _copy_study_attributes(ds, study)
    # Key Object Document Series (C.17.6.1)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "KO", series_uid, 1
    ds.SeriesDescription = "Manifest"
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    # General Equipment (C.7.5.1)
    ds.Manufacturer = MANUFACTURER
    if software_version:
        ds.SoftwareVersions = software_version
    # Key Object Document (C.17.6.2)
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
    request = _request(study)
    if request is not None:
        ds.ReferencedRequestSequence = DicomSequence([request])
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([_evidence(study, dicomweb_base, location_uid)])
    # SR Document Content (C.17.3), TID 2010
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code(*MANIFEST_TITLE)])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = TEMPLATE
    ds.ContentTemplateSequence = DicomSequence([template])
    ds.ContentSequence = _content(study)
    return ds


def encode(ds: Dataset) -> bytes:
    """The DICOM Part 10 file of ``ds`` (preamble, file meta, data set)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
