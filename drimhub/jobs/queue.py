"""The job queue: huey on SQLite (embedded default) or Redis (scale-out), from ``DRIMHUB_JOBS_URL``."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Build the app's huey instance from ``JOBS_URL`` and register the tasks."""


def enqueue(job_id: str) -> None:
    """Hand the job ``job_id`` (a :class:`~drimhub.store.network.Job` row, committed) to the queue."""
    raise NotImplementedError
