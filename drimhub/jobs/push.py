"""A push: STOW-RS of one stored study's instances to a peer, checked against what the peer holds
(no Flask here).

Never lost, never duplicated at the peer, whatever its duplicate policy:

- Each round first asks the peer which instances of the study it holds (QIDO-RS, instance
  level, ``StudyInstanceUID``, with dicomweb-client) and sends only the others; the push is
  done only when the peer holds every instance stored here (a round after the last send
  verifies it). An instance stored here while a round runs, whatever its row number, is sent
  by the next round; at most :data:`MAX_ROUNDS` rounds per attempt.
- Instances go in bounded batches (:data:`BATCH_INSTANCES`, about :data:`BATCH_BYTES`): each
  request's multipart body is streamed from the stored blobs, a chunk at a time, so memory
  stays bounded. The bytes sent are the stored file's, unchanged: dicomweb-client's
  ``store_instances`` takes pydicom data sets and re-encodes them, which may change bytes
  (exact copies are what a push promises).
- A batch that may or may not have reached the peer (time-out, lost answer, worker killed) is
  sent again by a later attempt, minus what the peer then holds. A duplicate failure (0111H, or
  45070 of Microsoft's DICOM service) for an instance the peer then holds counts as stored.
- Any other failure in the peer's FailedSOPSequence (0008,1198) fails the attempt with its
  reason (PS3.18 §10.5.3): the peer's own trouble (0110H, A7xxH) may pass, others are permanent.
  HTTP 400, 403, 404 and 413 are permanent; after a 401 the cached token is dropped and the
  request sent once more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from drimhub.dicomweb import multipart
from drimhub.dicomweb.status import FailureReason, is_server_side
from drimhub.store.blobs import FileBlobStore, read_range
from drimhub.store.models import Instance, Series, Study

log = logging.getLogger(__name__)

#: Most instances sent in one STOW-RS request.
BATCH_INSTANCES = 25
#: About the most bytes of stored instances sent in one request (one larger instance goes alone).
BATCH_BYTES = 64 * 1024 * 1024
#: Rounds (ask the peer, send what it lacks) of one attempt before it gives up (a study that keeps
#: growing, a peer that loses what it acknowledged): the next attempt starts again.
MAX_ROUNDS = 4
#: Longest answer read from the peer (a STOW-RS or QIDO-RS answer, DICOM JSON).
MAX_ANSWER = 32 * 1024 * 1024
#: Failure reasons of a duplicate SOP Instance: DICOM's 0111H, and 45070 (Microsoft's DICOM
#: service: "the instance already exists").
DUPLICATE_REASONS = frozenset({int(FailureReason.DUPLICATE_SOP_INSTANCE), 45070})
#: HTTP statuses that fail a push for good: sending the same request again cannot succeed.
PERMANENT_STATUSES = frozenset({400, 403, 404, 413})

DICOM = "application/dicom"
#: ReferencedSOPSequence, FailedSOPSequence, ReferencedSOPInstanceUID, FailureReason (PS3.18 Table 10.5.3-2).
_REFERENCED, _FAILED, _SOP, _REASON = 0x00081199, 0x00081198, 0x00081155, 0x00081197
_SOP_UID = "00080018"


class PushError(Exception):
    """An attempt of a push failed; ``permanent``: trying again would fail the same way."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Row:
    """One instance to send."""

    pk: int
    sop_uid: str
    blob_key: str
    size: int


@dataclass(frozen=True)
class PeerLink:
    """How a push reaches its peer.

    Attributes
    ----------
    qido : dicomweb_client.DICOMwebClient
        Searches the peer (what it holds).
    http : requests.Session
        The guarded session (:func:`drimhub.federation.outbound.peer_session`) the STOW-RS
        requests go through.
    stow_url : str
        The peer's Store Instances URL of the study (``{root}/studies/{uid}``).
    drop_token : callable
        Forget the cached token (after a 401).
    """

    qido: Any
    http: requests.Session
    stow_url: str
    drop_token: Callable[[], None]


