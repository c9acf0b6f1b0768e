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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, not_, or_

from drimhub.store.models import Study

#: Organisations starting with this prefix hold peers' cached copies: never a caller's organisation.
RESERVED_ORG_PREFIX = "peer:"


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
class Access:
    """The studies one caller may see.

    Attributes
    ----------
    orgs : frozenset of str or None
        Organisations whose studies are visible; ``None`` means every organisation.
    patient : PatientRef or None
        The only patient whose studies are visible (``patient/`` scopes); ``None``: any patient.
    shared : frozenset of str
        Studies (Study Instance UIDs) of other organisations visible through a share grant to the
        caller's organisation or to the caller (:mod:`drimhub.sharing.grants`).
    only : frozenset of str or None
        The only studies visible at all (a share link's capability: one study); ``None``: no such
        restriction.
    opposed : frozenset of str
        FHIR Patient ids whose studies are hidden because the patient opposed sharing
        (:mod:`drimhub.sharing.consent`): set for peers' and shared access, never for local care.
    cached : bool
        Cached copies of peers' studies are visible too (the federated root only, and the node's
        own tools). Without it an access that sees every organisation still sees no cached copy.
    copies_after : datetime or None
        Cached copies are visible only while their ``expires_at`` is after this moment (the
        federated root's widening sets it to now); None: no such condition (the node's tools).
    """

    orgs: frozenset[str] | None
    patient: PatientRef | None = None
    shared: frozenset[str] = frozenset()
    only: frozenset[str] | None = None
    opposed: frozenset[str] = frozenset()
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
        """SQL conditions on :class:`~drimhub.store.models.Study` (organisation and patient)."""
        clauses: list[ColumnElement[bool]] = []
        if self.orgs is not None:
            own = Study.org.in_(sorted(self.orgs))
            clauses.append(or_(own, Study.study_uid.in_(sorted(self.shared))) if self.shared else own)
        elif not self.cached:  # every organisation, but not the cache's (named orgs exclude it already)
            clauses += [Study.origin.is_(None), not_(Study.org.startswith(RESERVED_ORG_PREFIX, autoescape=True))]
        if self.copies_after is not None:
            clauses.append(or_(Study.origin.is_(None), Study.expires_at > self.copies_after))
        if self.only is not None:
            clauses.append(Study.study_uid.in_(sorted(self.only)))
        if self.opposed:
            clauses.append(or_(Study.patient_ref.is_(None), Study.patient_ref.not_in(sorted(self.opposed))))
        if self.patient is not None:
            clauses.append(Study.patient_id == self.patient.id)
            if self.patient.issuer is not None:
                clauses.append(Study.issuer_of_patient_id == self.patient.issuer)
        return clauses


#: No restriction: the node's own tools (``drimhub import``, purges), never a request; cached copies too.
EVERYTHING = Access(None, cached=True)
