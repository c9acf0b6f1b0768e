"""SQL of ImagingStudy search: FHIR criteria as conditions on the study, series and instance rows.

ImagingStudy is derived from the DICOM rows (:mod:`drimhub.mappings.imagingstudy`), so each of
its search parameters is answered by the columns the mapping reads (:func:`study_value`); every
condition carries the caller's visibility (:meth:`~drimhub.store.access.Access.study_filter`).
Paging, cursors and the stored types are :mod:`drimhub.store.fhirsearch`'s.

``started`` compares StudyDate/StudyTime as recorded: a search bound is turned into the local
date and time a study without Timezone Offset From UTC (0008,0201) records
(:func:`drimhub.mappings.dicom.as_recorded`, the inverse of how the mapping renders such a time).
A study that does carry an offset other than the node's is rendered at its true instant but
still compared as recorded here (there is no offset column): off by the difference of the two
zones. Documented in the CapabilityStatement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, and_, false, func, not_, or_, select, true

from drimhub.errors import InvalidQuery
from drimhub.mappings.dicom import DCM, SCT, V2_0203, as_recorded
from drimhub.mappings.identifiers import DICOM_UID_SYSTEM, issuer_for_system, uid_from_urn
from drimhub.mappings.imagingstudy import BODY_PARTS
from drimhub.store.fhirquery import Criterion, Scope, SortKey, Token, date_match, stored_instant
from drimhub.store.models import Instance, Series, Study

SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"
STUDY_STATUS_SYSTEM = "http://hl7.org/fhir/imagingstudy-status"
#: ImagingStudy.status of every stored study (its instances are available).
STUDY_STATUS = "available"


def _study_has_series(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return Study.pk.in_(select(Series.study_pk).where(*conditions))


def _study_has_instance(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return Study.pk.in_(select(Series.study_pk).join(Instance, Instance.series_pk == Series.pk).where(*conditions))


def _coded(t: Token, column: Any, *systems: str, transform: Callable[[str], str] = lambda x: x) -> ColumnElement[bool]:
    if t.system is not None and t.system not in systems:
        return false()
    return column.is_not(None) if t.code is None else column == transform(t.code)


def _study_identifier(t: Token) -> ColumnElement[bool]:
    """Study Instance UID (``urn:dicom:uid|urn:oid:<uid>``, the bare UID) or the accession.

    The accession's issuer is not a column: any system other than ``urn:dicom:uid`` matches the
    accession value (and ``:of-type`` ``v2-0203|ACSN|value`` does, fhir.md (f)1).
    """
    if t.of_type is not None:
        if t.of_type == (V2_0203, "ACSN"):
            return Study.accession_number == t.code
        if t.of_type == (DCM, "110180"):
            return Study.study_uid == uid_from_urn(t.code or "")
        return false()
    if t.system == DICOM_UID_SYSTEM:
        return true() if t.code is None else Study.study_uid == uid_from_urn(t.code)
    if t.system is None:
        return or_(Study.study_uid == uid_from_urn(t.code or ""), Study.accession_number == t.code)
    return Study.accession_number.is_not(None) if t.code is None else Study.accession_number == t.code


def _patient_identifier(t: Token) -> ColumnElement[bool]:
    """A Patient identifier as the study's PatientID and issuer (:func:`issuer_for_system`)."""
    clauses = [Study.patient_id == t.code] if t.code is not None else [Study.patient_id.is_not(None)]
    if t.system == "":
        clauses.append(Study.issuer_of_patient_id.is_(None))
    elif t.system is not None:
        clauses.append(Study.issuer_of_patient_id == issuer_for_system(t.system))
    return and_(*clauses)


def _started() -> tuple[Any, Any]:
    """StudyDate + StudyTime as text ``[low, high]``: a study without a time covers its day."""
    time_low = func.coalesce(Study.study_time, "000000.000000")
    time_high = func.coalesce(Study.study_time, "235959.999999")
    return Study.study_date + time_low, Study.study_date + time_high


def _recorded_key(moment: datetime) -> str:
    """An instant as StudyDate + StudyTime text (``YYYYMMDDHHMMSS.FFFFFF``) as recorded without an offset."""
    return as_recorded(moment).strftime("%Y%m%d%H%M%S.%f")


def _study_last_updated(scope: Scope) -> Any:
    """When the study, or an instance of it, was last stored (ImagingStudy ``meta.lastUpdated``)."""
    latest = (select(func.max(Instance.created_at)).join(Series, Series.pk == Instance.series_pk)
              .where(Series.study_pk == Study.pk).scalar_subquery())
    return stored_instant(scope, func.coalesce(latest, Study.created_at, type_=DateTime(timezone=True)))


