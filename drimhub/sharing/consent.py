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
- ``patient`` naming the patient: a literal reference ``Patient/<id>`` to a stored Patient, and/or
  a logical reference ``patient.identifier`` with a ``system``.

Who is opposed: the studies linked to that Patient (:attr:`~drimhub.store.models.Study.patient_ref`)
**and** every study whose (PatientID, IssuerOfPatientID) is one of the patient's identifiers: the
Patient resource's ``identifier`` list and the logical reference's, with a ``system`` (mapped to
a DICOM issuer by :mod:`drimhub.mappings.identifiers`, as the Patient merge does). So a study of
the same patient under another organisation's Patient, or linked to no Patient, is opposed too;
a study without IssuerOfPatientID only through its Patient (a bare PatientID names no one for sure).

A privacy ``deny`` Consent whose patient cannot be resolved (no stored Patient, no identifier
with a system) is refused on write (422): it would silently protect no one.

A ``permit`` provision, another scope or status, or a period in the past or the future, has no
effect. The rule is applied when the Consent is written: an active privacy ``deny`` Consent gets
opposition index rows (:data:`drimhub.store.access.OPPOSITION_PARAM`: its Patient, its identifiers
as DICOM issuer and PatientID, its period), and every check is an ``EXISTS`` over those rows
(:func:`drimhub.store.access.opposed`). Writing a Patient refreshes the rows of the Consents naming
it (its identifiers may have changed); deleting the Consent drops them.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from drimhub.errors import Forbidden, Unprocessable
from drimhub.fhir.dates import date_range
from drimhub.mappings.identifiers import issuer_for_system
from drimhub.store.access import OPPOSITION_PARAM
from drimhub.store.fhirquery import IndexValue
from drimhub.store.models import FhirIndex, FhirResource, Study

