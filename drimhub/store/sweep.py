"""Remove what a crash can leave behind: temporary files and blobs no row points to."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from drimhub.store.blobs import FileBlobStore
from drimhub.store.models import FhirVersion, Instance


def sweep(sessions: sessionmaker[Session], blobs: FileBlobStore, min_age: float) -> tuple[int, int]:
    """Delete temporary files and orphan blobs older than ``min_age`` seconds.

    A blob is renamed into place before its row commits, so an orphan younger than the longest
    STOW transaction may still be about to be referenced: ``min_age`` must exceed that when
    other processes are storing (see ``DRIMHUB_SWEEP_MIN_AGE``).

    Returns
    -------
    tuple of int
        (temporary files removed, orphan blobs removed).
    """
    def referenced(keys: Iterable[str]) -> set[str]:
        with sessions() as session:
            batch = list(keys)
            found = set(session.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(batch))))
            # FHIR Binary bytes: every version keeps its blob (vread, history)
            return found | set(session.scalars(select(FhirVersion.blob_key).where(FhirVersion.blob_key.in_(batch))))

    return blobs.sweep(referenced, min_age)
