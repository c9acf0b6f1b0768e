"""What a caller may see of the stored studies, as plain values the services take as arguments.

An :class:`Access` names the organisations whose studies are visible (``None``: every one, for
the node's own tools and for a deliberate cross-organisation grant) and, for ``patient/``
scopes, the one patient whose studies are visible. The web layer builds it from the access
token (:mod:`drimhub.server.auth.policy`); the store applies it in SQL, so that rows of other
organisations never leave the database.

Cached copies of peers' studies (:mod:`drimhub.federation.cache`) belong to the reserved
organisations ``peer:NAME`` (:data:`RESERVED_ORG_PREFIX`): no token, client, user or trusted
issuer may act for such an organisation (:func:`check_org`), and an access sees cached copies only
when it opts in (:attr:`Access.cached`, set by the federated root's widening) or names their
organisation itself (the cache's own code).

Share grants and patients' oppositions are applied as correlated ``EXISTS`` / ``NOT EXISTS``
subqueries (:meth:`Access.study_filter`), never as lists of values: the access carries the
caller's facts (:class:`Grantee`), the database looks the grants (table ``share``) and the
opposition index up (``fhir_index`` rows :data:`OPPOSITION_PARAM` of the Consents that oppose
sharing, written by :mod:`drimhub.sharing.consent`), however many there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import ColumnElement, and_, exists, not_, or_
from sqlalchemy.orm import aliased

from drimhub.store.models import FhirIndex, Study
from drimhub.store.network import Share

#: Organisations starting with this prefix hold peers' cached copies: never a caller's organisation.
RESERVED_ORG_PREFIX = "peer:"
#: Internal ``fhir_index.param`` of a Consent opposing sharing now or in its period (never a search
#: parameter): one row naming the Patient (``ref_type``/``ref_id``), one per Patient ID it is known
#: by (``system``: the DICOM IssuerOfPatientID, ``value``: the PatientID), with the period in
#: ``low``/``high`` (None: open).
OPPOSITION_PARAM = "_opposes"
#: ``share.permissions`` of a grant that lets its grantee download the DICOM instances.
DOWNLOAD_PERMISSIONS = "read download"


def is_reserved_org(org: str) -> bool:
    """True for an organisation name reserved for the cache (``peer:...``)."""
    return org.startswith(RESERVED_ORG_PREFIX)


def check_org(org: str) -> str:
    """``org`` if a caller may act for it.

    Raises
    ------
    ValueError
        ``org`` is reserved for peers' cached copies (``peer:...``).
    """
    if is_reserved_org(org):
        raise ValueError(f"organisation names starting with {RESERVED_ORG_PREFIX!r} are reserved for cached copies")
    return org


@dataclass(frozen=True)
class PatientRef:
    """A patient as a token's ``patient`` claim names it: a Patient ID, optionally ``issuer|id``."""

    id: str
    issuer: str | None = None

    @classmethod
    def parse(cls, value: str) -> PatientRef:
        """``"ISSUER|ID"`` or ``"ID"`` (the FHIR token form ``system|value``)."""
        issuer, sep, patient_id = value.partition("|")
        return cls(patient_id, issuer or None) if sep else cls(value)

    def matches(self, patient_id: str | None, issuer: str | None) -> bool:
        """True when a study's PatientID (and IssuerOfPatientID, when the claim names one) match."""
        return patient_id == self.id and (self.issuer is None or issuer == self.issuer)

    def __str__(self) -> str:
        return f"{self.issuer}|{self.id}" if self.issuer else self.id


@dataclass(frozen=True)
class Grantee:
    """Who a share grant may name: the caller's organisation, or the caller (issuer and ``sub``).

    ``download``: only the grants that permit downloading count (the request retrieves the DICOM
    instances themselves).
    """

    org: str
    issuer: str
    sub: str
    download: bool = False

    def grants(self, study: ColumnElement[str], study_org: ColumnElement[str],
               now: datetime) -> ColumnElement[bool]:
        """EXISTS an active grant of ``study`` (owned by ``study_org``) to this grantee."""
        share = aliased(Share)
        clauses = [share.study_uid == study, share.org == study_org, share.revoked_at.is_(None),
                   share.expires_at > now,
                   or_(share.grantee_org == self.org,
                       and_(share.grantee_user == self.sub, share.grantee_issuer == self.issuer))]
        if self.download:
            clauses.append(share.permissions == DOWNLOAD_PERMISSIONS)
        return exists().where(*clauses).correlate_except(share)


