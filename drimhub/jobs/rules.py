"""Push rules ("every CT of organisation X goes to peer T") and the push jobs, made by the API,
by the rules after a STOW or ``drimhub import`` (:func:`after_store`), and by ``drimhub push-rule``
(no Flask here)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

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


def pushable_peer(session: Session, name: str) -> Any:
    """The peer ``name`` (a :class:`~drimhub.federation.peers.PeerInfo`) if a push may go to it.

    Raises
    ------
    NotFound
        No peer called ``name``.
    InvalidRequest
        A ``relay`` peer: it accepts only the caller's own token, and a background job has none.
    """
    from drimhub.federation.peers import get_peer

    peer = get_peer(session, name)
    if peer.auth == "relay":
        raise InvalidRequest(f"peer {name} is a relay peer: it needs the user's own token, which a background "
                             "push does not have; add it with SMART backend authentication to push to it")
    return peer


def add_rule(session: Session, peer: str, org: str | None = None, modality: str | None = None) -> PushRule:
    """Add a rule: studies of ``org`` (None: any) with a series of ``modality`` (None: any) go to ``peer``.

    Raises
    ------
    NotFound
        No peer called ``peer`` (:func:`drimhub.federation.peers.get_peer`).
    InvalidRequest
        A modality that is not a DICOM code string, or a relay peer (:func:`pushable_peer`).
    """
    pushable_peer(session, peer)
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
    """The waiting push of ``study`` to ``peer``, or a new queued one; (job, created).

    A request while a push of the study to the peer is queued or retrying gets that job: its next
    attempt sends every instance of the study as it is then. A running push is not reused (it
    may have listed the study before the instances that prompted this request were stored): a
    new queued job follows it.
    """
    waiting = state.waiting_push(session, peer, study)
    if waiting is not None:
        return waiting, False
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


def after_store(res: Any, studies: Iterable[str], app: Any = None) -> list[str]:
    """After instances of ``studies`` were stored and committed (a STOW, ``drimhub import``): queue
    the pushes the push rules ask for. Never raises: a job row committed but not enqueued is
    handed to the queue by the periodic recovery; a failure is logged.

    Parameters
    ----------
    res : drimhub.server.db.Resources
        The app's resources (``.sessions``).
    studies : iterable of str
        Study Instance UIDs stored into.
    app : flask.Flask, optional
        The app whose queue takes the jobs (default: the current app).

    Returns
    -------
    list of str
        Ids of the jobs queued.
    """
    studies = sorted(set(studies))
    queued: list[str] = []
    try:
        from drimhub.jobs.queue import enqueue

        for job_id in jobs_for_stored(res.sessions, studies):
            enqueue(job_id, app=app)
            queued.append(job_id)
    except Exception:
        log.exception("push rules: the pushes of studies %s were not all queued", studies)
    return queued
