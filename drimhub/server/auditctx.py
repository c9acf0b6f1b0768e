"""What one request touched, noted by the views, read by the audit recorder.

A view calls :func:`involve` for each study (and its patient) it reads, writes, finds or
deletes; after the response, the audit recorder writes one AuditEvent per patient involved
(IHE BALP). Nothing here touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import g


@dataclass
class Touched:
    """Patients and studies involved in the request, keyed by patient (None: unknown)."""

    studies: dict[str | None, set[str]] = field(default_factory=dict)
    patient_names: dict[str | None, str] = field(default_factory=dict)


def involve(patient: str | None, study_uid: str | None = None, issuer: str | None = None) -> None:
    """Note that the request involves ``study_uid`` of ``patient`` (PatientID, with its issuer)."""
    touched: Touched = g.setdefault("audit_touched", Touched())
    key = f"{issuer}|{patient}" if issuer and patient else patient
    studies = touched.studies.setdefault(key, set())
    if study_uid:
        studies.add(study_uid)


def touched() -> Touched:
    """What the current request involved so far."""
    result: Touched = g.get("audit_touched") or Touched()
    return result
