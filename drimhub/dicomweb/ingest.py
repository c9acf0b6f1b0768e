"""Read one DICOM part (a file spooled from a STOW-RS request or an import) for indexing.

Only the header is parsed (``stop_before_pixels``): the pixel data is never loaded. Its place in
the file is recorded instead, so that frames and bulk data are served by seeking in the blob.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from drimhub.dicomweb.attributes import BULK_THRESHOLD, BULK_VRS, SERIES_TAGS, STUDY_TAGS
from drimhub.dicomweb.normalize import fold_text, time_key
from drimhub.dicomweb.status import FailureReason
from drimhub.dicomweb.uids import is_valid_uid

#: Prefix of the BulkDataURI values kept in the store; replaced by the DICOMweb base URL of the
#: request when metadata is served (the public URL may differ between requests).
BULK_PREFIX = "drimhub-base:"
UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


class UnreadableInstance(Exception):
    """The part cannot be stored; ``reason`` is the STOW-RS failure reason."""

    def __init__(self, reason: FailureReason, message: str, sop_class: str | None = None,
                 sop_instance: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.sop_class = sop_class
        self.sop_instance = sop_instance


@dataclass
class ParsedInstance:
    """What the store needs to index one instance, as plain values."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    study_attrs: bytes
    series_attrs: bytes
    dicom_json: bytes
    extra: dict[str, Any] = field(default_factory=dict)


def parse_instance(path: Path) -> ParsedInstance:
    """Parse the header of the DICOM file at ``path``.

    Raises
    ------
    UnreadableInstance
        The file is not a DICOM Part 10 file or lacks the identifying UIDs.
    """
    with open(path, "rb") as fp:
        try:
            ds = dcmread(fp, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, struct.error, KeyError, TypeError,
                NotImplementedError, UnicodeError, AttributeError, IndexError, OverflowError) as exc:
            raise UnreadableInstance(FailureReason.CANNOT_UNDERSTAND, f"not a DICOM file: {exc}") from exc
        tsuid = UID(str(getattr(ds.file_meta, "TransferSyntaxUID", "") or ""))
        pixel = _locate_pixel_data(fp, tsuid)
    return _describe(ds, tsuid, pixel)


def _locate_pixel_data(fp: BinaryIO, tsuid: UID) -> tuple[str, int | None, int | None] | None:
    """(tag, offset, length) of the pixel data element the reader stopped at, if any.

    Offsets are not recorded for deflated or big-endian data sets (served by a full decode).
    """
    if not tsuid or tsuid.is_deflated or not tsuid.is_little_endian:
        return None
    head = fp.read(8)
    if len(head) < 8:
        return None
    group, elem = struct.unpack("<HH", head[:4])
    if group != 0x7FE0:
        return None
    tag = f"{group:04X}{elem:04X}"
    if tsuid.is_implicit_VR:
        (length,) = struct.unpack("<I", head[4:8])
        offset = fp.tell()
    elif head[4:6] in _LONG_VRS:
        (length,) = struct.unpack("<I", fp.read(4))
        offset = fp.tell()
    else:
        (length,) = struct.unpack("<H", head[6:8])
        offset = fp.tell()
    return tag, offset, (None if length == UNDEFINED_LENGTH else length)


def _uid(ds: Dataset, keyword: str, required: bool = True) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if required and not is_valid_uid(value):
        raise UnreadableInstance(FailureReason.CANNOT_UNDERSTAND, f"missing or invalid {keyword}: {value!r}",
                                 str(ds.get("SOPClassUID", "") or "") or None,
                                 str(ds.get("SOPInstanceUID", "") or "") or None)
    return value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _folded(ds: Dataset, keyword: str) -> str | None:
    text = _text(ds, keyword)
    return fold_text(text) if text else None


def _time(ds: Dataset, keyword: str) -> str | None:
    text = _text(ds, keyword)
    return time_key(text) if text else None


