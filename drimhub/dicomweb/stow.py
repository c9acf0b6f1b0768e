"""STOW-RS: Store Instances (PS3.18 §10.5).

Each part of the request is spooled to a temporary file while it arrives, its header parsed
(pixel data never loaded), its blob moved into place, then its rows committed in a short
transaction of their own: an instance reported in ReferencedSOPSequence is durably stored, and a
failing part never affects the others. The FHIR resources that follow from the instances (the
study's Patient, a DiagnosticReport from an SR or encapsulated PDF) are written in that same
transaction (:mod:`drimhub.fhir.derive`).

Organisations: a new study belongs to the writer's organisation. An instance whose study (or
whose SOP Instance UID) is stored under another organisation, or, for a ``patient/`` scope, that
is not of the token's patient, is refused with Failure Reason 0124H "Refused: Not Authorized"
(PS3.7 Annex C, general failure statuses; PS3.18 Table I.2-2 lets a Store Instances response
use codes beyond its own table) and nothing of that study changes.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from drimhub.dicomweb import delete, multipart
from drimhub.dicomweb.ingest import UnreadableInstance, parse_instance
from drimhub.dicomweb.status import FailureReason, is_server_side, stow_http_status
from drimhub.errors import InvalidRequest, NotFound, UnsupportedMediaType
from drimhub.fhir import derive
from drimhub.sharing import retention
from drimhub.store.access import Access, PatientRef, is_reserved_org
from drimhub.store.blobs import FileBlobStore, SpooledBlob
from drimhub.store.engine import ATTEMPTS, is_transient, write_session
from drimhub.store.index import (IndexEntry, InstanceRow, Known, Outcome, StoreResult, known_instances,
                                 store_instances)
from drimhub.store.models import DEFAULT_ORG, Study

log = logging.getLogger(__name__)

DICOM = "application/dicom"

#: Failure reason of each store outcome that is not a success.
_FAILURES = {
    Outcome.DUPLICATE: FailureReason.DUPLICATE_SOP_INSTANCE,
    Outcome.SERIES_IN_OTHER_STUDY: FailureReason.DATA_SET_DOES_NOT_MATCH,
    Outcome.NOT_AUTHORIZED: FailureReason.NOT_AUTHORIZED,
}


@dataclass
class StowResult:
    """Outcome of one Store Instances request."""

    referenced: list[tuple[str, str, str, str]] = field(default_factory=list)  # class, sop, study, series
    failed: list[tuple[str | None, str | None, FailureReason]] = field(default_factory=list)
    unreadable: int = 0
    studies: set[str] = field(default_factory=set)
    #: (PatientID, IssuerOfPatientID, Study Instance UID) of every instance the request stored or
    #: found already stored in the writer's own studies (the audit's "studies involved").
    touched: set[tuple[str | None, str | None, str]] = field(default_factory=set)

    @property
    def http_status(self) -> int:
        server_side = sum(1 for *_, reason in self.failed if is_server_side(reason))
        return stow_http_status(len(self.referenced), len(self.failed), 0, self.unreadable, server_side)

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


#: Instances indexed per write transaction: large enough to amortise the commit, small enough
#: to keep the write lock short and the parsed headers of a huge request out of memory.
BATCH = 50

_Pending = tuple[SpooledBlob, IndexEntry]

@dataclass
class _Reading:
    """The spooled parts of one request that are not committed yet (discarded on an error)."""

    pending: list[_Pending] = field(default_factory=list)
    #: The part the multipart reader has handed over and that is not in ``pending`` yet.
    sink: SpooledBlob | None = None
    parts: int = 0
    #: Batches committed so far.
    batches: int = 0

    def discard(self) -> None:
        for sink, _ in self.pending:
            sink.discard()
        if self.sink is not None:
            self.sink.discard()


class StoreService:
    """Stores instances into the blob store and the metadata store.

    Parameters
    ----------
    sessions : sessionmaker
        The session factory (each batch is indexed in a write transaction of its own).
    blobs : FileBlobStore
        Where the instances' bytes go.
    overwrite : bool
        Policy for a known SOP Instance UID with other bytes: replace it (True) or refuse it.
    org : str
        The writer's organisation: it owns the studies it creates and writes only into its own.
    patient : PatientRef, optional
        The only patient the writer may store instances of (``patient/`` scopes).
    node : str
        The node as audit events name it (the deletion of a cached copy the writer replaces).
    """

    def __init__(self, sessions: sessionmaker[Session], blobs: FileBlobStore, overwrite: bool = False,
                 org: str = DEFAULT_ORG, patient: PatientRef | None = None, node: str = retention.NODE_URN) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.overwrite = overwrite
        self.org = org
        self.patient = patient
        self.node = node

    def store_request(self, stream: IO[bytes], content_type: str | None, target_study: str | None) -> StowResult:
        """Store every part of a STOW-RS body read from ``stream``.

        A body found malformed after some batches were committed is not a bare 400: those
        instances are durably stored, so the answer references them and adds a failure
        C000H for the rest (PS3.18 Table 10.5.3-1: 202 when some instances were stored).

        Raises
        ------
        InvalidRequest
            The body is malformed (or holds no part) and nothing of it was committed.
        """
        boundary = check_content_type(content_type)
        result = StowResult()
        state = _Reading()
        try:
            try:
                self._read(stream, boundary, target_study, result, state)
            except InvalidRequest:
                if not state.batches:
                    raise
                log.warning("malformed multipart body after %d committed batch(es)", state.batches, exc_info=True)
                result.failed.append((None, None, FailureReason.CANNOT_UNDERSTAND))
                result.unreadable += 1
            if state.parts == 0:
                raise InvalidRequest("the multipart body holds no part")
            self._commit(state.pending, result)
        except BaseException:
            state.discard()
            raise
        return result

    def _read(self, stream: IO[bytes], boundary: str, target_study: str | None, result: StowResult,
              state: _Reading) -> None:
        """Spool and parse each part, committing every :data:`BATCH` instances."""
        for headers, sink in multipart.read_parts(stream, boundary, self.blobs.spool):
            state.parts += 1
            assert isinstance(sink, SpooledBlob)
            state.sink = sink  # ours from now on: discarded if anything escapes before it is pending
            part_type, _ = multipart.media_type(headers.get("content-type") or DICOM)
            if part_type != DICOM:
                sink.discard()
                result.failed.append((None, None, FailureReason.CANNOT_UNDERSTAND))
                result.unreadable += 1
            elif (item := self._prepare(sink, target_study, result)) is not None:
                state.pending.append(item)
            state.sink = None
            if len(state.pending) >= BATCH:
                self._commit(state.pending, result)
                state.pending = []
                state.batches += 1

    def store_one(self, sink: SpooledBlob, result: StowResult) -> Outcome | None:
        """Store one spooled instance (the import command); None when it failed."""
        item = self._prepare(sink, None, result)
        return self._commit([item], result)[0] if item is not None else None

    def _prepare(self, sink: SpooledBlob, target_study: str | None, result: StowResult) -> _Pending | None:
        """Parse a spooled part; record a failure and discard it when it cannot be stored."""
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
        if self.patient and not self.patient.matches(parsed.study.get("patient_id"),
                                                     parsed.study.get("issuer_of_patient_id")):
            sink.discard()  # a patient/ scope writes that patient's instances only
            result.failed.append((parsed.sop_class_uid, parsed.sop_uid, FailureReason.NOT_AUTHORIZED))
            return None
        return sink, parsed

    def _commit(self, pending: list[_Pending], result: StowResult) -> list[Outcome | None]:
        """Move the blobs of new instances into place, then index them in one transaction."""
        if not pending:
            return []
        self._evict_cached_copies({parsed.study_uid for _, parsed in pending})
        with self.sessions() as session:
            known = known_instances(session, [parsed.sop_uid for _, parsed in pending])
        outcomes: list[Outcome | None] = []
        placed: list[tuple[IndexEntry, InstanceRow]] = []
        for sink, parsed in pending:
            seen = known.get(parsed.sop_uid)
            if seen is not None and (seen.org != self.org or seen.digest == sink.digest or not self.overwrite):
                sink.discard()  # another organisation's, the same bytes again (idempotent), or a duplicate
                outcome = (Outcome.NOT_AUTHORIZED if seen.org != self.org else
                           Outcome.ALREADY_STORED if seen.digest == sink.digest else Outcome.DUPLICATE)
                outcomes.append(self._record(parsed, outcome, result))
                continue
            placed.append((parsed, self._row(parsed, sink, self.blobs.commit(sink))))
        self.blobs.flush([row.blob_key for _, row in placed])  # durable before any row points to them
        try:
            stored = self._index([row for _, row in placed])
        except Exception:
            log.exception("indexing %d instances failed", len(placed))
            return outcomes + self._after_failed_index(placed, result)
        for (parsed, _), done in zip(placed, stored):
            if done.obsolete_blob:
                self.blobs.delete(done.obsolete_blob)
            outcomes.append(self._record(parsed, done.outcome, result))
        return outcomes

    def _evict_cached_copies(self, study_uids: set[str]) -> None:
        """Delete the peers' cached copies (rows and blobs) of ``study_uids`` before an organisation
        stores into them: the organisation's own instances replace a copy (a study pushed here after
        it was viewed through the federated root)."""
        if is_reserved_org(self.org):
            return  # the cache itself writing
        with self.sessions() as session:
            copies = list(session.execute(select(Study.study_uid, Study.org).where(
                Study.study_uid.in_(sorted(study_uids)), Study.origin.is_not(None))))
        for uid, org in copies:
            log.info("study %s: the cached copy of %s gives way to organisation %s's instances", uid, org, self.org)
            try:
                delete.delete(self.sessions, self.blobs, Access(frozenset({org}), cached=True), uid,
                              before=lambda session, uid=uid: retention.audit_deletion(
                                  session, uid, node=self.node, reason=f"cached copy replaced by {self.org}'s instances"))
            except NotFound:
                pass  # gone meanwhile (a purge, another STOW)

    def _after_failed_index(self, placed: list[tuple[IndexEntry, InstanceRow]],
                            result: StowResult) -> list[Outcome | None]:
        """Outcomes of rows whose indexing transaction raised: its COMMIT may still have been applied.

        A COMMIT whose answer was lost (a dropped connection) may have succeeded on the server:
        a row that points at its blob is stored. The blobs of the others are deleted; when not
        even that can be checked, they are left to the sweep, so that no row ever points at a
        deleted blob.
        """
        try:
            with self.sessions() as session:
                known: dict[str, Known] | None = known_instances(session, [parsed.sop_uid for parsed, _ in placed])
        except Exception:
            log.exception("cannot tell whether %d instances were indexed: their blobs stay for the sweep",
                          len(placed))
            known = None
        outcomes: list[Outcome | None] = []
        for parsed, row in placed:
            seen = known.get(parsed.sop_uid) if known is not None else None
            if seen is not None and seen.blob_key == row.blob_key:
                outcomes.append(self._record(parsed, Outcome.STORED, result))
                continue
            if known is not None:
                self.blobs.delete(row.blob_key)
            result.failed.append((parsed.sop_class_uid, parsed.sop_uid, FailureReason.PROCESSING_FAILURE))
            outcomes.append(None)
        return outcomes

    def _index(self, rows: list[InstanceRow]) -> list[StoreResult]:
        """Index ``rows`` in one write transaction, retried on a transient conflict.

        Two concurrent transactions may still deadlock (PostgreSQL aborts one of them), fail to
        serialise, or find a SQLite database locked beyond its busy timeout: the whole
        transaction is then retried, up to :data:`ATTEMPTS` times in all.
        """
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with write_session(self.sessions) as session:
                    results = store_instances(session, rows, self.overwrite, self.org, self.patient)
                    derive.instances_stored(session, self.blobs, rows, results, self.org)
                    return results
            except OperationalError as exc:
                if attempt == ATTEMPTS or not is_transient(exc):
                    raise
                log.warning("indexing %d instances: %s, retrying (attempt %d)", len(rows),
                            type(exc.orig).__name__, attempt + 1)
                time.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _row(parsed: IndexEntry, sink: SpooledBlob, key: str) -> InstanceRow:
        return InstanceRow(parsed, blob_key=key, size=sink.size, digest=sink.digest)

    @staticmethod
    def _record(parsed: IndexEntry, outcome: Outcome, result: StowResult) -> Outcome:
        if outcome is not Outcome.NOT_AUTHORIZED:  # another organisation's study is not "involved"
            result.touched.add((parsed.study.get("patient_id"), parsed.study.get("issuer_of_patient_id"),
                                parsed.study_uid))
        if outcome in _FAILURES:
            result.failed.append((parsed.sop_class_uid, parsed.sop_uid, _FAILURES[outcome]))
        else:
            result.referenced.append((parsed.sop_class_uid, parsed.sop_uid, parsed.study_uid, parsed.series_uid))
            result.studies.add(parsed.study_uid)
        return outcome
