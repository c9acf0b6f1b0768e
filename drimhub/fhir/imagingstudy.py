"""ImagingStudy, derived on read from the stored study / series / instance rows (never a copy).

Mapping: :mod:`drimhub.mappings.imagingstudy`; rows: :mod:`drimhub.store.studyrows`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from drimhub.store.access import Access


def build(session: Session, study_uids: list[str], base: str) -> dict[str, dict[str, Any]]:
    """ImagingStudy JSON per Study Instance UID (id = the UID) for the studies of ``study_uids`` that exist."""
    raise NotImplementedError


def read(session: Session, uid: str, access: Access, base: str) -> dict[str, Any]:
    """``ImagingStudy/<uid>`` when ``access`` sees the study; NotFound otherwise."""
    raise NotImplementedError
