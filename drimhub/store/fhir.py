"""Rows of the stored FHIR resources: current versions, history, search index and visibility.

The service :mod:`drimhub.fhir.resources` owns the rules (validation, ids, ``meta``); this module
only reads and writes rows, in the caller's session and transaction:

- a write is one new :class:`~drimhub.store.models.FhirVersion` plus the updated
  :class:`~drimhub.store.models.FhirResource` (version 1 inserts it); a delete is a version with
  ``content`` None and the current row flagged ``deleted`` (FHIR R4 http.html#delete: the
  history is kept, a read answers 410);
- the index rows (:class:`~drimhub.store.models.FhirIndex`) always describe the current version
  and are replaced with it (a deleted resource has none);
- :func:`visibility` is the one SQL rule of who sees a stored resource.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, false, insert, or_, select, text
from sqlalchemy.orm import Session

from drimhub.store.fhirquery import IndexValue
from drimhub.mappings.identifiers import patient_id_system
from drimhub.store.access import Access
from drimhub.store.models import FhirIndex, FhirResource, FhirVersion, Study
from drimhub.store.network import Manifest

#: The stored type of the manifests' DocumentReferences (drimhub.sharing.manifests).
MANIFEST_TYPE = "DocumentReference"

#: Reference parameters that put a resource in a patient's compartment (R4 compartmentdefinition-patient:
#: DiagnosticReport subject; ImagingStudy subject is answered by the study rows).
COMPARTMENT_PARAMS = ("patient", "subject")


def get(session: Session, type_: str, id_: str, *, for_update: bool = False) -> FhirResource | None:
    """The row of ``type_/id_`` (deleted or not, any organisation), locked with ``for_update``."""
    query = select(FhirResource).where(FhirResource.type == type_, FhirResource.id == id_)
    if for_update:  # and fresh: a row already in the session is read again under the lock
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def get_visible(session: Session, type_: str, id_: str, access: Access) -> FhirResource | None:
    """The row of ``type_/id_`` when ``access`` sees it (deleted or not), else None."""
    query = select(FhirResource).where(FhirResource.type == type_, FhirResource.id == id_,
                                       *visibility(access, type_))
    return session.scalars(query).one_or_none()


def write_version(session: Session, row: FhirResource | None, *, type_: str, id_: str, org: str, version: int,
                  last_updated: datetime, method: str, content: bytes | None,
                  blob_key: str | None = None) -> FhirResource:
    """Make ``version`` the current version of ``type_/id_`` (``row`` None: insert the resource).

    ``content`` None records a delete.
    """
    if row is None:
        row = FhirResource(type=type_, id=id_, org=org, version=version, last_updated=last_updated,
                           deleted=False, content=content, blob_key=blob_key)
        session.add(row)
    else:
        row.version, row.last_updated, row.content, row.blob_key = version, last_updated, content, blob_key
    row.deleted = content is None
    session.flush()
    session.add(FhirVersion(resource_pk=row.pk, type=type_, version=version, last_updated=last_updated,
                            method=method, content=content, blob_key=blob_key))
    session.flush()
    return row


def replace_index(session: Session, row: FhirResource, values: Iterable[IndexValue]) -> None:
    """Replace the index rows of ``row`` by ``values`` (those of its current version)."""
    session.execute(delete(FhirIndex).where(FhirIndex.resource_pk == row.pk))
    rows = [{"resource_pk": row.pk, "type": row.type, "param": v.param, "system": v.system, "value": v.value,
             "exact": v.exact, "low": v.low, "high": v.high, "ref_type": v.ref_type, "ref_id": v.ref_id}
            for v in values]
    if rows:
        session.execute(insert(FhirIndex), rows)


def version_of(session: Session, row: FhirResource, version: int) -> FhirVersion | None:
    """Version ``version`` of the resource of ``row``, or None."""
    return session.scalars(select(FhirVersion).where(FhirVersion.resource_pk == row.pk,
                                                     FhirVersion.version == version)).one_or_none()


def referrers(session: Session, type_: str, id_: str, org: str) -> list[tuple[str, str]]:
    """(type, id) of the current, not deleted resources of ``org`` whose index references ``type_/id_``."""
    query = (select(FhirResource.type, FhirResource.id).distinct()
             .join(FhirIndex, FhirIndex.resource_pk == FhirResource.pk)
             .where(FhirIndex.ref_type == type_, FhirIndex.ref_id == id_, FhirResource.org == org,
                    FhirResource.deleted.is_(False))
             .order_by(FhirResource.type, FhirResource.id).limit(10))
    return [(t, i) for t, i in session.execute(query)]


# --- history ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HistoryEntry:
    """One version, as history lists it."""

    pk: int
    id: str
    version: int
    last_updated: datetime
    method: str
    content: bytes | None


def history(session: Session, type_: str, id_: str | None, access: Access, *, since: datetime | None,
            count: int, before_pk: int | None) -> list[HistoryEntry]:
    """Versions of one resource (``id_``) or of a whole type, newest first (FHIR R4 http.html#history).

    Only resources ``access`` sees now are listed. Paging is by key: ``before_pk`` is the
    ``pk`` of the last entry of the previous page; up to ``count`` entries come back.
    """
    query = (select(FhirVersion.pk, FhirResource.id, FhirVersion.version, FhirVersion.last_updated,
                    FhirVersion.method, FhirVersion.content)
             .join(FhirResource, FhirResource.pk == FhirVersion.resource_pk)
             .where(FhirVersion.type == type_, *visibility(access, type_)))
    if id_ is not None:
        query = query.where(FhirResource.id == id_)
    if since is not None:
        query = query.where(FhirVersion.last_updated >= since)
    if before_pk is not None:
        query = query.where(FhirVersion.pk < before_pk)
    query = query.order_by(FhirVersion.pk.desc()).limit(count)
    return [HistoryEntry(*r) for r in session.execute(query)]


# --- who sees what ----------------------------------------------------------------------------

def _patients_of(access: Access) -> ColumnElement[bool]:
    """Index rows naming the identifier of the patient of a ``patient/`` token."""
    assert access.patient is not None
    clauses = [FhirIndex.param == "identifier", FhirIndex.value == access.patient.id]
    if access.patient.issuer is not None:
        clauses.append(FhirIndex.system == patient_id_system(access.patient.issuer))
    return and_(*clauses)


def _manifest_visibility(access: Access) -> ColumnElement[bool]:
    """A manifest's DocumentReference (id: the KOS SOP Instance UID) is seen as its study is
    (:meth:`Access.study_filter`: shares, a peer's access minus opposed patients, cached copies),
    and always by its own organisation (its history outlives the study)."""
    of_visible_study = FhirResource.id.in_(
        select(Manifest.sop_uid).join(Study, Study.study_uid == Manifest.study_uid).where(*access.study_filter()))
    if access.orgs is None:
        return of_visible_study
    return or_(FhirResource.org.in_(sorted(access.orgs)), of_visible_study)


def visibility(access: Access, type_: str) -> list[ColumnElement[bool]]:
    """SQL conditions on :class:`FhirResource` of ``type_`` for what ``access`` sees.

    Its organisations (a manifest's DocumentReference: also wherever its study is visible,
    :func:`_manifest_visibility`); with a patient restriction (``patient/`` scopes) only that patient's
    compartment (FHIR R4 compartmentdefinition-patient): the Patient resources carrying its
    identifier (system from its issuer, :func:`~drimhub.mappings.identifiers.patient_id_system`,
    when the token names one; any system otherwise) and the resources whose ``patient`` or
    ``subject`` references such a Patient (literally, or by that identifier). A Binary is in no
    compartment: ``patient/`` scopes see none (they read reports' documents through a
    ``user/`` or ``system/`` grant only).
    """
    clauses: list[ColumnElement[bool]] = [FhirResource.type == type_]
    if type_ == MANIFEST_TYPE:
        clauses.append(_manifest_visibility(access))
    elif access.orgs is not None:
        clauses.append(FhirResource.org.in_(sorted(access.orgs)))
    if access.patient is None:
        return clauses
    patient_pks = select(FhirIndex.resource_pk).where(FhirIndex.type == "Patient", _patients_of(access))
    if type_ == "Patient":
        clauses.append(FhirResource.pk.in_(patient_pks))
        return clauses
    if type_ == "Binary":
        clauses.append(false())
        return clauses
    patient_res = select(FhirResource.id).where(FhirResource.type == "Patient", FhirResource.pk.in_(patient_pks))
    if access.orgs is not None:
        patient_res = patient_res.where(FhirResource.org.in_(sorted(access.orgs)))
    in_compartment = (select(FhirIndex.resource_pk)
                      .where(FhirIndex.type == type_, FhirIndex.param.in_(COMPARTMENT_PARAMS),
                             or_(and_(FhirIndex.ref_type == "Patient", FhirIndex.ref_id.in_(patient_res)),
                                 and_(FhirIndex.value == access.patient.id,
                                      *([FhirIndex.system == patient_id_system(access.patient.issuer)]
                                        if access.patient.issuer else [])))))
    clauses.append(FhirResource.pk.in_(in_compartment))
    return clauses


# --- serialising writers ----------------------------------------------------------------------

def lock(session: Session, key: str) -> None:
    """Hold a lock on ``key`` until the end of the transaction (PostgreSQL advisory lock).

    SQLite needs none: :func:`drimhub.store.engine.write_session` already serialises its writers.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(key.encode()).digest()
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": int.from_bytes(digest[:8], "big", signed=True)})


__all__ = ["COMPARTMENT_PARAMS", "HistoryEntry", "get", "get_visible", "history", "lock", "referrers",
           "replace_index", "version_of", "visibility", "write_version"]
