"""A patient's opposition to sharing (FHIR R4 Consent, ``provision.type = deny``).

It refuses shares, pushes and peers' (federated) access to that patient's studies; local care
access stays (the owning organisation's own tokens never look at it).

The rule: a patient **opposed sharing** when a stored Consent (of any organisation of this node:
an opposition only ever restricts) has

- ``status`` ``active`` (R4 ConsentState; draft, proposed, rejected, inactive and
  entered-in-error have no effect);
- ``scope`` coded ``patient-privacy`` in ``http://terminology.hl7.org/CodeSystem/consentscope``
  (R4 consent.html: "Privacy Consent Directive", agreement to collect, access, use or
  **disclose** information; ``treatment``, ``research`` and ``adr`` consents have no effect);
- a root ``provision`` whose ``type`` is ``deny`` (R4 "deny" base rule: everything is refused
  unless a nested provision permits; nested exceptions are not weighed here, so such a Consent
  still refuses: the safe reading), and whose ``period``, when present, covers now;
- ``patient`` a reference ``Patient/<id>``: the FHIR Patient a study is linked to by
  :attr:`drimhub.store.models.Study.patient_ref` (its ImagingStudy.subject).

A ``permit`` provision, another scope or status, or a period in the past or the future, has no
effect. The Consents are found through the search index (status, scope, patient), and their
provision read from the stored JSON.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import Select, and_, exists, select
from sqlalchemy.orm import Session, aliased

from drimhub.errors import Forbidden
from drimhub.fhir.dates import date_range
from drimhub.store.models import FhirIndex, FhirResource, Study

#: R4 Consent.scope code system (http://hl7.org/fhir/R4/codesystem-consentscope.html).
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
#: The Consent.scope of an opposition to sharing: a privacy consent directive.
PRIVACY = "patient-privacy"


def _indexed(param: str, value: str, system: str | None = None) -> Any:
    """EXISTS an index row ``param`` = ``value`` (and ``system``) of the Consent being selected."""
    row = aliased(FhirIndex)
    clauses = [row.resource_pk == FhirResource.pk, row.type == "Consent", row.param == param, row.value == value]
    if system is not None:
        clauses.append(row.system == system)
    return exists().where(and_(*clauses))


def _candidates(patient_id: str | None) -> Select[tuple[str, str | None, bytes | None]]:
    """Active privacy Consents with the Patient they name (of ``patient_id`` only, when given)."""
    patient = aliased(FhirIndex)
    stmt = (select(FhirResource.id, patient.ref_id, FhirResource.content)
            .join(patient, and_(patient.resource_pk == FhirResource.pk, patient.param == "patient",
                                patient.ref_type == "Patient"))
            .where(FhirResource.type == "Consent", FhirResource.deleted.is_(False),
                   _indexed("status", "active"), _indexed("scope", PRIVACY, CONSENT_SCOPE_SYSTEM)))
    if patient_id is not None:
        stmt = stmt.where(patient.ref_id == patient_id)
    return stmt


def _denies_now(content: bytes | None, now: datetime) -> bool:
    """True when the Consent's root provision is ``deny`` and its period (if any) covers ``now``."""
    if not content:
        return False
    provision = orjson.loads(content).get("provision") or {}
    if provision.get("type") != "deny":
        return False
    period = provision.get("period") or {}
    try:
        if period.get("start") and date_range(period["start"])[0] > now:
            return False
        if period.get("end") and date_range(period["end"])[1] <= now:
            return False
    except ValueError:
        return True  # an unreadable period cannot lift an opposition
    return True


def _oppositions(session: Session, patient_id: str | None = None) -> dict[str, str]:
    """Patient id → id of a Consent by which that patient opposes sharing now."""
    now = datetime.now(timezone.utc)
    found: dict[str, str] = {}
    for consent_id, patient, content in session.execute(_candidates(patient_id)):
        if patient and patient not in found and _denies_now(content, now):
            found[patient] = consent_id
    return found


def opposed_patients(session: Session) -> frozenset[str]:
    """Ids of the FHIR Patients with an active Consent denying sharing (the rule: module docstring).

    Parameters
    ----------
    session : Session
        A read session.

    Returns
    -------
    frozenset of str
        Patient ids, as :attr:`~drimhub.store.models.Study.patient_ref` holds them.
    """
    return frozenset(_oppositions(session))


def refusal(session: Session, study_uid: str) -> str | None:
    """Why ``study_uid`` may not leave its organisation (its patient opposed sharing), or None.

    Parameters
    ----------
    session : Session
        A read session.
    study_uid : str
        Study Instance UID (an unknown study, or one linked to no Patient, is no refusal).

    Returns
    -------
    str or None
        The reason, naming the Consent; None when the study may be shared.
    """
    patient = session.scalar(select(Study.patient_ref).where(Study.study_uid == study_uid))
    if patient is None:
        return None
    consent = _oppositions(session, patient).get(patient)
    if consent is None:
        return None
    return (f"the patient opposed the sharing of their studies (Consent/{consent}): "
            "this study is for local care only")


def check_shareable(session: Session, study_uid: str) -> None:
    """Raise :class:`~drimhub.errors.Forbidden` with the reason when :func:`refusal` gives one."""
    reason = refusal(session, study_uid)
    if reason is not None:
        raise Forbidden(reason)
