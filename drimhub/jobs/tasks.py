"""The huey tasks: run a job, recover the jobs the queue lost (every minute), purge (every hour).

Each task runs in the app's context, so that the services find the app's sessions, blobs and
signing key (:func:`drimhub.server.db.resources`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask
from huey import Huey, crontab
from huey.api import TaskWrapper

from drimhub.errors import DrimhubError, Forbidden, InvalidRequest, NotFound
from drimhub.jobs import push, state
from drimhub.jobs.push import PushError
from drimhub.server.db import Resources
from drimhub.store.access import Access
from drimhub.store.network import Job
from drimhub.store.retrieve import locate_study

log = logging.getLogger(__name__)

#: Seconds one STOW-RS request of a push may take (a batch is up to 64 MiB); below the lease.
PUSH_TIMEOUT = 120.0


@dataclass(frozen=True)
class Tasks:
    """The tasks registered on one huey instance."""

    run_job: TaskWrapper
    recover: TaskWrapper
    purge: TaskWrapper


def register(huey: Huey, app: Flask) -> Tasks:
    """Register the tasks of ``app`` on ``huey`` (their names are fixed: producers and workers agree).

    The periodic tasks hold a huey lock (in the queue's store: SQLite or Redis), so that with
    several workers one recovery and one purge run at a time; a worker that finds the lock
    taken skips that run.
    """

    def run_job_task(job_id: str) -> None:
        with app.app_context():
            run_job(app, job_id)

    def recover_task() -> None:
        with huey.lock_task("drimhub.recover"), app.app_context():
            recover(app, state.OVERDUE_SECONDS)

    def purge_task() -> None:
        with huey.lock_task("drimhub.purge"), app.app_context():
            purge(app)

    return Tasks(
        run_job=huey.task(name="drimhub.run_job")(run_job_task),
        recover=huey.periodic_task(crontab(minute="*"), name="drimhub.recover")(recover_task),
        purge=huey.periodic_task(crontab(minute="0"), name="drimhub.purge")(purge_task),
    )


def _resources(app: Flask) -> Resources:
    res: Resources = app.extensions["drimhub"]
    return res


def run_job(app: Flask, job_id: str) -> str | None:
    """Run one attempt of job ``job_id`` if it is due; returns its state after, None if not run
    (not due, or this worker lost its lease meanwhile: another worker runs the job).

    A failed attempt is scheduled again after the back-off of :class:`state.RetryPolicy`, or
    the job fails (a permanent error, the last attempt). Each attempt's outcome of a push is
    audited (:func:`drimhub.jobs.export.audit_attempt`).
    """
    res = _resources(app)
    job = state.claim(res.sessions, job_id)
    if job is None or job.lease_id is None:
        return None
    lease = job.lease_id
    policy = state.RetryPolicy.from_config(app.config)
    outcome, error = state.SUCCEEDED, None
    try:
        try:
            if job.kind != state.PUSH:
                raise PushError(f"unknown kind of job {job.kind!r}", permanent=True)
            run_push(app, job, lease)
        except PushError as exc:
            error, delay = str(exc), state.fail(res.sessions, job_id, lease, str(exc), policy, exc.permanent)
        except (NotFound, Forbidden, InvalidRequest) as exc:  # the peer removed or relay, sharing opposed
            error, delay = exc.message, state.fail(res.sessions, job_id, lease, exc.message, policy, permanent=True)
        except DrimhubError as exc:  # the peer is unavailable (its token endpoint...)
            error, delay = exc.message, state.fail(res.sessions, job_id, lease, exc.message, policy)
        except state.LeaseLost:
            raise
        except Exception as exc:
            log.warning("job %s: attempt %d failed", job_id, job.attempts, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
            delay = state.fail(res.sessions, job_id, lease, error, policy)
        else:
            state.succeed(res.sessions, job_id, lease)
            delay = None
    except state.LeaseLost:
        log.warning("job %s: attempt %d stopped, its lease was taken over by another worker", job_id, job.attempts)
        return None
    if error is not None:
        outcome = state.FAILED if delay is None else state.RETRYING
    _audit(app, job, outcome, error)
    if outcome == state.SUCCEEDED:
        log.info("job %s: %s of study %s to %s succeeded", job_id, job.kind, job.study_uid, job.peer)
    elif outcome == state.FAILED:
        log.warning("job %s failed after %d attempt(s)", job_id, job.attempts)
    else:
        from drimhub.jobs.queue import enqueue

        enqueue(job_id, delay=delay, app=app)
        log.info("job %s: attempt %d failed, next in %.1f s", job_id, job.attempts, delay)
    return outcome


def _audit(app: Flask, job: Job, outcome: str, error: str | None) -> None:
    """The audit event of a push attempt (never fails the job: a failure is logged)."""
    if job.kind != state.PUSH:
        return
    try:
        from drimhub.jobs.export import audit_attempt

        audit_attempt(_resources(app).sessions, job, outcome, error, node=str(app.config.get("BASE_URL") or ""))
    except Exception:
        log.exception("job %s: the audit event of the attempt was not recorded", job.id)


def run_push(app: Flask, job: Job, lease: str) -> None:
    """Send the peer what it lacks of the job's study, until it holds every instance stored here.

    Raises
    ------
    PushError, NotFound, Forbidden, InvalidRequest
        The study is gone, the peer unknown or a relay peer, the patient opposed sharing, the peer failed.
    LeaseLost
        Another worker took the job over.
    """
    from drimhub.federation import outbound, smart
    from drimhub.jobs.rules import pushable_peer
    from drimhub.sharing import consent

    res = _resources(app)
    assert job.study_uid is not None and job.peer is not None
    with res.sessions() as session:
        if locate_study(session, job.study_uid, Access.of_org(job.org)) is None:
            raise PushError(f"study {job.study_uid} is no longer stored here", permanent=True)
        consent.check_shareable(session, job.study_uid)
        peer = pushable_peer(session, job.peer)
    qido = outbound.dicomweb_client(peer, res.signing_key, timeout=PUSH_TIMEOUT, max_body=push.MAX_ANSWER)
    http = outbound.peer_session(peer, res.signing_key, timeout=PUSH_TIMEOUT, max_body=push.MAX_ANSWER)
    link = push.PeerLink(qido, http, f"{peer.dicomweb_url.rstrip('/')}/studies/{job.study_uid}",
                         lambda: smart.drop_token(peer))
    heartbeat = push.throttled(lambda: state.renew(res.sessions, job.id, lease), state.LEASE_SECONDS / 10)

    def report(done: int, total: int) -> None:
        state.progress(res.sessions, job.id, lease, done=done, total=total)

    try:
        push.push_study(res.sessions, res.blobs, link, job.study_uid, report, heartbeat)
    finally:
        http.close()
        qido._session.close()


def recover(app: Flask, overdue: float = 0.0) -> list[str]:
    """Hand the queue again the jobs it may have lost (:func:`state.due`); their ids."""
    from drimhub.jobs.queue import enqueue

    ids = state.due(_resources(app).sessions, overdue)
    for job_id in ids:
        enqueue(job_id, app=app)
    if ids:
        log.info("recovered %d job(s) for the queue", len(ids))
    return ids


def purge(app: Flask) -> Any:
    """The scheduled retention purge: the same as ``drimhub purge`` (:func:`drimhub.sharing.retention.run`),
    with or without ``DRIMHUB_RETENTION`` (expired cached copies always go)."""
    from drimhub.sharing import retention

    purged = retention.run(_resources(app), app.config).purged
    log.info("retention purge removed %d stud(ies)", len(purged))
    return purged
