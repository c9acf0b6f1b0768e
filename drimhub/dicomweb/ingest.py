"""Read one DICOM part (a file spooled from a STOW-RS request or an import) for indexing.

Only the header is parsed (``stop_before_pixels``): the pixel data is never loaded. Its place in
the file is recorded instead, so that frames and bulk data are served by seeking in the blob.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from drimhub.dicomweb.attributes import BULK_THRESHOLD, BULK_VRS, PIXEL_DATA, SERIES_TAGS, STUDY_TAGS
from drimhub.dicomweb.normalize import fold_text, time_key
from drimhub.dicomweb.status import FailureReason
from drimhub.dicomweb.uids import is_valid_uid
from drimhub.store.index import IndexEntry
from drimhub.store.models import Instance, Series, Study

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


def parse_instance(path: Path) -> IndexEntry:
    """Parse the header of the DICOM file at ``path``.

    Raises
    ------
    UnreadableInstance
        The file is not a DICOM Part 10 file or lacks the identifying UIDs.
    """
    with open(path, "rb") as fp:
        # What a client sends is untrusted input to a third-party parser, which may raise
        # anything (deep nesting: RecursionError; bad lengths: struct.error, EOFError...): every
        # such failure is this part's "cannot understand", never the request's 500.
        try:
            ds = dcmread(fp, stop_before_pixels=True)
            tsuid = UID(str(getattr(ds.file_meta, "TransferSyntaxUID", "") or ""))
            pixel = _locate_pixel_data(fp, tsuid)
            return _describe(ds, tsuid, pixel)
        except UnreadableInstance:
            raise
        except InvalidDicomError as exc:
            raise UnreadableInstance(FailureReason.CANNOT_UNDERSTAND, f"not a DICOM file: {exc}") from exc
        except Exception as exc:
            raise UnreadableInstance(FailureReason.CANNOT_UNDERSTAND,
                                     f"cannot read the data set: {type(exc).__name__}: {exc}"[:200]) from exc


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


#: Index columns of each level: column -> (attribute keyword, how its first value is kept).
#: "text" as is, "int" as an integer, "fold" folded for PN matching, "time" as a TM key.
STUDY_COLUMNS = {
    "patient_id": ("PatientID", "text"), "issuer_of_patient_id": ("IssuerOfPatientID", "text"),
    "patient_name": ("PatientName", "text"), "patient_name_key": ("PatientName", "fold"),
    "patient_birth_date": ("PatientBirthDate", "text"), "patient_sex": ("PatientSex", "text"),
    "study_date": ("StudyDate", "text"), "study_time": ("StudyTime", "time"),
    "accession_number": ("AccessionNumber", "text"), "study_id": ("StudyID", "text"),
    "study_description": ("StudyDescription", "text"),
    "referring_physician_key": ("ReferringPhysicianName", "fold"), "institution_name": ("InstitutionName", "text"),
}
SERIES_COLUMNS = {
    "modality": ("Modality", "text"), "series_number": ("SeriesNumber", "int"),
    "series_description": ("SeriesDescription", "text"), "body_part": ("BodyPartExamined", "text"),
    "pps_start_date": ("PerformedProcedureStepStartDate", "text"),
    "pps_start_time": ("PerformedProcedureStepStartTime", "time"),
}
INSTANCE_COLUMNS = {
    "instance_number": ("InstanceNumber", "int"), "rows": ("Rows", "int"), "columns": ("Columns", "int"),
    "bits_allocated": ("BitsAllocated", "int"), "samples_per_pixel": ("SamplesPerPixel", "int"),
    "number_of_frames": ("NumberOfFrames", "int"),
}
_TAGS = {kw: f"{tag_for_keyword(kw):08X}" for table in (STUDY_COLUMNS, SERIES_COLUMNS, INSTANCE_COLUMNS)
         for kw, _ in table.values()}


def _first(full: dict[str, Any], keyword: str, kind: str) -> Any:
    """First value of an attribute in DICOM JSON, kept as ``kind`` says (None when absent)."""
    element = full.get(_TAGS[keyword])
    values = element.get("Value") if element else None
    value = values[0] if values else None
    if isinstance(value, dict):  # PN: the alphabetic group (PS3.18 F.2.2)
        value = value.get("Alphabetic")
    if value is None:
        return None
    if kind == "int":
        try:
            number = int(value)
        except (TypeError, ValueError):
            return None
        return number if INT32[0] <= number <= INT32[1] else None  # the full value stays in the JSON
    text = str(value).strip()
    if not text:
        return None
    return fold_text(text) if kind == "fold" else time_key(text) if kind == "time" else text


#: Range of the Integer index columns; an IS value outside it is not indexed (PS3.5 allows
#: only 32-bit values, but non-conformant files exist).
INT32 = (-(2**31), 2**31 - 1)


def _lengths(model: Any, table: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Length of each string column of ``table`` in ``model`` (read once, at import)."""
    lengths = {column: getattr(model.__table__.c[column].type, "length", None) for column in table}
    return {column: length for column, length in lengths.items() if length}