def study_rows(session: Session, study_uid: str) -> list[Row]:
    """The instances stored in study ``study_uid`` (no bytes), in row order."""
    stmt = (select(Instance.pk, Instance.sop_uid, Instance.blob_key, Instance.size)
            .join(Series, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
            .where(Study.study_uid == study_uid).order_by(Instance.pk))
    return [Row(*row) for row in session.execute(stmt)]


def batches(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """``rows`` in batches of at most :data:`BATCH_INSTANCES` and :data:`BATCH_BYTES` (one larger
    instance goes alone)."""
    batch: list[Row] = []
    size = 0
    for row in rows:
        if batch and (len(batch) >= BATCH_INSTANCES or size + row.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row.size
    if batch:
        yield batch


def held_by_peer(link: PeerLink, study_uid: str) -> set[str]:
    """SOP Instance UIDs of ``study_uid`` the peer holds (QIDO-RS, instance level, paged by offset).

    Raises
    ------
    PushError
        The peer cannot be asked.
    """
    held: set[str] = set()
    offset = 0
    while True:
        page = _call(lambda: link.qido.search_for_instances(
            search_filters={"StudyInstanceUID": study_uid}, fields=[_SOP_UID], offset=offset or None))
        found = {value for item in page if isinstance(item, dict)
                 for value in ((item.get(_SOP_UID) or {}).get("Value") or [])[:1] if isinstance(value, str)}
        if not page or found <= held:  # the end, or a peer that ignores offset
            return held
        held |= found
        offset += len(page)


def push_study(sessions: sessionmaker[Session], blobs: FileBlobStore, link: PeerLink, study_uid: str,
               report: Callable[[int, int], None], heartbeat: Callable[[], None]) -> int:
    """Send the peer what it lacks of study ``study_uid`` until it holds every instance stored here.

    Parameters
    ----------
    report : callable
        Called with (instances at the peer or sent, instances stored here) after each check and batch.
    heartbeat : callable
        Called as the bytes stream (renews the job's lease; may raise to stop the push).

    Returns
    -------
    int
        The instances of the study, all held by the peer.

    Raises
    ------
    PushError
        The peer is unreachable, refused a request or an instance, or still lacks instances
        after :data:`MAX_ROUNDS` rounds.
    """
    duplicates: dict[str, int] = {}
    for _ in range(MAX_ROUNDS):
        held = held_by_peer(link, study_uid)
        with sessions() as session:
            rows = study_rows(session, study_uid)
        missing = [row for row in rows if row.sop_uid not in held]
        done = len(rows) - len(missing)
        report(done, len(rows))
        if not missing:
            return len(rows)
        refused = [row.sop_uid for row in missing if row.sop_uid in duplicates]
        if refused:
            raise PushError(f"the peer refused {len(refused)} instance(s) as duplicates (first {refused[0]}, "
                            f"failure reason {duplicates[refused[0]]:04X}H) but does not hold them", permanent=True)
        for batch in batches(missing):
            duplicates.update(check_answer(store(link, blobs, batch, heartbeat), [row.sop_uid for row in batch]))
            done += len(batch)
            report(done, len(rows))
    raise PushError(f"the peer still lacked instances of the study after {MAX_ROUNDS} rounds")


def _blob_chunks(blobs: FileBlobStore, key: str, heartbeat: Callable[[], None]) -> Iterator[bytes]:
    with blobs.open(key) as f:
        for chunk in read_range(f):
            heartbeat()
            yield chunk


def store(link: PeerLink, blobs: FileBlobStore, batch: list[Row], heartbeat: Callable[[], None]) -> Dataset:
    """POST one batch (the stored bytes, streamed as one multipart/related body) to the peer's
    STOW-RS URL; its answer as a data set.

    Raises
    ------
    PushError
        The peer is unreachable, or answered an HTTP error without a FailedSOPSequence.
    """
    for attempt in (1, 2):
        boundary = multipart.new_boundary()
        body = multipart.write_parts(((DICOM, _blob_chunks(blobs, row.blob_key, heartbeat)) for row in batch),
                                     boundary)
        headers = {"Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        response = _call(lambda: link.http.post(link.stow_url, data=body, headers=headers))
        if response.status_code == 401 and attempt == 1:
            response.close()
            link.drop_token()  # the peer no longer takes the cached token: get a new one, once
            continue
        return _answer(response)
    raise AssertionError("unreachable")


def _answer(response: requests.Response) -> Dataset:
    body = _json(response)
    if isinstance(body, dict) and (f"{_FAILED:08X}" in body or f"{_REFERENCED:08X}" in body):
        return Dataset.from_json(body)  # a 409 or 503 still carries the FailedSOPSequence
    if response.ok:
        raise PushError(f"the peer answered HTTP {response.status_code} without a Store Instances response")
    message = (body.get("error_description") or body.get("message")) if isinstance(body, dict) else None
    raise PushError(f"the peer answered HTTP {response.status_code}" + (f": {message}" if message else ""),
                    permanent=response.status_code in PERMANENT_STATUSES)


def _call(request: Callable[[], Any]) -> Any:
    """Run one request to the peer; its errors as :class:`PushError`."""
    try:
        return request()
    except requests.HTTPError as exc:  # dicomweb-client raises on an error status
        status = exc.response.status_code if exc.response is not None else None
        raise PushError(f"the peer answered HTTP {status or '?'}", permanent=status in PERMANENT_STATUSES) from exc
    except requests.RequestException as exc:
        raise PushError(f"the peer is unreachable: {type(exc).__name__}: {exc}") from exc


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def check_answer(answer: Dataset, sent: list[str]) -> dict[str, int]:
    """Check the peer's STOW-RS answer to a batch: every instance sent is referenced, or failed as
    a duplicate (returned, sop → reason: counted as stored once the peer holds it).

    Raises
    ------
    PushError
        Another failure: the peer's own trouble (0110H processing failure, A7xxH out of
        resources) passes (a later attempt), any other (not authorized, cannot understand...)
        is permanent; or an instance neither referenced nor failed.
    """
    failed = answer.get(_FAILED)
    reasons = [(str(item[_SOP].value) if _SOP in item else "?",
                int(item[_REASON].value) if _REASON in item else int(FailureReason.PROCESSING_FAILURE))
               for item in (failed.value if failed is not None and failed.value else [])]
    duplicates = {sop: reason for sop, reason in reasons if reason in DUPLICATE_REASONS}
    others = [(sop, reason) for sop, reason in reasons if reason not in DUPLICATE_REASONS]
    if others:
        sop, reason = others[0]
        text = f"the peer refused {len(others)} instance(s), first {sop}: failure reason {reason:04X}H"
        try:
            text += f" ({FailureReason(reason).name.replace('_', ' ').lower()})"
        except ValueError:
            pass  # a code of the peer's own
        raise PushError(text, permanent=not all(is_server_side(r) for _, r in others))
    referenced = answer.get(_REFERENCED)
    acknowledged = {item.get(_SOP).value for item in referenced.value if _SOP in item} if referenced else set()
    missing = [sop for sop in sent if sop not in acknowledged and sop not in duplicates]
    if missing:
        raise PushError(f"the peer did not acknowledge {len(missing)} instance(s), first {missing[0]}")
    return duplicates


def throttled(action: Callable[[], None], every: float) -> Callable[[], None]:
    """``action`` run at most once per ``every`` seconds (the lease heartbeat of a streamed body)."""
    last = time.monotonic()

    def beat() -> None:
        nonlocal last
        if time.monotonic() - last >= every:
            action()
            last = time.monotonic()

    return beat