#: R4 Consent.scope code system (http://hl7.org/fhir/R4/codesystem-consentscope.html).
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
#: The Consent.scope of an opposition to sharing: a privacy consent directive.
PRIVACY = "patient-privacy"
_PATIENT_REF = re.compile(r"^Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_MAX = 255


def is_privacy_denial(resource: dict[str, Any]) -> bool:
    """True for a Consent that is ``active``, of scope ``patient-privacy`` and whose root provision denies."""
    codings = (resource.get("scope") or {}).get("coding") or []
    privacy = any(isinstance(c, dict) and c.get("system") == CONSENT_SCOPE_SYSTEM and c.get("code") == PRIVACY
                  for c in codings)
    return (resource.get("resourceType") == "Consent" and resource.get("status") == "active" and privacy
            and (resource.get("provision") or {}).get("type") == "deny")


def _period(resource: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The root provision's period as [low, high) (None: open); unreadable: open (still opposed)."""
    period = (resource.get("provision") or {}).get("period") or {}
    try:
        low = date_range(period["start"])[0] if period.get("start") else None
        high = date_range(period["end"])[1] if period.get("end") else None
    except (ValueError, TypeError):
        return None, None  # an unreadable period cannot lift an opposition
    return low, high


def _patient_identifiers(session: Session, patient_id: str) -> list[tuple[str, str]] | None:
    """(system, value) of the stored Patient's identifiers with a system; None when no such Patient."""
    content = session.scalar(select(FhirResource.content).where(
        FhirResource.type == "Patient", FhirResource.id == patient_id, FhirResource.deleted.is_(False)))
    if content is None:
        return None
    found = orjson.loads(content).get("identifier") or []
    return [(i["system"], i["value"]) for i in found
            if isinstance(i, dict) and isinstance(i.get("system"), str) and isinstance(i.get("value"), str)]


def resolve_patient(session: Session, resource: dict[str, Any]) -> tuple[str | None, list[tuple[str, str]]] | None:
    """The Patient id and the (DICOM issuer, PatientID) pairs a Consent's ``patient`` names; None: unresolved."""
    reference = resource.get("patient") or {}
    patient_id, pairs, resolved = None, [], False
    match = _PATIENT_REF.match(str(reference.get("reference") or ""))
    if match:
        patient_id = match.group(1)
        identifiers = _patient_identifiers(session, patient_id)
        if identifiers is not None:
            resolved = True
            pairs += identifiers
    logical = reference.get("identifier") or {}
    if isinstance(logical.get("system"), str) and isinstance(logical.get("value"), str):
        resolved = True
        pairs.append((logical["system"], logical["value"]))
    if not resolved:
        return None
    issued = {(issuer_for_system(system), value) for system, value in pairs}
    return patient_id, sorted((i[:_MAX], v[:_MAX]) for i, v in issued if i)


def check_resolvable(session: Session, resource: dict[str, Any]) -> None:
    """Refuse (422) an active privacy ``deny`` Consent whose patient cannot be resolved.

    Raises
    ------
    Unprocessable
        ``patient`` names no stored Patient and no identifier with a ``system``.
    """
    if is_privacy_denial(resource) and resolve_patient(session, resource) is None:
        raise Unprocessable("a Consent opposing sharing must name its patient: a stored Patient (Patient/<id>) "
                            "or an identifier with a system (patient.identifier)")


def opposition_index(session: Session, resource: dict[str, Any]) -> list[IndexValue]:
    """The opposition index rows of a Consent about to be stored (none unless it opposes sharing)."""
    if not is_privacy_denial(resource):
        return []
    resolved = resolve_patient(session, resource)
    if resolved is None:
        return []
    patient_id, pairs = resolved
    low, high = _period(resource)
    rows = [IndexValue(OPPOSITION_PARAM, ref_type="Patient", ref_id=patient_id, low=low, high=high)] if patient_id else []
    return rows + [IndexValue(OPPOSITION_PARAM, system=issuer, value=value, low=low, high=high)
                   for issuer, value in pairs]


def refresh_for_patient(session: Session, patient_id: str) -> None:
    """Rewrite the opposition rows of the Consents naming ``Patient/<patient_id>`` (after a write of it)."""
    consents = session.execute(
        select(FhirResource.pk, FhirResource.content)
        .join(FhirIndex, FhirIndex.resource_pk == FhirResource.pk)
        .where(FhirIndex.type == "Consent", FhirIndex.param == OPPOSITION_PARAM, FhirIndex.ref_type == "Patient",
               FhirIndex.ref_id == patient_id, FhirResource.deleted.is_(False))).all()
    for pk, content in consents:
        values = opposition_index(session, orjson.loads(content)) if content else []
        session.execute(delete(FhirIndex).where(FhirIndex.resource_pk == pk, FhirIndex.param == OPPOSITION_PARAM))
        if values:
            session.execute(insert(FhirIndex), [
                {"resource_pk": pk, "type": "Consent", "param": v.param, "system": v.system, "value": v.value,
                 "exact": None, "low": v.low, "high": v.high, "ref_type": v.ref_type, "ref_id": v.ref_id}
                for v in values])


def opposing_consent(session: Session, study_uid: str) -> str | None:
    """The id of a Consent by which the patient of ``study_uid`` opposes sharing now, or None."""
    study = session.execute(select(Study.patient_ref, Study.patient_id, Study.issuer_of_patient_id)
                            .where(Study.study_uid == study_uid)).first()
    if study is None:
        return None
    now = datetime.now(timezone.utc)
    found = session.scalars(
        select(FhirResource.id).join(FhirIndex, FhirIndex.resource_pk == FhirResource.pk)
        .where(FhirIndex.type == "Consent", FhirIndex.param == OPPOSITION_PARAM,
               FhirIndex.low.is_(None) | (FhirIndex.low <= now), FhirIndex.high.is_(None) | (FhirIndex.high > now),
               ((FhirIndex.ref_type == "Patient") & (FhirIndex.ref_id == study.patient_ref))
               | (FhirIndex.ref_type.is_(None) & (FhirIndex.system == study.issuer_of_patient_id)
                  & (FhirIndex.value == study.patient_id)))
        .order_by(FhirResource.id).limit(1)).first()
    return found


def refusal(session: Session, study_uid: str) -> str | None:
    """Why ``study_uid`` may not leave its organisation (its patient opposed sharing), or None.

    Parameters
    ----------
    session : Session
        A read session.
    study_uid : str
        Study Instance UID (an unknown study is no refusal).

    Returns
    -------
    str or None
        The reason, naming the Consent; None when the study may be shared.
    """
    consent = opposing_consent(session, study_uid)
    if consent is None:
        return None
    return (f"the patient opposed the sharing of their studies (Consent/{consent}): "
            "this study is for local care only")


def check_shareable(session: Session, study_uid: str) -> None:
    """Raise :class:`~drimhub.errors.Forbidden` with the reason when :func:`refusal` gives one."""
    reason = refusal(session, study_uid)
    if reason is not None:
        raise Forbidden(reason)


__all__ = ["CONSENT_SCOPE_SYSTEM", "PRIVACY", "check_resolvable", "check_shareable", "is_privacy_denial",
           "opposing_consent", "opposition_index", "refresh_for_patient", "refusal", "resolve_patient"]
