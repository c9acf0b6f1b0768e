"""The job queue: huey on SQLite (embedded default) or Redis (scale-out), from ``DRIMHUB_JOBS_URL``.

``sqlite:///PATH`` (default ``<DATA_DIR>/jobs.db``): one machine, the web workers and
``drimhub worker`` share the file. ``redis://HOST:PORT/DB``: web nodes and workers on several
machines. ``DRIMHUB_JOBS_NAME`` (default ``drimhub``) names the queue, so that several nodes
may share one Redis database.

huey carries only a job's id; the job itself is a row (:mod:`drimhub.jobs.state`). The huey
instance is built on first use, not when the app is created, so that an app that never
enqueues (a test, ``drimhub token``) opens no queue.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, current_app
from huey import Huey, RedisHuey, SqliteHuey
from sqlalchemy.engine import make_url

from drimhub.errors import DrimhubError

if TYPE_CHECKING:
    from drimhub.jobs.tasks import Tasks

#: Key of the queue in ``app.extensions``.
EXTENSION = "drimhub.jobs"
#: Default name of the queue (huey's name: the Redis key prefix, the SQLite queue column).
DEFAULT_NAME = "drimhub"


def make_huey(url: str, name: str = DEFAULT_NAME) -> Huey:
    """A huey instance for ``url`` (``sqlite:///PATH`` or ``redis://...``/``rediss://...``).

    Raises
    ------
    DrimhubError
        Any other URL.
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        path = make_url(url).database
        if not path or path == ":memory:":
            raise DrimhubError("DRIMHUB_JOBS_URL: a SQLite job queue needs a file, sqlite:///PATH")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # fsync: an enqueued job survives a power loss, like the job row that names it
        return SqliteHuey(name, filename=path, fsync=True, results=False, utc=True)
    if scheme in ("redis", "rediss", "unix"):
        return RedisHuey(name, url=url, results=False, utc=True)
    raise DrimhubError(f"DRIMHUB_JOBS_URL must be sqlite:///PATH or redis://HOST:PORT/DB, not a {scheme or '?'} URL")


class JobQueue:
    """An app's queue: its huey instance (built on first use) with the tasks registered."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._huey: Huey | None = None
        self._tasks: Tasks | None = None
        self._lock = threading.Lock()

    def _build(self) -> tuple[Huey, Tasks]:
        with self._lock:
            if self._huey is None or self._tasks is None:
                from drimhub.jobs import tasks

                name = str(self.app.config.get("JOBS_NAME") or DEFAULT_NAME)
                self._huey = make_huey(str(self.app.config["JOBS_URL"]), name)
                self._tasks = tasks.register(self._huey, self.app)
            return self._huey, self._tasks

    @property
    def huey(self) -> Huey:
        """The huey instance, its tasks registered."""
        return self._build()[0]

    @property
    def tasks(self) -> Tasks:
        """The registered tasks."""
        return self._build()[1]


def init_app(app: Flask) -> None:
    """Keep the app's queue in ``app.extensions`` (its huey instance is built on first use)."""
    app.extensions[EXTENSION] = JobQueue(app)


def queue_of(app: Flask | None = None) -> JobQueue:
    """The queue of ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    job_queue: JobQueue = target.extensions[EXTENSION]
    return job_queue


def enqueue(job_id: str, delay: float | None = None, app: Flask | None = None) -> None:
    """Hand the job ``job_id`` (a :class:`~drimhub.store.network.Job` row, committed) to the queue.

    ``delay``: seconds before a worker may take it (a retry's back-off).
    """
    run_job = queue_of(app).tasks.run_job
    if delay:
        run_job.schedule(args=(job_id,), delay=delay)
    else:
        run_job(job_id)
