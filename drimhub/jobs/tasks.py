"""The huey tasks: run a job, recover the jobs the queue lost (every minute), purge (every hour).

Each task runs in the app's context, so that the services find the app's sessions, blobs and
signing key (:func:`drimhub.server.db.resources`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask
from huey import Huey, crontab
from huey.api import TaskWrapper

from drimhub.errors import DrimhubError, Forbidden, NotFound
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
    """Register the tasks of ``app`` on ``huey`` (their names are fixed: producers and workers agree)."""

    def run_job_task(job_id: str) -> None:
        with app.app_context():
            run_job(app, job_id)

    def recover_task() -> None:
        with app.app_context():
            recover(app, state.OVERDUE_SECONDS)

    def purge_task() -> None:
        with app.app_context():
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
    """Run one attempt of job ``job_id`` if it is due; returns its state after, None if not run.

    A failed attempt is scheduled again after the back-off of :class:`state.RetryPolicy`, or
    the job fails (a permanent error, the last attempt).
    """
    res = _resources(app)
    job = state.claim(res.sessions, job_id)
    if job is None:
        return None
    policy = state.RetryPolicy.from_config(app.config)
    try:
        if job.kind != state.PUSH:
            raise PushError(f"unknown kind of job {job.kind!r}", permanent=True)
        run_push(app, job)
    except PushError as exc:
        delay = state.fail(res.sessions, job_id, str(exc), policy, exc.permanent)
    except (NotFound, Forbidden) as exc:  # the peer was removed, the patient opposed sharing
        delay = state.fail(res.sessions, job_id, exc.message, policy, permanent=True)
    except DrimhubError as exc:  # the peer is unavailable (its token endpoint...)
        delay = state.fail(res.sessions, job_id, exc.message, policy)
    except Exception as exc:
        log.warning("job %s: attempt %d failed", job_id, job.attempts, exc_info=True)
        delay = state.fail(res.sessions, job_id, f"{type(exc).__name__}: {exc}", policy)
    else:
        state.succeed(res.sessions, job_id)
        log.info("job %s: %s of study %s to %s succeeded", job_id, job.kind, job.study_uid, job.peer)
        return state.SUCCEEDED
    if delay is None:
        log.warning("job %s failed after %d attempt(s)", job_id, job.attempts)
        return state.FAILED
    from drimhub.jobs.queue import enqueue

    enqueue(job_id, delay=delay, app=app)
    log.info("job %s: attempt %d failed, next in %.1f s", job_id, job.attempts, delay)
    return state.RETRYING


def _cursor(result: bytes | None) -> int:
    """The last instance row a previous attempt had sent (0: none)."""
    try:
        return int(orjson.loads(result).get("after_pk", 0)) if result else 0
    except (ValueError, AttributeError, TypeError):
        return 0


def run_push(app: Flask, job: Job) -> None:
    """Send the job's study to its peer, resuming after what an earlier attempt had sent.

    Raises
    ------
    PushError, NotFound, Forbidden
        The study is gone, the peer unknown, the patient opposed sharing, the peer failed.
    """
    from drimhub.federation import outbound, peers
    from drimhub.sharing import consent

    res = _resources(app)
    assert job.study_uid is not None and job.peer is not None
    with res.sessions() as session:
        if locate_study(session, job.study_uid, Access.of_org(job.org)) is None:
            raise PushError(f"study {job.study_uid} is no longer stored here", permanent=True)
        consent.check_shareable(session, job.study_uid)
        peer = peers.get_peer(session, job.peer)
        total = push.count_instances(session, job.study_uid)
    after_pk = _cursor(job.result)
    done = job.done if after_pk else 0
    state.progress(res.sessions, job.id, done=done, total=total, result=job.result if after_pk else None)
    client = outbound.dicomweb_client(peer, res.signing_key, timeout=PUSH_TIMEOUT)

    def on_batch(last_pk: int, sent: int) -> None:
        nonlocal done, total
        done += sent
        total = max(total, done)  # instances stored in the study meanwhile
        state.progress(res.sessions, job.id, done=done, total=total, result=orjson.dumps({"after_pk": last_pk}))

    push.send(res.sessions, res.blobs, client, job.study_uid, after_pk, on_batch)


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
    """The scheduled retention purge (``drimhub.sharing.retention``, rules ``DRIMHUB_RETENTION``)."""
    from drimhub.sharing import retention

    rules = str(app.config.get("RETENTION") or "")
    if not rules.strip():
        return []
    purged = retention.purge(_resources(app), rules)
    log.info("retention purge removed %d stud(ies)", len(purged))
    return purged
