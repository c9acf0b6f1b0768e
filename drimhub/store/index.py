"""Write one parsed instance into the study / series / instance rows.

Study and series rows are created on first sight with ``INSERT ... ON CONFLICT DO NOTHING`` so
that concurrent STOW requests for the same study neither fail nor duplicate rows; the first
instance of a study or series provides its attributes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from drimhub.store.access import PatientRef
from drimhub.store.models import Instance, Series, Study


class Outcome(enum.Enum):
    """What happened to one instance."""

    STORED = "stored"
    #: The same SOP Instance UID with the same bytes was already there: nothing changed.
    ALREADY_STORED = "already-stored"
    #: The same SOP Instance UID with other bytes replaced the stored one (policy overwrite).
    REPLACED = "replaced"
    #: The same SOP Instance UID with other bytes is already stored (policy reject).
    DUPLICATE = "duplicate"
    #: The instance's series already belongs to another study.
    SERIES_IN_OTHER_STUDY = "series-in-other-study"
    #: The instance's study (or the stored instance with its SOP Instance UID) belongs to another
    #: organisation, or to another patient than the writer's ``patient/`` scope allows.
    NOT_AUTHORIZED = "not-authorized"


@dataclass(frozen=True)
class IndexEntry:
    """Plain values of one instance to index: column values per level and the DICOM JSON."""

    study_uid: str
    series_uid: str
    sop_uid: str
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    study_attrs: bytes
    series_attrs: bytes
    dicom_json: bytes

    @property
    def sop_class_uid(self) -> str:
        return str(self.instance["sop_class_uid"])


@dataclass(frozen=True)
class InstanceRow:
    """An entry whose blob is in place."""

    entry: IndexEntry
    blob_key: str
    size: int
    digest: str

    def __getattr__(self, name: str) -> Any:
        return getattr(self.entry, name)


@dataclass(frozen=True)
class StoreResult:
    outcome: Outcome
    #: Blob that is no longer referenced and may be deleted once the transaction committed.
    obsolete_blob: str | None = None


def _insert_returning_pk(session: Session, model: Any, values: dict[str, Any], key: str) -> int | None:
    """INSERT ... ON CONFLICT (key) DO NOTHING RETURNING pk: the new pk, or None on conflict."""
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = ins(model).values(**values).on_conflict_do_nothing(index_elements=[key]).returning(model.pk)
    pk: int | None = session.scalar(stmt)
    return pk


class _Parents:
    """Study and series primary keys seen in one transaction (most rows share them).

    Studies are created owned by ``org``; a study owned by another organisation, or of another
    patient than ``patient``, is not the writer's: :meth:`study_pk` returns None for it.
    """

    def __init__(self, session: Session, org: str, patient: PatientRef | None) -> None:
        self.session = session
        self.org = org
        self.patient = patient
        self.studies: dict[str, int | None] = {}
        self.series: dict[str, tuple[int, int]] = {}

    def study_pk(self, row: InstanceRow) -> int | None:
        """Primary key of the row's study (created when new), or None when the writer may not write into it."""
        if row.study_uid not in self.studies:
            found = self._find_study(row.study_uid)
            if found is None:
                values = {"study_uid": row.study_uid, "attrs": row.study_attrs, "org": self.org, **row.study}
                pk = _insert_returning_pk(self.session, Study, values, "study_uid")
                # None: inserted by a concurrent transaction meanwhile, maybe by another organisation
                found = (pk, self.org, row.study.get("patient_id"), row.study.get("issuer_of_patient_id")) \
                    if pk is not None else self._find_study(row.study_uid)
            assert found is not None
            pk, org, patient_id, issuer = found
            mine = org == self.org and (self.patient is None or self.patient.matches(patient_id, issuer))
            self.studies[row.study_uid] = pk if mine else None
        return self.studies[row.study_uid]

    def _find_study(self, study_uid: str) -> tuple[int, str, str | None, str | None] | None:
        found = self.session.execute(select(Study.pk, Study.org, Study.patient_id, Study.issuer_of_patient_id)
                                     .where(Study.study_uid == study_uid)).first()
        return (found.pk, found.org, found.patient_id, found.issuer_of_patient_id) if found else None

    def series_pk(self, row: InstanceRow, study_pk: int) -> int | None:
        """Primary key of the row's series, or None when it belongs to another study."""
        if row.series_uid not in self.series:
            found = self._find_series(row.series_uid)
            if found is None:
                pk = _insert_returning_pk(self.session, Series, {"series_uid": row.series_uid, "study_pk": study_pk,
                                                                 "attrs": row.series_attrs, **row.series}, "series_uid")
                found = (pk, study_pk) if pk is not None else self._find_series(row.series_uid)
            assert found is not None
            self.series[row.series_uid] = found
        pk, owner = self.series[row.series_uid]
        return pk if owner == study_pk else None


    def _find_series(self, series_uid: str) -> tuple[int, int] | None:
        found = self.session.execute(select(Series.pk, Series.study_pk).where(Series.series_uid == series_uid)).first()
        return (found.pk, found.study_pk) if found else None


class Known(NamedTuple):
    """A stored instance: its digest, its blob, and the organisation owning its study."""

    digest: str
    blob_key: str
    org: str