_STUDY_LENGTHS = _lengths(Study, STUDY_COLUMNS)
_SERIES_LENGTHS = _lengths(Series, SERIES_COLUMNS)
_INSTANCE_LENGTHS = _lengths(Instance, INSTANCE_COLUMNS)


def _columns(full: dict[str, Any], table: dict[str, tuple[str, str]], lengths: dict[str, int]) -> dict[str, Any]:
    """Index column values; text longer than its column is cut (the DICOM JSON keeps it whole)."""
    values = {column: _first(full, keyword, kind) for column, (keyword, kind) in table.items()}
    for column, length in lengths.items():
        value = values[column]
        if isinstance(value, str) and len(value) > length:
            values[column] = value[:length]
    return values


def _describe(ds: Dataset, tsuid: UID, pixel: tuple[str, int | None, int | None] | None) -> IndexEntry:
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
    instance = _columns(full, INSTANCE_COLUMNS, _INSTANCE_LENGTHS)
    has_pixels = pixel is not None and pixel[0] == PIXEL_DATA
    if pixel is not None:
        full[pixel[0]] = {"vr": _pixel_vr(tsuid, instance["bits_allocated"]), "BulkDataURI": prefix + pixel[0]}
    full = dict(sorted(full.items()))
    if has_pixels and pixel:
        instance["number_of_frames"] = instance["number_of_frames"] or 1
        instance["pixel_offset"], instance["pixel_length"] = pixel[1], pixel[2]
        _check_native_length(instance, sop_class, sop)
    else:
        instance["pixel_offset"] = instance["pixel_length"] = None
    return IndexEntry(
        study_uid=study_uid, series_uid=series_uid, sop_uid=sop,
        study=_columns(full, STUDY_COLUMNS, _STUDY_LENGTHS),
        series=_columns(full, SERIES_COLUMNS, _SERIES_LENGTHS),
        instance={"sop_class_uid": sop_class, "transfer_syntax": str(tsuid), **instance},
        study_attrs=orjson.dumps({k: v for k, v in full.items() if k in STUDY_TAGS}),
        series_attrs=orjson.dumps({k: v for k, v in full.items() if k in SERIES_TAGS}),
        dicom_json=orjson.dumps(full),
    )


def _check_native_length(instance: dict[str, Any], sop_class: str, sop: str) -> None:
    """Refuse native Pixel Data shorter than its geometry (PS3.5 §8.1.1; PS3.4 B.2.3 A900H).

    Frames are served by offset; a short value would make them read past the element.
    """
    length = instance["pixel_length"]
    if length is None:  # encapsulated: frames are found by their items
        return
    bits = ((instance["rows"] or 0) * (instance["columns"] or 0) * (instance["samples_per_pixel"] or 1)
            * (instance["bits_allocated"] or 0) * instance["number_of_frames"])
    if length < (bits + 7) // 8:
        raise UnreadableInstance(FailureReason.DATA_SET_DOES_NOT_MATCH,
                                 f"Pixel Data holds {length} bytes, its geometry needs {(bits + 7) // 8}",
                                 sop_class, sop)


def _pixel_vr(tsuid: UID, bits_allocated: int | None) -> str:
    """VR of Pixel Data (PS3.5 §8.2): OB when encapsulated or 8 bits, OW otherwise."""
    if tsuid.is_implicit_VR:
        return "OW"
    if tsuid.is_encapsulated:
        return "OB"
    return "OW" if (bits_allocated or 16) > 8 else "OB"


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
