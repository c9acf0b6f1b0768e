"""FHIR resources that follow from stored DICOM instances, written in the STOW's own transaction.

- a new study's patient module is merged into a FHIR Patient of the same organisation, found by
  identifier (Patient ID with its issuer, :mod:`drimhub.mappings.identifiers`) or created;
  ``study.patient_ref`` records it (ImagingStudy.subject);
- an Encapsulated PDF or a Basic / Enhanced / Comprehensive SR becomes a DiagnosticReport.

A data set that cannot be mapped is logged and skipped: the instance stays stored, the STOW
does not fail because of its FHIR view.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from drimhub.store.blobs import FileBlobStore
from drimhub.store.index import InstanceRow, StoreResult


def instances_stored(session: Session, blobs: FileBlobStore, rows: list[InstanceRow], results: list[StoreResult],
                     org: str) -> None:
    """Derive the FHIR resources of ``rows`` (``results`` in the same order) in ``session``'s transaction."""