def _study_value(scope: Scope, c: Criterion, v: Any) -> ColumnElement[bool]:
    name = c.param.name
    if name in ("patient", "subject"):
        if isinstance(v, Token):
            return _patient_identifier(v)
        return false() if v.foreign or v.type not in (None, "Patient") else Study.patient_ref == v.id
    if name == "basedon":  # only the accession, as Reference.identifier (R4 notes, MADO)
        return _coded(v, Study.accession_number, *([v.system] if v.system else [])) if isinstance(v, Token) else false()
    if name == "referrer":  # a display-only reference: no id, no identifier to match
        return false()
    if name == "endpoint":
        if isinstance(v, Token):
            return false()
        return true() if not v.foreign and v.type in (None, "Endpoint") and v.id in scope.endpoint_ids else false()
    if name == "started":
        low, high = _started()
        return and_(Study.study_date.is_not(None),
                    date_match(v, low, high, inclusive_high=True, open_ends=False, fmt=_recorded_key))
    if name == "_lastUpdated":
        moment = _study_last_updated(scope)
        return date_match(v, moment, moment, inclusive_high=True, open_ends=False)
    if name == "_id":
        return Study.study_uid == v.code if v.system is None else false()
    if name == "identifier":
        return _study_identifier(v)
    if name == "status":
        return true() if v.system in (None, STUDY_STATUS_SYSTEM) and v.code in (STUDY_STATUS, None) else false()
    if name == "modality":
        return _study_has_series(_coded(v, Series.modality, DCM))
    if name == "series":
        return _study_has_series(_coded(v, Series.series_uid, transform=uid_from_urn))
    if name == "instance":
        return _study_has_instance(_coded(v, Instance.sop_uid, transform=uid_from_urn))
    if name == "dicom-class":
        return _study_has_instance(_coded(v, Instance.sop_class_uid, SOP_CLASS_SYSTEM, transform=uid_from_urn))
    if name == "bodysite":
        return _study_has_series(_body_part(v))
    raise InvalidQuery(f"ImagingStudy: {name} is not searchable")  # pragma: no cover - registry and table agree


def _body_part(t: Token) -> ColumnElement[bool]:
    """Body Part Examined: the SNOMED CT code the mapping emits (PS3.16 Annex L) or the defined term."""
    if t.code is None:
        return Series.body_part.is_not(None) if t.system in (None, SCT) else false()
    terms = [term for term, (code, _) in BODY_PARTS.items() if code == t.code] if t.system in (None, SCT) else []
    if t.system is None:
        terms.append(t.code.upper())
    return Series.body_part.in_(terms) if terms else false()


#: ImagingStudy parameters: when a study has a value (``:missing``).
_STUDY_PRESENT: dict[str, Callable[[], ColumnElement[bool]]] = {
    "identifier": true, "status": true, "endpoint": true, "_id": true, "_lastUpdated": true,
    "patient": lambda: Study.patient_ref.is_not(None), "subject": lambda: Study.patient_ref.is_not(None),
    "started": lambda: Study.study_date.is_not(None),
    "basedon": lambda: Study.accession_number.is_not(None),
    "referrer": lambda: Study.referring_physician_key.is_not(None),
    "modality": lambda: _study_has_series(Series.modality.is_not(None)),
    "bodysite": lambda: _study_has_series(Series.body_part.is_not(None)),
    "series": lambda: _study_has_series(true()), "instance": lambda: _study_has_instance(true()),
    "dicom-class": lambda: _study_has_instance(true()),
}


def _study_criterion(scope: Scope, c: Criterion) -> ColumnElement[bool]:
    if c.chain is not None:  # patient.x / subject:Patient.x: through the study's Patient resource
        from drimhub.store.fhirsearch import id_select  # chains recurse between the two modules

        chained = Study.patient_ref.in_(id_select(scope, "Patient", [c.chain]))
        if c.chain.param.name == "identifier" and c.chain.modifier is None:
            return or_(chained, *(_patient_identifier(t) for t in c.chain.values))
        return chained
    if c.modifier == "missing":
        present = _STUDY_PRESENT[c.param.name]()
        return not_(present) if c.values[0] else present
    matching = or_(*(_study_value(scope, c, v) for v in c.values))
    return not_(matching) if c.modifier == "not" else matching


def study_filter(scope: Scope, criteria: Sequence[Criterion]) -> list[ColumnElement[bool]]:
    """Conditions on :class:`Study` for the visible studies ``criteria`` match."""
    return [*scope.access.study_filter(), *(_study_criterion(scope, c) for c in criteria)]


def study_sort_key(scope: Scope, key: SortKey) -> tuple[Any, bool, str]:
    if key.name == "_id":
        return Study.study_uid, key.descending, "string"
    if key.name == "_lastUpdated":
        return _study_last_updated(scope), key.descending, "date"
    started = func.coalesce(Study.study_date, "") + func.coalesce(Study.study_time, "")
    return started, key.descending, "string"


# --- what includes need -----------------------------------------------------------------------

def visible_studies(scope: Scope, uids: Sequence[str]) -> list[str]:
    """The UIDs among ``uids`` of studies the caller sees."""
    if not uids:
        return []
    stmt = select(Study.study_uid).where(Study.study_uid.in_(sorted(set(uids))), *scope.access.study_filter())
    return list(scope.session.scalars(stmt.order_by(Study.pk)))


def studies_of_patients(scope: Scope, patient_ids: Sequence[str], limit: int) -> list[str]:
    """UIDs of the visible studies whose subject is one of ``patient_ids``."""
    if not patient_ids:
        return []
    stmt = (select(Study.study_uid).where(Study.patient_ref.in_(list(patient_ids)), *scope.access.study_filter())
            .order_by(Study.pk).limit(limit))
    return list(scope.session.scalars(stmt))


__all__ = ["study_filter", "study_sort_key", "studies_of_patients", "visible_studies"]
