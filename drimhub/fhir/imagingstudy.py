"""ImagingStudy, derived on read from the stored study / series / instance rows (never a copy).

Rows: :mod:`drimhub.store.studyrows` (three queries for any number of studies); mapping:
:mod:`drimhub.mappings.imagingstudy`. The truth is DICOM, so the resource is always current.

``meta`` (FHIR R4 resource.html#Meta): ``lastUpdated`` is the time the study, a series or an
instance was last stored (a deleted instance does not move it); ``versionId`` is left out: the
server keeps no versions of a derived resource, so it could not serve a vread of an older one.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from drimhub.errors import NotFound
from drimhub.fhir.resources import instant
from drimhub.mappings import imagingstudy as mapping
from drimhub.mappings.dicom import dataset
from drimhub.store import studyrows
from drimhub.store.access import Access
from drimhub.store.models import Study

#: Tags an instance title comes from (Document Title, Concept Name Code Sequence, Content Label).
_TITLE_TAGS = ("00420010", "0040A043", "00700080")


def _instance(row: studyrows.InstanceRow) -> mapping.InstanceFacts:
    attrs = None
    if row.dicom_json is not None:
        full = orjson.loads(row.dicom_json)
        attrs = dataset({tag: full[tag] for tag in _TITLE_TAGS if tag in full})
    return mapping.InstanceFacts(row.sop_uid, row.sop_class_uid, row.instance_number, attrs)


def _facts(rows: studyrows.StudyRows) -> mapping.StudyFacts:
    series = [mapping.SeriesFacts(dataset(orjson.loads(s.attrs)), [_instance(i) for i in s.instances])
              for s in rows.series.values()]
    return mapping.StudyFacts(dataset(orjson.loads(rows.attrs)), series, rows.patient_ref)


def build(session: Session, study_uids: list[str], base: str) -> dict[str, dict[str, Any]]:
    """ImagingStudy JSON per Study Instance UID (id = the UID) for the studies of ``study_uids`` that exist.

    No access check: the caller selected visible studies. References are relative to ``base``
    (``Patient/…``, ``Endpoint/…``), as FHIR R4 references.html allows; ``base`` is kept in the
    contract for absolute URLs should a caller need them.
    """
    out: dict[str, dict[str, Any]] = {}
    for uid, rows in studyrows.load(session, study_uids).items():
        resource = mapping.imaging_study(_facts(rows))
        out[uid] = {"resourceType": "ImagingStudy", "id": uid, "meta": {"lastUpdated": instant(rows.last_updated)},
                    **{k: v for k, v in resource.items() if k not in ("resourceType", "id")}}
    return out


def read(session: Session, uid: str, access: Access, base: str) -> dict[str, Any]:
    """``ImagingStudy/<uid>`` when ``access`` sees the study.

    Raises
    ------
    NotFound
        No such study, or another organisation's, or outside the caller's patient compartment.
    """
    visible = session.scalar(select(Study.study_uid).where(Study.study_uid == uid, *access.study_filter()))
    found = build(session, [visible], base) if visible is not None else {}
    if uid not in found:
        raise NotFound(f"ImagingStudy/{uid} is not known")
    return found[uid]
