"""FHIR resources that follow from stored DICOM instances, written in the STOW's own transaction.

- a study of the batch without a FHIR Patient (``study.patient_ref`` NULL) gets one: its patient
  module (:mod:`drimhub.mappings.patient`) is merged into a Patient of the same organisation
  found by any of its identifiers (Patient ID with its issuer first, then the Other Patient IDs),
  or created. A Patient found is not overwritten: demographics a RIS sent over FHIR win; the
  identifiers it lacks (an INS arriving with a later study) are added, unless another Patient
  of the organisation already holds them. ``study.patient_ref`` records it (ImagingStudy.subject);
- an Encapsulated PDF or a Basic / Enhanced / Comprehensive SR stored or replaced becomes a
  DiagnosticReport (:mod:`drimhub.mappings.reports`) keyed on its identifier
  ``urn:dicom:uid|urn:oid:<SOP Instance UID>``: created once, updated when the instance is
  replaced by other content, untouched when the same content comes again. Its forms (the PDF,
  the HTML rendering of an SR) are Binary resources;
- when such an instance is deleted over DICOMweb, its DiagnosticReport is deleted too (a FHIR
  delete: its history stays), so that a report never outlives the document it was read from
  (a study deleted because it was filed under the wrong patient takes its report with it).

Writers of one identifier are serialised on :func:`drimhub.fhir.locks.identifier_lock_keys`,
the keys a conditional create, update or delete naming that identifier and a Patient's delete
take too. Images cost a SOP Class check each and the batch one query for its studies. A data
set that cannot be mapped, or whose resource is refused (422), is logged and skipped inside a
savepoint: the instance stays stored, the STOW does not fail because of its FHIR view. Database errors propagate (the STOW
retries or fails as a whole).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pydicom
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from drimhub.fhir import locks, resources
from drimhub.mappings import patient as patient_mapping
from drimhub.mappings import reports
from drimhub.mappings.dicom import dataset
from drimhub.mappings.identifiers import DICOM_UID_SYSTEM, uid_urn
from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore
from drimhub.store.index import InstanceRow, Outcome, StoreResult
from drimhub.store.retrieve import DeletedInstance
from drimhub.store.models import Study

log = logging.getLogger(__name__)

_WRITTEN = (Outcome.STORED, Outcome.REPLACED)
_LINKABLE = (Outcome.STORED, Outcome.REPLACED, Outcome.ALREADY_STORED)


def instances_stored(session: Session, blobs: FileBlobStore, rows: list[InstanceRow], results: list[StoreResult],
                     org: str) -> None:
    """Derive the FHIR resources of ``rows`` (``results`` in the same order) in ``session``'s transaction."""
    firsts: dict[str, InstanceRow] = {}
    for row, result in zip(rows, results):
        if result.outcome in _LINKABLE:
            firsts.setdefault(row.study_uid, row)
    if not firsts:
        return
    refs = _link_patients(session, blobs, firsts, org)
    for row, result in zip(rows, results):
        if result.outcome in _WRITTEN and row.sop_class_uid in reports.REPORT_CLASSES:
            with _skipped_on_error(session, f"report of {row.sop_uid}"):
                _write_report(session, blobs, row, refs.get(row.study_uid), org)


def instances_deleted(session: Session, deleted: list[DeletedInstance]) -> None:
    """Delete the DiagnosticReports derived from the report instances of ``deleted`` (same transaction)."""
    for instance in deleted:
        if instance.sop_class_uid not in reports.REPORT_CLASSES:
            continue
        access = Access.of_org(instance.org)
        for report in resources.find_by_identifier(session, "DiagnosticReport", DICOM_UID_SYSTEM,
                                                   uid_urn(instance.sop_uid), instance.org):
            resources.delete(session, "DiagnosticReport", report.id, access)


@contextmanager
def _skipped_on_error(session: Session, what: str) -> Iterator[None]:
    """Run a derivation in a savepoint; a mapping or validation error rolls it back and is logged."""
    try:
        with session.begin_nested():
            yield
    except SQLAlchemyError:
        raise
    except Exception:  # a data set that cannot be mapped must not fail the STOW
        log.exception("%s: not derived into FHIR, the instance stays stored", what)


# --- (a) Patient ------------------------------------------------------------------------------

