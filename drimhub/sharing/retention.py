"""Retention: which studies have expired, and their purge (``drimhub purge`` and the hourly job).

Policies (``DRIMHUB_RETENTION``): items ``KIND=DAYS`` separated by spaces or commas, each kind at
most once, ``DAYS`` a whole number of days (0 or more).

``cached=DAYS``
    Cached copies of peers' studies (:attr:`~drimhub.store.models.Study.origin` set): a copy
    expires ``DAYS`` after it was retrieved (its :attr:`~drimhub.store.models.Study.expires_at`,
    set then; a copy without one ``DAYS`` after it was stored here). Without this policy, 30 days
    (:data:`DEFAULT_CACHE_DAYS`): expired cached copies are purged with or without it.
``org:ORG=DAYS``
    Studies of organisation ``ORG``: expired ``DAYS`` after their final report, the latest
    DiagnosticReport of status ``final``, ``amended`` or ``corrected`` whose ``imagingStudy``
    names the study (the ``imaging-study`` index; its ``issued`` time, else when it was last
    written). A study without such a report is kept.

A study expired by any policy is purged (:func:`run`, the one entry point of ``drimhub purge``
and of the scheduled job) in ONE write transaction per study: its manifests and their
DocumentReferences (:func:`drimhub.sharing.manifests.remove_study`), one audit event DICOM
"Study Deleted" (PS3.15 A.5.3.5, DCM 110105, action D; agent the node's purge, entities the study,
its patient and the deleted DocumentReferences, the policy as the study's description:
:func:`audit_deletion`), and its rows through the DICOMweb delete service
(:func:`drimhub.dicomweb.delete.delete`, which also removes the reports derived from its SR and
PDF instances); its blobs after the commit. A study that fails is logged and counted, the others
are purged.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from drimhub.errors import DrimhubError, NotFound
from drimhub.store.models import FhirIndex, FhirResource, Study, utc

log = logging.getLogger(__name__)

#: DiagnosticReport statuses of a final report (R4 diagnostic-report-status).
FINAL_STATUSES = ("final", "amended", "corrected")
#: DICOM audit event of a purge (PS3.15 A.5.3.5; PS3.16 CID 400).
STUDY_DELETED = ("http://dicom.nema.org/resources/ontology/DCM", "110105", "DICOM Study Deleted")
#: The agent of purge events (AuditEvent client agent).
PURGE_AGENT = "drimhub-purge"
#: The node in audit events when it has no public base URL (``DRIMHUB_BASE_URL``).
NODE_URN = "urn:drimhub:node"
#: audit-entity-type (R4): a DocumentReference deleted with its study is a system object.
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"

#: Days a cached copy is kept when ``DRIMHUB_RETENTION`` has no ``cached=DAYS`` policy.
DEFAULT_CACHE_DAYS = 30

_ITEM = re.compile(r"^(cached|org:([^\s,=]{1,64}))=(\d{1,6})$")


@dataclass(frozen=True)
class Rule:
    """One retention policy: ``kind`` ``cached`` or ``org`` (with ``org``), and its days."""

    kind: str
    days: int
    org: str | None = None

    def __str__(self) -> str:
        return f"cached={self.days}" if self.kind == "cached" else f"org:{self.org}={self.days}"


@dataclass(frozen=True)
class Deleted:
    """A study being deleted, as its audit event names it, and why."""

    study_uid: str
    org: str
    patient_id: str | None
    issuer: str | None
    reason: str


@dataclass(frozen=True)
class Expired:
    """A study to purge and the policy that expired it."""

    study_uid: str
    org: str
    patient_id: str | None
    issuer: str | None
    rule: Rule


def parse_rules(text: str) -> tuple[Rule, ...]:
    """The policies of a ``DRIMHUB_RETENTION`` value.

    Raises
    ------
    DrimhubError
        An item is not ``cached=DAYS`` or ``org:ORG=DAYS``, or a kind appears twice.
    """
    rules: list[Rule] = []
    for item in (i for i in re.split(r"[\s,]+", text or "") if i):
        match = _ITEM.match(item)
        if match is None:
            raise DrimhubError(f"DRIMHUB_RETENTION: {item!r} is not cached=DAYS or org:ORG=DAYS "
                               "(DAYS a whole number of days)")
        rule = Rule("org" if match.group(2) else "cached", int(match.group(3)), match.group(2))
        if any((r.kind, r.org) == (rule.kind, rule.org) for r in rules):
            raise DrimhubError(f"DRIMHUB_RETENTION: {item!r} repeats a policy")
        rules.append(rule)
    return tuple(rules)


def cache_days(text: str) -> int:
    """Days a cached copy is kept: the ``cached=DAYS`` policy of ``text``, else :data:`DEFAULT_CACHE_DAYS`."""
    return next((r.days for r in parse_rules(text) if r.kind == "cached"), DEFAULT_CACHE_DAYS)


_COLUMNS = (Study.study_uid, Study.org, Study.patient_id, Study.issuer_of_patient_id)


def _expired_copies(session: Session, rule: Rule, now: datetime) -> list[Any]:
    stored_before = now - timedelta(days=rule.days)
    return list(session.execute(select(*_COLUMNS).where(
        Study.origin.is_not(None),
        or_(and_(Study.expires_at.is_not(None), Study.expires_at <= now),
            and_(Study.expires_at.is_(None), Study.created_at <= stored_before)))))


def _expired_reported(session: Session, rule: Rule, now: datetime) -> list[Any]:
    about, status, issued = aliased(FhirIndex), aliased(FhirIndex), aliased(FhirIndex)
    reported = func.max(func.coalesce(issued.low, FhirResource.last_updated))
    stmt = (select(*_COLUMNS)
            .join(about, and_(about.type == "DiagnosticReport", about.param == "imaging-study",
                              about.ref_type == "ImagingStudy", about.ref_id == Study.study_uid))
            .join(FhirResource, and_(FhirResource.pk == about.resource_pk, FhirResource.org == Study.org,
                                     FhirResource.deleted.is_(False)))
            .join(status, and_(status.resource_pk == about.resource_pk, status.param == "status",
                               status.value.in_(FINAL_STATUSES)))
            .outerjoin(issued, and_(issued.resource_pk == about.resource_pk, issued.param == "issued"))
            .where(Study.org == rule.org)
            .group_by(*_COLUMNS)
            .having(reported <= now - timedelta(days=rule.days)))
    return list(session.execute(stmt))


def expired(session: Session, rules: tuple[Rule, ...], now: datetime) -> list[Expired]:
    """The studies ``rules`` expire at ``now`` (each once, with the first policy that expires it)."""
    found: dict[str, Expired] = {}
    if not any(r.kind == "cached" for r in rules):
        rules = (*rules, Rule("cached", DEFAULT_CACHE_DAYS))  # expired cached copies go in any case
    for rule in rules:
        select_rows = _expired_copies if rule.kind == "cached" else _expired_reported
        for uid, org, patient_id, issuer in select_rows(session, rule, now):
            found.setdefault(uid, Expired(uid, org, patient_id, issuer, rule))
    return sorted(found.values(), key=lambda e: e.study_uid)


@dataclass(frozen=True)
class PurgeReport:
    """What a purge did: the studies purged (or that would be, ``dry_run``) and those that failed."""

    purged: list[str]
    failed: list[str]
    dry_run: bool = False


def node_url(config: Mapping[str, Any]) -> str:
    """The node as the audit events name it: its public base URL, else :data:`NODE_URN`."""
    return str(config.get("BASE_URL") or NODE_URN)


def run(res: Any, config: Mapping[str, Any], *, now: datetime | None = None, dry_run: bool = False) -> PurgeReport:
    """The one entry point of a purge (``drimhub purge`` and the scheduled job): the policies
    ``config["RETENTION"]``, the node named by :func:`node_url`.

    Parameters
    ----------
    res : drimhub.server.db.Resources
        The app's resources (``app.extensions["drimhub"]``): ``.sessions`` and ``.blobs``.
    config : mapping
        The app's configuration (``RETENTION``, ``BASE_URL``).
    now, dry_run
        As :func:`purge`.

    Raises
    ------
    DrimhubError
        The policies cannot be read.
    """
    return purge(res, str(config.get("RETENTION") or ""), node=node_url(config), now=now, dry_run=dry_run)


def purge(res: Any, rules: str, *, node: str, now: datetime | None = None, dry_run: bool = False) -> PurgeReport:
    """Purge the studies the policies ``rules`` expire, one by one.

    Each study goes in one write transaction with its manifests, their DocumentReferences and
    its "Study Deleted" audit event (:func:`audit_deletion`): an event is recorded if and only if
    the rows went. A study that cannot be purged is logged and counted in ``failed``, and the
    purge goes on with the next one (the next purge tries it again); one gone meanwhile (a DELETE,
    another purge) is in neither list.

    Parameters
    ----------
    res : drimhub.server.db.Resources
        The app's resources: ``.sessions`` and ``.blobs``.
    rules : str
        A ``DRIMHUB_RETENTION`` value.
    node : str
        The node's URL, as the audit events name it (:func:`node_url`).
    now : datetime, optional
        The moment expiry is judged at (default: now).
    dry_run : bool
        Only list what would be purged.

    Raises
    ------
    DrimhubError
        ``rules`` cannot be read.
    """
    # imported here: drimhub.server.config reads the policies at start-up through this module
    from drimhub.dicomweb import delete
    from drimhub.store.access import EVERYTHING

    parsed = parse_rules(rules)
    moment = utc(now or datetime.now(timezone.utc))
    with res.sessions() as session:
        found = expired(session, parsed, moment)
    if dry_run:
        return PurgeReport([study.study_uid for study in found], [], dry_run=True)
    report = PurgeReport([], [])
    for study in found:
        def record(session: Session, study: Expired = study) -> None:
            audit_deletion(session, study.study_uid, node=node, reason=f"retention policy {study.rule}",
                           documents=_remove_manifests(session, study.study_uid))
        try:
            delete.delete(res.sessions, res.blobs, EVERYTHING, study.study_uid, before=record)
        except NotFound:
            continue  # gone meanwhile: nothing was deleted here, nor recorded
        except Exception:  # one study's failure does not stop the purge of the others
            log.exception("retention: purging study %s failed; the next purge tries again", study.study_uid)
            report.failed.append(study.study_uid)
            continue
        report.purged.append(study.study_uid)
    if report.failed:
        log.error("retention: %d stud(ies) could not be purged", len(report.failed))
    return report


def _remove_manifests(session: Session, study_uid: str) -> list[str]:
    from drimhub.sharing import manifests

    return manifests.remove_study(session, study_uid)


def audit_deletion(session: Session, study_uid: str, *, node: str, reason: str,
                   documents: Sequence[str] = ()) -> None:
    """Record the DICOM "Study Deleted" event of ``study_uid`` in the caller's write transaction.

    Call it before the study's rows go, in their transaction (it reads the study's organisation
    and patient): :func:`drimhub.dicomweb.delete.delete`'s ``before``. Used by the purge and by
    the eviction of a cached copy at STOW time.

    Parameters
    ----------
    session : Session
        The deletion's write transaction.
    study_uid : str
        The study about to be deleted (unknown: nothing is recorded).
    node : str
        The node's URL (:func:`node_url`).
    reason : str
        Why it is deleted: the entity's description (``retention policy cached=30``).
    documents : sequence of str
        Ids of the DocumentReferences deleted with it (its manifests), named in the event.
    """
    from drimhub.store import audit as audit_store

    row = session.execute(select(*_COLUMNS).where(Study.study_uid == study_uid)).first()
    if row is None:
        return
    uid, org, patient_id, issuer = row
    audit_store.add(session, [audit_event(Deleted(uid, org, patient_id, issuer, reason), node, documents)])


def audit_event(study: Deleted, node: str, documents: Sequence[str] = ()) -> tuple[dict[str, Any], bytes]:
    """The search columns and the FHIR JSON of the "Study Deleted" event of one deleted study."""
    from drimhub.mappings.audit import (AccessFacts, Caller, PatientRef, build_event, patient_system,
                                        search_columns)

    patient = PatientRef(patient_system(study.issuer), study.patient_id) if study.patient_id else None
    facts = AccessFacts(event_id=str(uuid.uuid4()), recorded=datetime.now(timezone.utc), domain="dicomweb",
                        interaction="delete", status=200, caller=Caller(client_id=PURGE_AGENT, org=study.org),
                        server_url=node, patient=patient, studies=(study.study_uid,))
    event = build_event(facts)
    system, code, display = STUDY_DELETED
    event["type"] = {"system": system, "code": code, "display": display}
    for entity in event["entity"]:
        if (entity.get("what") or {}).get("type") == "ImagingStudy":
            entity["description"] = study.reason
    event["entity"] += [{"what": {"reference": f"DocumentReference/{sop_uid}", "type": "DocumentReference"},
                         "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                         "description": "KOS manifest deleted with its study"} for sop_uid in documents]
    columns = {**search_columns(facts), "event_type": code}
    return columns, orjson.dumps(event)
