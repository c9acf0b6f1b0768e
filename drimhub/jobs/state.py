"""The job rows: the one record of a background job's state (``GET /api/jobs/{id}``).

huey only carries a job's id; everything else lives in the ``job`` table
(:class:`~drimhub.store.network.Job`), so that a job survives its worker and the queue::

    queued ──claim──▶ running ──▶ succeeded
                        │  ▲
                        │  └── claim again once its lease ran out (its worker died)
                        ├──▶ retrying ── next_attempt reached ── claim ──▶ running
                        └──▶ failed     (a permanent error, or the last attempt failed)

A claim is one conditional UPDATE: of two workers handed the same id (the queue and the
recovery both enqueued it), exactly one runs the job. A running job holds a lease
(``lease_until``) that its worker renews while it works, and a fencing token (``lease_id``,
fresh at each claim): every later write of the attempt matches that token, so a worker whose
lease ran out and was taken over changes nothing (:class:`LeaseLost` stops its run).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from drimhub.errors import DrimhubError
from drimhub.store.engine import write_session
from drimhub.store.models import utc
from drimhub.store.network import Job

QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED = "queued", "running", "retrying", "succeeded", "failed"
#: States of a job that is not finished.
PENDING = (QUEUED, RUNNING, RETRYING)
#: Kind of a push of a study to a peer.
PUSH = "push"

#: Seconds a claim lasts before another worker may take the job over; renewed while the job works.
LEASE_SECONDS = 300.0
#: Seconds a due queued/retrying job may wait in the queue before the periodic recovery hands it
#: to the queue again (the queue lost it, or the queue is that far behind).
OVERDUE_SECONDS = 60.0
#: Longest error text kept on a job.
MAX_ERROR = 2000


class LeaseLost(Exception):
    """This worker's lease on a job ran out and another worker took the job over (or it finished):
    the stale worker stops its run and writes nothing more."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id}: the lease was lost to another worker")
        self.job_id = job_id


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: attempt ``n`` failed → wait ``min(base * 2**(n-1), cap)`` seconds.

    Settings (``DRIMHUB_JOBS_RETRY_BASE``, ``DRIMHUB_JOBS_RETRY_CAP``,
    ``DRIMHUB_JOBS_MAX_ATTEMPTS``): by default 5 s, 10 s, 20 s … capped at 10 minutes, and the
    job fails after 10 attempts (about 45 minutes of retrying).
    """

    base: float = 5.0
    cap: float = 600.0
    max_attempts: int = 10

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RetryPolicy:
        """The policy of an app's settings (the defaults above where unset).

        Raises
        ------
        DrimhubError
            A setting that is not a positive number (or a cap below the base).
        """
        try:
            policy = cls(float(config.get("JOBS_RETRY_BASE", cls.base)), float(config.get("JOBS_RETRY_CAP", cls.cap)),
                         int(config.get("JOBS_MAX_ATTEMPTS", cls.max_attempts)))
        except (TypeError, ValueError):
            policy = cls(0.0)
        if not 0 < policy.base <= policy.cap or policy.max_attempts < 1:
            raise DrimhubError("DRIMHUB_JOBS_RETRY_BASE and DRIMHUB_JOBS_RETRY_CAP must be seconds (0 < base <= cap), "
                               "DRIMHUB_JOBS_MAX_ATTEMPTS a whole number of attempts (1 or more)")
        return policy

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.base * 2 ** min(max(attempt - 1, 0), 32), self.cap)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def create(session: Session, kind: str, org: str, created_by: str, *, peer: str | None = None,
           study: str | None = None) -> Job:
    """Add a queued job (flushed, not committed: the caller commits, then enqueues its id)."""
    now = now_utc()
    job = Job(id=uuid.uuid4().hex, kind=kind, state=QUEUED, org=org, created_by=created_by[:255], peer=peer,
              study_uid=study, attempts=0, done=0, next_attempt=now, created_at=now, updated_at=now)
    session.add(job)
    session.flush()
    return job


def waiting_push(session: Session, peer: str, study: str) -> Job | None:
    """A push of ``study`` to ``peer`` that has not started its next attempt (queued or retrying), if any.

    A running push is not one: it may have listed the study's instances before others were stored.
    """
    stmt = select(Job).where(Job.kind == PUSH, Job.peer == peer, Job.study_uid == study,
                             Job.state.in_((QUEUED, RETRYING))).order_by(Job.pk).limit(1)
    return session.scalars(stmt).first()


def get(session: Session, job_id: str) -> Job | None:
    """The job ``job_id``, or None."""
    return session.scalars(select(Job).where(Job.id == job_id)).first()


def _abandoned(now: datetime) -> Any:
    """Running under a lease that ran out (its worker died or hangs)."""
    return and_(Job.state == RUNNING, or_(Job.lease_until.is_(None), Job.lease_until < now))


def _claimable(now: datetime) -> Any:
    due = and_(Job.state.in_((QUEUED, RETRYING)), or_(Job.next_attempt.is_(None), Job.next_attempt <= now))
    return or_(due, _abandoned(now))


def claim(sessions: sessionmaker[Session], job_id: str, lease: float = LEASE_SECONDS) -> Job | None:
    """Start an attempt of ``job_id``: running, one more attempt, a fresh lease and fencing token
    (``job.lease_id``, to pass to every later write). None when the job is not due (finished,
    running under a live lease, waiting for its next attempt, unknown)."""
    now = now_utc()
    with write_session(sessions) as session:
        claimed = session.execute(
            update(Job).where(Job.id == job_id, _claimable(now))
            .values(state=RUNNING, attempts=Job.attempts + 1, lease_until=now + timedelta(seconds=lease),
                    lease_id=uuid.uuid4().hex, updated_at=now)).rowcount
        return get(session, job_id) if claimed == 1 else None


def _held(job_id: str, lease_id: str) -> Any:
    """The job is running under the lease ``lease_id`` (the fencing condition of every write)."""
    return and_(Job.id == job_id, Job.state == RUNNING, Job.lease_id == lease_id)


def _write(sessions: sessionmaker[Session], job_id: str, lease_id: str, **values: Any) -> None:
    """Update the job if ``lease_id`` still holds it; else :class:`LeaseLost`."""
    with write_session(sessions) as session:
        if session.execute(update(Job).where(_held(job_id, lease_id)).values(**values)).rowcount != 1:
            raise LeaseLost(job_id)


def renew(sessions: sessionmaker[Session], job_id: str, lease_id: str, lease: float = LEASE_SECONDS) -> None:
    """Extend the lease ``lease_id`` on the running job ``job_id``.

    Raises
    ------
    LeaseLost
        The lease is no longer this worker's.
    """
    now = now_utc()
    _write(sessions, job_id, lease_id, updated_at=now, lease_until=now + timedelta(seconds=lease))


def progress(sessions: sessionmaker[Session], job_id: str, lease_id: str, *, done: int, total: int | None,
             lease: float = LEASE_SECONDS) -> None:
    """Record progress of the running job and renew its lease (:class:`LeaseLost` as :func:`renew`)."""
    now = now_utc()
    _write(sessions, job_id, lease_id, done=done, total=total, updated_at=now,
           lease_until=now + timedelta(seconds=lease))


def succeed(sessions: sessionmaker[Session], job_id: str, lease_id: str) -> None:
    """The running job ``job_id`` is done (:class:`LeaseLost` as :func:`renew`)."""
    _write(sessions, job_id, lease_id, state=SUCCEEDED, error=None, lease_until=None, next_attempt=None,
           updated_at=now_utc())


def fail(sessions: sessionmaker[Session], job_id: str, lease_id: str, error: str, policy: RetryPolicy,
         permanent: bool = False) -> float | None:
    """An attempt of the running job ``job_id`` failed with ``error``.

    Returns
    -------
    float or None
        Seconds until the next attempt (state ``retrying``), or None: the job ``failed``
        (``permanent``, or that was its last attempt).

    Raises
    ------
    LeaseLost
        The lease is no longer this worker's (nothing is written).
    """
    now = now_utc()
    with write_session(sessions) as session:
        attempts = session.scalar(select(Job.attempts).where(_held(job_id, lease_id)))
        if attempts is None:
            raise LeaseLost(job_id)
        delay = None if permanent or attempts >= policy.max_attempts else policy.delay(attempts)
        changed = session.execute(update(Job).where(_held(job_id, lease_id)).values(
            error=error[:MAX_ERROR], lease_until=None, updated_at=now, state=FAILED if delay is None else RETRYING,
            next_attempt=None if delay is None else now + timedelta(seconds=delay))).rowcount
        if changed != 1:
            raise LeaseLost(job_id)
        return delay


def due(sessions: sessionmaker[Session], overdue: float = 0.0, limit: int = 1000) -> list[str]:
    """Ids of the jobs the queue may have lost: running under an expired lease, or queued/retrying
    and due for ``overdue`` seconds. Their ``next_attempt`` is moved to now, so that one recovery
    pass after another does not hand the same waiting job over again and again."""
    now = now_utc()
    late = now - timedelta(seconds=overdue)
    with write_session(sessions) as session:
        waiting = and_(Job.state.in_((QUEUED, RETRYING)), or_(Job.next_attempt.is_(None), Job.next_attempt <= late))
        ids = list(session.scalars(select(Job.id).where(or_(waiting, _abandoned(now))).order_by(Job.pk).limit(limit)))
        if ids:
            session.execute(update(Job).where(Job.id.in_(ids), Job.state.in_((QUEUED, RETRYING)))
                            .values(next_attempt=now))
        return ids


def _iso(moment: datetime | None) -> str | None:
    return utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def job_json(job: Job) -> dict[str, Any]:
    """The API form of a job (``GET /api/jobs/{id}``)."""
    return {"id": job.id, "kind": job.kind, "state": job.state, "peer": job.peer, "study": job.study_uid,
            "attempts": job.attempts, "done": job.done, "total": job.total, "error": job.error,
            "created": _iso(job.created_at), "updated": _iso(job.updated_at)}