def _describe(ds: Dataset, tsuid: UID, pixel: tuple[str, int | None, int | None] | None) -> ParsedInstance:
    sop_class = _uid(ds, "SOPClassUID")
    sop = _uid(ds, "SOPInstanceUID")
    study_uid = _uid(ds, "StudyInstanceUID")
    series_uid = _uid(ds, "SeriesInstanceUID")
    meta_sop = str(getattr(ds.file_meta, "MediaStorageSOPInstanceUID", "") or "")
    if meta_sop and meta_sop != sop:
        raise UnreadableInstance(FailureReason.CANNOT_UNDERSTAND,
                                 "MediaStorageSOPInstanceUID differs from SOPInstanceUID", sop_class, sop)
    if not tsuid:
        raise UnreadableInstance(FailureReason.CANNOT_UNDERSTAND, "no TransferSyntaxUID in the file meta",
                                 sop_class, sop)
    prefix = f"{BULK_PREFIX}/studies/{study_uid}/series/{series_uid}/instances/{sop}/bulkdata/"
    full = to_dicom_json(ds, prefix)
    if pixel is not None:
        full[pixel[0]] = {"vr": "OW" if tsuid.is_implicit_VR else _pixel_vr(ds, tsuid),
                          "BulkDataURI": prefix + pixel[0]}
    full = dict(sorted(full.items()))
    study_attrs = {k: v for k, v in full.items() if k in STUDY_TAGS}
    series_attrs = {k: v for k, v in full.items() if k in SERIES_TAGS}
    has_pixels = pixel is not None and pixel[0] == "7FE00010"
    return ParsedInstance(
        study_uid=study_uid, series_uid=series_uid, sop_uid=sop, sop_class_uid=sop_class,
        transfer_syntax=str(tsuid),
        study={
            "patient_id": _text(ds, "PatientID"),
            "issuer_of_patient_id": _text(ds, "IssuerOfPatientID"),
            "patient_name": _text(ds, "PatientName"),
            "patient_name_key": _folded(ds, "PatientName"),
            "patient_birth_date": _text(ds, "PatientBirthDate"),
            "patient_sex": _text(ds, "PatientSex"),
            "study_date": _text(ds, "StudyDate"),
            "study_time": _time(ds, "StudyTime"),
            "accession_number": _text(ds, "AccessionNumber"),
            "study_id": _text(ds, "StudyID"),
            "study_description": _text(ds, "StudyDescription"),
            "referring_physician_key": _folded(ds, "ReferringPhysicianName"),
            "institution_name": _text(ds, "InstitutionName"),
        },
        series={
            "modality": _text(ds, "Modality"),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription"),
            "body_part": _text(ds, "BodyPartExamined"),
            "pps_start_date": _text(ds, "PerformedProcedureStepStartDate"),
            "pps_start_time": _time(ds, "PerformedProcedureStepStartTime"),
        },
        instance={
            "sop_class_uid": sop_class,
            "instance_number": _int(ds, "InstanceNumber"),
            "transfer_syntax": str(tsuid),
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "bits_allocated": _int(ds, "BitsAllocated"),
            "samples_per_pixel": _int(ds, "SamplesPerPixel"),
            "number_of_frames": (_int(ds, "NumberOfFrames") or 1) if has_pixels else _int(ds, "NumberOfFrames"),
            "pixel_offset": pixel[1] if has_pixels and pixel else None,
            "pixel_length": pixel[2] if has_pixels and pixel else None,
        },
        study_attrs=orjson.dumps(study_attrs),
        series_attrs=orjson.dumps(series_attrs),
        dicom_json=orjson.dumps(full),
    )


def _pixel_vr(ds: Dataset, tsuid: UID) -> str:
    if tsuid.is_encapsulated:
        return "OB"
    return "OW" if (_int(ds, "BitsAllocated") or 16) > 8 else "OB"


def to_dicom_json(ds: Dataset, bulk_prefix: str) -> dict[str, Any]:
    """DICOM JSON of ``ds`` (PS3.18 F.2); large top-level binary values become BulkDataURIs.

    Values nested in sequences stay inline (InlineBinary), so that every BulkDataURI is a
    top-level tag of the instance.
    """
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.element == 0 or elem.tag.group == 0x0002:
            continue  # group lengths and file meta are not part of the data set's JSON
        key = f"{elem.tag:08X}"
        if elem.VR in BULK_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            out[key] = {"vr": elem.VR, "BulkDataURI": bulk_prefix + key}
            continue
        try:
            out[key] = elem.to_json_dict(None, BULK_THRESHOLD)
        except (ValueError, TypeError, AttributeError, struct.error, UnicodeError):
            out[key] = {"vr": elem.VR}  # a value pydicom cannot represent: kept empty, not fatal
    return out
