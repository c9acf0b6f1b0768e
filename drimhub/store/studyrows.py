"""SQL loading the rows ImagingStudy resources are built from: studies, their series and instances.

:func:`load` reads any number of studies in three queries (studies, series, instances), never one
per study or series. An instance's DICOM JSON is read only when it has no pixel data (a document,
an SR, a presentation state): only those have an ImagingStudy title (Document Title, Concept Name,
Content Label), and images are most of the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from drimhub.store.models import Instance, Series, Study

#: Largest number of UIDs bound in one ``IN`` (SQLite allows 32766 parameters; pages are far smaller).
CHUNK = 500


@dataclass(frozen=True)
class InstanceRow:
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    #: DICOM JSON of an instance without pixel data, None for an image.
    dicom_json: bytes | None


@dataclass
class SeriesRows:
    attrs: bytes
    instances: list[InstanceRow] = field(default_factory=list)


@dataclass
class StudyRows:
    """One study as stored: attributes, FHIR Patient id, series (by pk) and the last change seen."""

    study_uid: str
    org: str
    patient_ref: str | None
    attrs: bytes
    last_updated: datetime
    series: dict[int, SeriesRows] = field(default_factory=dict)


def _latest(moment: datetime, other: datetime | None) -> datetime:
    return moment if other is None or other <= moment else other


def load(session: Session, study_uids: Sequence[str]) -> dict[str, StudyRows]:
    """The stored rows of the studies of ``study_uids`` that exist (no access check: callers filter)."""
    studies: dict[int, StudyRows] = {}
    uids = list(dict.fromkeys(study_uids))
    for start in range(0, len(uids), CHUNK):
        for pk, uid, org, ref, attrs, created in session.execute(
                select(Study.pk, Study.study_uid, Study.org, Study.patient_ref, Study.attrs, Study.created_at)
                .where(Study.study_uid.in_(uids[start:start + CHUNK]))):
            studies[pk] = StudyRows(uid, org, ref, attrs, created)
    if not studies:
        return {}
    series_study: dict[int, int] = {}
    pks = list(studies)
    for start in range(0, len(pks), CHUNK):
        for pk, study_pk, attrs, created in session.execute(
                select(Series.pk, Series.study_pk, Series.attrs, Series.created_at)
                .where(Series.study_pk.in_(pks[start:start + CHUNK]))):
            studies[study_pk].series[pk] = SeriesRows(attrs)
            studies[study_pk].last_updated = _latest(studies[study_pk].last_updated, created)
            series_study[pk] = study_pk
        _instances(session, studies, series_study, pks[start:start + CHUNK])
    return {rows.study_uid: rows for rows in studies.values()}


def _instances(session: Session, studies: dict[int, StudyRows], series_study: dict[int, int],
               study_pks: list[int]) -> None:
    document_json = case((Instance.number_of_frames.is_(None), Instance.dicom_json), else_=None)
    stmt = (select(Instance.series_pk, Instance.sop_uid, Instance.sop_class_uid, Instance.instance_number,
                   Instance.created_at, document_json)
            .join(Series, Series.pk == Instance.series_pk).where(Series.study_pk.in_(study_pks)))
    for series_pk, sop, sop_class, number, created, doc in session.execute(stmt):
        study = studies[series_study[series_pk]]
        study.series[series_pk].instances.append(InstanceRow(sop, sop_class, number, doc))
        study.last_updated = _latest(study.last_updated, created)