def known_instances(session: Session, sop_uids: list[str]) -> dict[str, Known]:
    """What is stored of each of ``sop_uids`` (absent ones are left out)."""
    found: dict[str, Known] = {}
    for start in range(0, len(sop_uids), 500):
        chunk = sop_uids[start:start + 500]
        rows = session.execute(select(Instance.sop_uid, Instance.digest, Instance.blob_key, Study.org)
                               .join(Series, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
                               .where(Instance.sop_uid.in_(chunk)))
        found.update({r.sop_uid: Known(r.digest, r.blob_key, r.org) for r in rows})
    return found


def store_instances(session: Session, rows: list[InstanceRow], overwrite: bool, org: str,
                    patient: PatientRef | None = None) -> list[StoreResult]:
    """Index ``rows`` in the open write transaction of ``session`` (the caller commits).

    Parameters
    ----------
    session : Session
        A session in a write transaction.
    rows : list of InstanceRow
        The instances, their blobs already in place.
    overwrite : bool
        Replace a stored instance with the same SOP Instance UID and other bytes.
    org : str
        The writer's organisation: new studies belong to it, and it may write only into its own.
    patient : PatientRef, optional
        The only patient the writer may write for (``patient/`` scopes).

    Returns
    -------
    list of StoreResult
        One per row, in the order of ``rows`` (NOT_AUTHORIZED leaves the other organisation's
        study untouched). The rows are processed sorted by (Study, Series, SOP Instance UID).
    """
    # One global lock order (study, series, SOP Instance UID) for every writer: two requests
    # touching the same studies in different orders would otherwise take the unique-index
    # locks of the study, series and instance rows in opposite orders and deadlock.
    order = sorted(range(len(rows)), key=lambda i: (rows[i].study_uid, rows[i].series_uid, rows[i].sop_uid))
    results: list[StoreResult | None] = [None] * len(rows)
    for index, result in zip(order, _store_sorted(session, [rows[i] for i in order], overwrite, org, patient)):
        results[index] = result
    return [r for r in results if r is not None]


def _store_sorted(session: Session, rows: list[InstanceRow], overwrite: bool, org: str,
                  patient: PatientRef | None) -> list[StoreResult]:
    """:func:`store_instances` of rows already in lock order; results in that order."""
    known = known_instances(session, [r.sop_uid for r in rows])
    parents = _Parents(session, org, patient)
    planned = [_plan(session, row, known.get(row.sop_uid), overwrite, parents) for row in rows]
    inserted = _insert_instances(session, [p for p in planned if isinstance(p, dict)])
    results: list[StoreResult] = []
    for row, plan in zip(rows, planned):
        if isinstance(plan, StoreResult):
            results.append(plan)
        elif row.blob_key not in inserted:
            # a concurrent transaction (or an earlier part of this batch) stored this SOP Instance UID first
            winner = known_instances(session, [row.sop_uid]).get(row.sop_uid)
            results.append(StoreResult(_outcome_against(winner, row, org), obsolete_blob=row.blob_key))
        else:
            replaced = known.get(row.sop_uid)
            results.append(StoreResult(Outcome.REPLACED, obsolete_blob=replaced.blob_key) if replaced
                           else StoreResult(Outcome.STORED))
    return results


def _outcome_against(stored: Known | None, row: InstanceRow, org: str) -> Outcome:
    """Outcome of a row whose SOP Instance UID is already stored as ``stored``."""
    if stored is not None and stored.org != org:
        return Outcome.NOT_AUTHORIZED  # said before anything about its content
    return Outcome.ALREADY_STORED if stored is not None and stored.digest == row.digest else Outcome.DUPLICATE


def _plan(session: Session, row: InstanceRow, known: Known | None, overwrite: bool,
          parents: _Parents) -> StoreResult | dict[str, Any]:
    """The final result of a row that will not be inserted, or the values to insert."""
    if known is not None:
        outcome = _outcome_against(known, row, parents.org)
        if outcome is not Outcome.DUPLICATE or not overwrite or not _same_place(session, row):
            return StoreResult(outcome, obsolete_blob=row.blob_key)
    study_pk = parents.study_pk(row)
    if study_pk is None:
        return StoreResult(Outcome.NOT_AUTHORIZED, obsolete_blob=row.blob_key)
    if known is not None:  # overwrite, in the writer's own study (checked just above)
        session.execute(delete(Instance).where(Instance.sop_uid == row.sop_uid))
    series_pk = parents.series_pk(row, study_pk)
    if series_pk is None:
        return StoreResult(Outcome.SERIES_IN_OTHER_STUDY, obsolete_blob=row.blob_key)
    return {"series_pk": series_pk, "sop_uid": row.sop_uid, "blob_key": row.blob_key, "size": row.size,
            "digest": row.digest, "dicom_json": row.dicom_json, **row.instance}


def _insert_instances(session: Session, values: list[dict[str, Any]]) -> set[str]:
    """Insert instance rows in one statement, skipping known SOP Instance UIDs; the blob keys inserted."""
    if not values:
        return set()
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = ins(Instance).on_conflict_do_nothing(index_elements=["sop_uid"]).returning(Instance.blob_key)
    return set(session.scalars(stmt, values))


def _same_place(session: Session, row: InstanceRow) -> bool:
    """True when the stored instance with ``row``'s SOP Instance UID is in the same series and study."""
    found = session.execute(
        select(Series.series_uid, Study.study_uid)
        .join(Instance, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
        .where(Instance.sop_uid == row.sop_uid)).first()
    return found is not None and (found.series_uid, found.study_uid) == (row.series_uid, row.study_uid)