def _link_patients(session: Session, blobs: FileBlobStore, firsts: dict[str, InstanceRow], org: str) -> dict[str, str]:
    """``study_uid → Patient id`` for the batch's studies of ``org``, new links made for those without."""
    found = session.execute(select(Study.study_uid, Study.patient_ref)
                            .where(Study.study_uid.in_(list(firsts)), Study.org == org)).all()
    refs = {uid: ref for uid, ref in found if ref is not None}
    for uid in sorted(uid for uid, ref in found if ref is None):
        with _skipped_on_error(session, f"Patient of study {uid}"):
            patient_id = _merge_patient(session, blobs, orjson.loads(firsts[uid].study_attrs), org)
            session.execute(update(Study).where(Study.study_uid == uid, Study.org == org)
                            .values(patient_ref=patient_id))
            refs[uid] = patient_id
    return refs


def _merge_patient(session: Session, blobs: FileBlobStore, study_attrs: dict[str, Any], org: str) -> str:
    """The id of the Patient of ``org`` holding one of the patient module's identifiers (created if none)."""
    resource = patient_mapping.patient(dataset(study_attrs))
    idents: list[dict[str, Any]] = resource.get("identifier", [])
    locks.lock_all(session, locks.identifier_lock_keys("Patient", org, [i["value"] for i in idents]))
    holders = [resources.find_by_identifier(session, "Patient", i.get("system"), i["value"], org) for i in idents]
    target = next((found[0] for found in holders if found), None)
    if target is None:
        return resources.create(session, blobs, resource, org).id
    missing = [ident for ident, found in zip(idents, holders) if not found]
    if missing:
        content = {k: v for k, v in target.content.items() if k != "meta"}
        content["identifier"] = [*content.get("identifier", []), *missing]
        resources.update(session, blobs, "Patient", target.id, content, org, Access.of_org(org))
    return target.id


# --- (b) DiagnosticReport ---------------------------------------------------------------------

def _same(existing: dict[str, Any], resource: dict[str, Any], forms: list[dict[str, Any]]) -> bool:
    """True when ``existing`` already says what ``resource`` with ``forms`` would (ids, meta and form URLs aside)."""
    def strip(content: dict[str, Any], presented: list[dict[str, Any]]) -> dict[str, Any]:
        body = {k: v for k, v in content.items() if k not in ("id", "meta", "presentedForm")}
        return {**body, "presentedForm": [{k: v for k, v in f.items() if k != "url"} for f in presented]}
    return strip(existing, existing.get("presentedForm", [])) == strip(resource, forms)


def _write_report(session: Session, blobs: FileBlobStore, row: InstanceRow, subject: str | None, org: str) -> None:
    # Runs inside the STOW's write transaction: it reads the instance and copies its forms to
    # blobs there. Kept so on purpose: only report instances (an Encapsulated PDF or an SR, a few
    # hundred kB, already on local disk) pay for it, and whether a report is written at all
    # depends on the outcome of the indexing in this same transaction (stored, replaced, or
    # already there with the same content). Preparing the forms before the transaction would
    # spool blobs that are then often unused, to be cleaned up on every path; raw Binary
    # uploads, whose size and pace the client sets, are spooled before their transaction.
    with blobs.open(row.blob_key) as f:
        ds = pydicom.dcmread(f)
    draft = reports.report(ds)
    if draft is None:
        return
    resource = dict(draft.resource)
    if subject is not None:
        resource["subject"] = {"reference": f"Patient/{subject}"}
    value = uid_urn(row.sop_uid)
    locks.lock_all(session, locks.identifier_lock_keys("DiagnosticReport", org, [value]))
    existing = resources.find_by_identifier(session, "DiagnosticReport", DICOM_UID_SYSTEM, value, org)
    if existing and _same(existing[0].content, resource, [reports.attachment(f, "") for f in draft.forms]):
        return
    resource["presentedForm"] = [
        reports.attachment(form, f"Binary/{resources.create_binary(session, blobs, form.content_type, [form.data], org).id}")
        for form in draft.forms]
    if existing:
        resource["id"] = existing[0].id
        resources.update(session, blobs, "DiagnosticReport", existing[0].id, resource, org, Access.of_org(org))
    else:
        resources.create(session, blobs, resource, org)
