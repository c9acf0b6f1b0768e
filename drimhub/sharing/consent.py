"""A patient's opposition to sharing (FHIR R4 Consent, ``provision.type = deny``).

It refuses shares, pushes and peers' (federated) access to that patient's studies; local care
access stays.
"""

from __future__ import annotations

from sqlalchemy.orm import Session


def opposed_patients(session: Session) -> frozenset[str]:
    """Ids of the FHIR Patients with an active Consent denying sharing."""
    raise NotImplementedError


def refusal(session: Session, study_uid: str) -> str | None:
    """Why ``study_uid`` may not leave its organisation (its patient opposed sharing), or None."""
    raise NotImplementedError


def check_shareable(session: Session, study_uid: str) -> None:
    """Raise :class:`~drimhub.errors.Forbidden` with the reason when :func:`refusal` gives one."""
    reason = refusal(session, study_uid)
    if reason is not None:
        from drimhub.errors import Forbidden

        raise Forbidden(reason)
