"""Push rules ("every CT of organisation X goes to peer T") and the push jobs, made by the API,
by the rules after a STOW, and by ``drimhub push-rule`` (no Flask here)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from drimhub.errors import InvalidRequest
from drimhub.jobs import state
from drimhub.store.engine import write_session
from drimhub.store.models import Series, Study
from drimhub.store.network import Job, PushRule

log = logging.getLogger(__name__)

#: Longest modality (CS, PS3.5 Table 6.2-1: 16 characters).
MAX_MODALITY = 16


def add_rule(session: Session, peer: str, org: str | None = None, modality: str | None = None) -> PushRule:
    """Add a rule: studies of ``org`` (None: any) with a series of ``modality`` (None: any) go to ``peer``.

    Raises
    ------
    NotFound
        No peer called ``peer`` (:func:`drimhub.federation.peers.get_peer`).
    InvalidRequest
        A modality that is not a DICOM code string.
    """
    from drimhub.federation.peers import get_peer

    get_peer(session, peer)
    if modality is not None:
        modality = modality.strip().upper()
        if not modality or len(modality) > MAX_MODALITY or not all(c.isalnum() or c in " _" for c in modality):
            raise InvalidRequest(f"not a modality: {modality!r}")
    rule = PushRule(peer=peer, org=org or None, modality=modality)
    session.add(rule)
    session.flush()
    return rule


def list_rules(session: Session) -> list[PushRule]:
    """Every rule, oldest first."""
    return list(session.scalars(select(PushRule).order_by(PushRule.pk)))


def remove_rule(session: Session, pk: int) -> bool:
    """Remove rule ``pk``; False when there is none."""
    return bool(session.execute(delete(PushRule).where(PushRule.pk == pk)).rowcount)


def push_job(session: Session, org: str, created_by: str, peer: str, study: str) -> tuple[Job, bool]:
    """The pending push of ``study`` to ``peer``, or a new queued one; (job, created).

    One pending job per study and peer: a second request while the first is queued, running or
    retrying gets that job (it sends every instance of the study as it is then).
    """
    pending = state.pending_push(session, peer, study)
    if pending is not None:
        return pending, False
    return state.create(session, state.PUSH, org, created_by, peer=peer, study=study), True


def jobs_for_stored(sessions: sessionmaker[Session], studies: Iterable[str]) -> list[str]:
    """Queue the pushes the rules ask for after a STOW stored instances of ``studies``.

    A study whose patient opposed sharing is not pushed (:mod:`drimhub.sharing.consent`).

    Returns
    -------
    list of str
        Ids of the jobs created (committed; the caller enqueues them).
    """
    studies = sorted(set(studies))
    if not studies:
        return []
    with sessions() as session:
        rules = list_rules(session)
        if not rules:
            return []
        rows = session.execute(select(Study.study_uid, Study.org, Series.modality)
                               .join(Series, Series.study_pk == Study.pk).where(Study.study_uid.in_(studies))).all()
    wanted = _matches(rules, rows)
    if not wanted:
        return []
    from drimhub.sharing import consent

    created: list[str] = []
    with write_session(sessions) as session:
        for study, org, peer in sorted(wanted):
            if consent.refusal(session, study) is not None:
                log.info("push rule: study %s not pushed to %s, its patient opposed sharing", study, peer)
                continue
            job, new = push_job(session, org, "push-rule", peer, study)
            if new:
                created.append(job.id)
    return created


def _matches(rules: list[PushRule], rows: Iterable[tuple[str, str, str | None]]) -> set[tuple[str, str, str]]:
    """(study, its org, peer) for each rule a study matches (org and one series' modality)."""
    wanted = set()
    for study, org, modality in rows:
        for rule in rules:
            if (rule.org is None or rule.org == org) and (rule.modality is None or rule.modality == modality):
                wanted.add((study, org, rule.peer))
    return wanted
