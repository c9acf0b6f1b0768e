"""A push: STOW-RS of one stored study's instances to a peer, in bounded batches (no Flask here).

Never lost, never duplicated at the peer:

- Instances go in the order of their rows (``Instance.pk``), a batch at a time: at most
  :data:`BATCH_INSTANCES` instances and about :data:`BATCH_BYTES` bytes are in memory, never
  the whole study. After each batch the peer acknowledged, the job records the last row sent
  (its cursor) and the count; a later attempt resumes after the cursor.
- A batch that may or may not have reached the peer (time-out, lost answer, worker killed) is
  sent again whole. Each instance is re-encoded from the stored file by pydicom, which is
  deterministic: the same stored file gives the same bytes every time, and a drimhub peer
  answers an identical re-sent instance (same SOP Instance UID, same bytes) as stored
  (ReferencedSOPSequence), without a second copy.
- An instance the peer lists in its FailedSOPSequence (0008,1198), or leaves out of its
  ReferencedSOPSequence (0008,1199), fails the attempt with that reason (PS3.18 §10.5.3).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pydicom
import requests
from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from drimhub.dicomweb.status import FailureReason, is_server_side
from drimhub.store.blobs import FileBlobStore
from drimhub.store.models import Instance, Series, Study

log = logging.getLogger(__name__)

#: Most instances sent in one STOW-RS request.
BATCH_INSTANCES = 25
#: About the most bytes of stored instances sent in one request (one larger instance goes alone):
#: dicomweb-client builds each request's body in memory.
BATCH_BYTES = 64 * 1024 * 1024

#: ReferencedSOPSequence, FailedSOPSequence, ReferencedSOPInstanceUID, FailureReason (PS3.18 Table 10.5.3-2).
_REFERENCED, _FAILED, _SOP, _REASON = 0x00081199, 0x00081198, 0x00081155, 0x00081197


class StoreClient(Protocol):
    """What a push needs of a :class:`dicomweb_client.DICOMwebClient`."""

    def store_instances(self, datasets: Sequence[Dataset], study_instance_uid: str | None = None) -> Dataset: ...


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


def count_instances(session: Session, study_uid: str) -> int:
    """Instances stored in study ``study_uid``."""
    stmt = (select(func.count(Instance.pk)).join(Series, Instance.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk).where(Study.study_uid == study_uid))
    return int(session.scalar(stmt) or 0)


def next_batch(session: Session, study_uid: str, after_pk: int) -> list[Row]:
    """The next instances of the study after row ``after_pk``: at most :data:`BATCH_INSTANCES`,
    and no more than :data:`BATCH_BYTES` in all unless the first alone is larger."""
    stmt = (select(Instance.pk, Instance.sop_uid, Instance.blob_key, Instance.size)
            .join(Series, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
            .where(Study.study_uid == study_uid, Instance.pk > after_pk)
            .order_by(Instance.pk).limit(BATCH_INSTANCES))
    batch: list[Row] = []
    size = 0
    for row in session.execute(stmt):
        if batch and size + row.size > BATCH_BYTES:
            break
        batch.append(Row(*row))
        size += row.size
    return batch


def encode(blobs: FileBlobStore, blob_key: str) -> Dataset:
    """The stored instance as a data set (read whole: its pixel data is sent)."""
    with blobs.open(blob_key) as f:
        return pydicom.dcmread(f)


def encoded_bytes(dataset: Dataset) -> bytes:
    """The bytes dicomweb-client sends for ``dataset`` (``pydicom.dcmwrite``, as its store_instances does)."""
    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset)
    return out.getvalue()


def batches(sessions: sessionmaker[Session], study_uid: str, after_pk: int) -> Iterator[list[Row]]:
    """The study's instances after ``after_pk``, a batch at a time (each read in a short session)."""
    while True:
        with sessions() as session:
            batch = next_batch(session, study_uid, after_pk)
        if not batch:
            return
        yield batch
        after_pk = batch[-1].pk


def send(sessions: sessionmaker[Session], blobs: FileBlobStore, client: StoreClient, study_uid: str,
         after_pk: int, on_batch: Callable[[int, int], None]) -> None:
    """Send the study's instances after row ``after_pk`` to the peer behind ``client``.

    Parameters
    ----------
    on_batch : callable
        Called with (last row sent, instances sent) after each batch the peer acknowledged.

    Raises
    ------
    PushError
        The peer is unreachable, refused the request or failed an instance.
    """
    for batch in batches(sessions, study_uid, after_pk):
        datasets = [encode(blobs, row.blob_key) for row in batch]
        answer = _store(client, datasets, study_uid)
        check_answer(answer, [row.sop_uid for row in batch])
        del datasets
        on_batch(batch[-1].pk, len(batch))


def _store(client: StoreClient, datasets: list[Dataset], study_uid: str) -> Dataset:
    try:
        return client.store_instances(datasets, study_instance_uid=study_uid)
    except requests.HTTPError as exc:  # 4xx/5xx: a 409 or 503 still carries the FailedSOPSequence
        response = exc.response
        body = _json(response)
        if body is not None and isinstance(body, dict) and f"{_FAILED:08X}" in body:
            return Dataset.from_json(body)
        status = response.status_code if response is not None else "?"
        message = body.get("error_description") or body.get("message") if isinstance(body, dict) else None
        raise PushError(f"the peer answered HTTP {status}" + (f": {message}" if message else "")) from exc
    except requests.RequestException as exc:
        raise PushError(f"the peer is unreachable: {type(exc).__name__}: {exc}") from exc


def _json(response: requests.Response | None) -> Any:
    if response is None:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def check_answer(answer: Dataset, sent: list[str]) -> None:
    """Raise :class:`PushError` unless the peer's STOW-RS answer references every instance sent.

    A failure reason of the peer's own (0110H processing failure, A7xxH out of resources) may pass
    (a later attempt); any other (a duplicate with other bytes, not authorized, cannot
    understand) is permanent.
    """
    failed = answer.get(_FAILED)
    if failed is not None and failed.value:
        reasons = [(item.get(_SOP).value if _SOP in item else "?",
                    int(item[_REASON].value) if _REASON in item else FailureReason.PROCESSING_FAILURE)
                   for item in failed.value]
        sop, reason = reasons[0]
        text = f"the peer refused {len(reasons)} instance(s), first {sop}: failure reason {reason:04X}H"
        try:
            text += f" ({FailureReason(reason).name.replace('_', ' ').lower()})"
        except ValueError:
            pass  # a code of the peer's own
        raise PushError(text, permanent=not all(is_server_side(r) for _, r in reasons))
    referenced = answer.get(_REFERENCED)
    acknowledged = {item.get(_SOP).value for item in referenced.value if _SOP in item} if referenced else set()
    missing = [sop for sop in sent if sop not in acknowledged]
    if missing:
        raise PushError(f"the peer did not acknowledge {len(missing)} instance(s), first {missing[0]}")