def opposed(patient_ref: ColumnElement[str | None] | str | None, patient_id: ColumnElement[str | None] | str | None,
            issuer: ColumnElement[str | None] | str | None, now: datetime) -> ColumnElement[bool]:
    """EXISTS an opposition to sharing, now, of the patient of a study (its columns, or values).

    The study's patient opposed when a Consent's opposition row names its FHIR Patient
    (``patient_ref``), or its PatientID issued by its IssuerOfPatientID (a study without an issuer
    is matched by its Patient only: a bare PatientID names no one for sure).
    """
    by_ref = exists().where(*_opposition_now(now), FhirIndex.ref_type == "Patient", FhirIndex.ref_id == patient_ref)
    by_id = exists().where(*_opposition_now(now), FhirIndex.ref_type.is_(None), FhirIndex.system == issuer,
                           FhirIndex.value == patient_id)
    return or_(by_ref.correlate_except(FhirIndex), by_id.correlate_except(FhirIndex))


def _opposition_now(now: datetime) -> list[ColumnElement[bool]]:
    """Opposition rows (:data:`OPPOSITION_PARAM`) whose period covers ``now``."""
    return [FhirIndex.type == "Consent", FhirIndex.param == OPPOSITION_PARAM,
            or_(FhirIndex.low.is_(None), FhirIndex.low <= now), or_(FhirIndex.high.is_(None), FhirIndex.high > now)]


@dataclass(frozen=True)
class Access:
    """The studies one caller may see.

    Attributes
    ----------
    orgs : frozenset of str or None
        Organisations whose studies are visible; ``None`` means every organisation.
    patient : PatientRef or None
        The only patient whose studies are visible (``patient/`` scopes); ``None``: any patient.
    grantee : Grantee or None
        The caller as a share grantee: studies of other organisations granted to its organisation
        or to it (:mod:`drimhub.sharing.grants`) are visible too, while the grant is active and
        their patient did not oppose sharing. None: no share counts.
    only : frozenset of str or None
        The only studies visible at all (a share link's capability: one study); ``None``: no such
        restriction.
    opposed : bool
        Studies of patients who opposed sharing (:mod:`drimhub.sharing.consent`) are hidden: set
        for peers' access, never for local care (shared studies are always checked).
    cached : bool
        Cached copies of peers' studies are visible too (the federated root only, and the node's
        own tools). Without it an access that sees every organisation still sees no cached copy.
    copies_after : datetime or None
        Cached copies are visible only while their ``expires_at`` is after this moment (the
        federated root's widening sets it to now); None: no such condition (the node's tools).
    """

    orgs: frozenset[str] | None
    patient: PatientRef | None = None
    grantee: Grantee | None = None
    only: frozenset[str] | None = None
    opposed: bool = False
    cached: bool = False
    copies_after: datetime | None = None

    @classmethod
    def of_org(cls, org: str, patient: PatientRef | None = None) -> Access:
        """One organisation's studies (and one of its patients' only, when ``patient`` is given)."""
        return cls(frozenset({org}), patient)

    def sees_org(self, org: str) -> bool:
        """True when studies owned by ``org`` are visible (share grants aside)."""
        if self.orgs is None:
            return self.cached or not is_reserved_org(org)
        return org in self.orgs

    def sees_patient(self, patient_id: str | None, issuer: str | None) -> bool:
        """True when a study of this patient is visible (always, without a patient restriction)."""
        return self.patient is None or self.patient.matches(patient_id, issuer)

    def study_filter(self) -> list[ColumnElement[bool]]:
        """SQL conditions on :class:`~drimhub.store.models.Study` (organisation, shares, consent, patient)."""
        now = datetime.now(timezone.utc)
        clauses: list[ColumnElement[bool]] = []
        if self.orgs is not None:
            own = Study.org.in_(sorted(self.orgs))
            if self.grantee is not None:
                shared = and_(self.grantee.grants(Study.study_uid, Study.org, now), Study.origin.is_(None),
                              not_(opposed(Study.patient_ref, Study.patient_id, Study.issuer_of_patient_id, now)))
                own = or_(own, shared)
            clauses.append(own)
        elif not self.cached:  # every organisation, but not the cache's (named orgs exclude it already)
            clauses += [Study.origin.is_(None), not_(Study.org.startswith(RESERVED_ORG_PREFIX, autoescape=True))]
        if self.copies_after is not None:
            clauses.append(or_(Study.origin.is_(None), Study.expires_at > self.copies_after))
        if self.only is not None:
            clauses.append(Study.study_uid.in_(sorted(self.only)))
        if self.opposed:
            clauses.append(not_(opposed(Study.patient_ref, Study.patient_id, Study.issuer_of_patient_id, now)))
        if self.patient is not None:
            clauses.append(Study.patient_id == self.patient.id)
            if self.patient.issuer is not None:
                clauses.append(Study.issuer_of_patient_id == self.patient.issuer)
        return clauses


#: No restriction: the node's own tools (``drimhub import``, purges), never a request; cached copies too.
EVERYTHING = Access(None, cached=True)
