"""STOW-RS: Store Instances (PS3.18 §10.5).

Each part of the request is spooled to a temporary file while it arrives, its header parsed
(pixel data never loaded), its blob moved into place, then its rows committed in a short
transaction of their own: an instance reported in ReferencedSOPSequence is durably stored, and a
failing part never affects the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy.orm import Session, sessionmaker

from drimhub.dicomweb import multipart
from drimhub.dicomweb.ingest import ParsedInstance, UnreadableInstance, parse_instance
from drimhub.dicomweb.status import FailureReason, stow_http_status
from drimhub.server.errors import InvalidRequest, UnsupportedMediaType
from drimhub.store.blobs import FileBlobStore, SpooledBlob
from drimhub.store.engine import write_session
from drimhub.store.index import InstanceRow, Outcome, find_instance, store_instance

log = logging.getLogger(__name__)

DICOM = "application/dicom"

#: Failure reason of each store outcome that is not a success.
_FAILURES = {
    Outcome.DUPLICATE: FailureReason.DUPLICATE_SOP_INSTANCE,
    Outcome.SERIES_IN_OTHER_STUDY: FailureReason.DATA_SET_DOES_NOT_MATCH,
}


@dataclass
class StowResult:
    """Outcome of one Store Instances request."""

    referenced: list[tuple[str, str, str, str]] = field(default_factory=list)  # class, sop, study, series
    failed: list[tuple[str | None, str | None, FailureReason]] = field(default_factory=list)
    unreadable: int = 0
    studies: set[str] = field(default_factory=set)

    @property
    def http_status(self) -> int:
        return stow_http_status(len(self.referenced), len(self.failed), 0, self.unreadable)

    def to_dicom_json(self, base_url: str, target_study: str | None) -> dict[str, Any]:
        """The response body (PS3.18 Table 10.5.3-2), RetrieveURLs under ``base_url``."""
        body: dict[str, Any] = {}
        study = target_study or (next(iter(self.studies)) if len(self.studies) == 1 else None)
        if study:
            body["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{study}"]}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [_failed_item(*f) for f in self.failed]}
        if self.referenced:
            body["00081199"] = {"vr": "SQ", "Value": [
                {"00081150": {"vr": "UI", "Value": [cls]}, "00081155": {"vr": "UI", "Value": [sop]},
                 "00081190": {"vr": "UR", "Value": [f"{base_url}/studies/{st}/series/{se}/instances/{sop}"]}}
                for cls, sop, st, se in self.referenced]}
        return body


def _failed_item(sop_class: str | None, sop: str | None, reason: FailureReason) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop:
        item["00081155"] = {"vr": "UI", "Value": [sop]}
    item["00081197"] = {"vr": "US", "Value": [int(reason)]}
    return item


def check_content_type(header: str | None) -> str:
    """The boundary of a STOW-RS request, or the error PS3.18 §10.5.1 asks for.

    Raises
    ------
    UnsupportedMediaType
        Not ``multipart/related; type="application/dicom"``.
    InvalidRequest
        No boundary.
    """
    mtype, params = multipart.media_type(header)
    if mtype != "multipart/related":
        raise UnsupportedMediaType(f"STOW-RS takes multipart/related; type=\"{DICOM}\", not {mtype or 'nothing'}")
    part_type = params.get("type", DICOM).lower()
    if part_type != DICOM:
        raise UnsupportedMediaType(f"only type=\"{DICOM}\" parts are supported, not {part_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidRequest("multipart/related without a boundary parameter")
    return boundary


class StoreService:
    """Stores instances into the blob store and the metadata store."""

    def __init__(self, sessions: sessionmaker[Session], blobs: FileBlobStore, overwrite: bool = False) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.overwrite = overwrite

    def store_request(self, stream: IO[bytes], content_type: str | None, target_study: str | None) -> StowResult:
        """Store every part of a STOW-RS body read from ``stream``."""
        boundary = check_content_type(content_type)
        result = StowResult()
        parts = 0
        for headers, sink in multipart.read_parts(stream, boundary, self.blobs.spool):
            parts += 1
            assert isinstance(sink, SpooledBlob)
            part_type, _ = multipart.media_type(headers.get("content-type") or DICOM)
            if part_type != DICOM:
                sink.discard()
                result.failed.append((None, None, FailureReason.CANNOT_UNDERSTAND))
                result.unreadable += 1
                continue
            self.store_spooled(sink, target_study, result)
        if parts == 0:
            raise InvalidRequest("the multipart body holds no part")
        return result

    def store_spooled(self, sink: SpooledBlob, target_study: str | None, result: StowResult) -> Outcome | None:
        """Parse, place and index one spooled instance; record its outcome in ``result``."""
        try:
            sink.close()
            parsed = parse_instance(sink.path)
        except UnreadableInstance as exc:
            sink.discard()
            result.failed.append((exc.sop_class, exc.sop_instance, exc.reason))
            result.unreadable += exc.reason == FailureReason.CANNOT_UNDERSTAND
            return None
        if target_study and parsed.study_uid != target_study:
            sink.discard()  # PS3.18 §10.5.3: an instance of another study than the target URL's
            result.failed.append((parsed.sop_class_uid, parsed.sop_uid, FailureReason.DATA_SET_DOES_NOT_MATCH))
            return None
        try:
            outcome = self._place(sink, parsed)
        except Exception:
            log.exception("storing %s failed", parsed.sop_uid)
            sink.discard()
            result.failed.append((parsed.sop_class_uid, parsed.sop_uid, FailureReason.PROCESSING_FAILURE))
            return None
        if outcome in _FAILURES:
            result.failed.append((parsed.sop_class_uid, parsed.sop_uid, _FAILURES[outcome]))
        else:
            result.referenced.append((parsed.sop_class_uid, parsed.sop_uid, parsed.study_uid, parsed.series_uid))
            result.studies.add(parsed.study_uid)
        return outcome

    def _place(self, sink: SpooledBlob, parsed: ParsedInstance) -> Outcome:
        with self.sessions() as session:
            known = find_instance(session, parsed.sop_uid)
        if known is not None and known[0] == sink.digest:
            sink.discard()  # the same bytes again: nothing to write
            return Outcome.ALREADY_STORED
        if known is not None and not self.overwrite:
            sink.discard()
            return Outcome.DUPLICATE
        key = self.blobs.commit(sink)
        row = InstanceRow(
            study_uid=parsed.study_uid, series_uid=parsed.series_uid, sop_uid=parsed.sop_uid,
            study=parsed.study, series=parsed.series, instance=parsed.instance,
            study_attrs=parsed.study_attrs, series_attrs=parsed.series_attrs, dicom_json=parsed.dicom_json,
            blob_key=key, size=sink.size, digest=sink.digest)
        try:
            with write_session(self.sessions) as session:
                stored = store_instance(session, row, self.overwrite)
        except BaseException:
            self.blobs.delete(key)
            raise
        if stored.obsolete_blob:
            self.blobs.delete(stored.obsolete_blob)
        return stored.outcome
