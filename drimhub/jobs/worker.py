"""The worker: huey's consumer with the periodic tasks, and how ``drimhub serve`` runs one beside it.

At start-up the worker hands the queue every job it may have lost (:func:`tasks.recover`): a
running job whose lease ran out (its worker was killed; huey drops the task it was running),
and queued or retrying jobs that are due. Every minute the periodic recovery does the same for
jobs overdue by :data:`~drimhub.jobs.state.OVERDUE_SECONDS`; every hour the retention purge runs.

Run ``python -m drimhub.jobs.worker [--workers N]`` or ``drimhub worker``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading

from flask import Flask

log = logging.getLogger(__name__)

#: Linux prctl option: the signal a child gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def run(app: Flask, workers: int = 1) -> None:
    """Recover the lost jobs, then consume the queue until SIGINT/SIGTERM (graceful) or SIGKILL."""
    from drimhub.jobs import queue, state, tasks

    state.RetryPolicy.from_config(app.config)  # a bad setting stops the worker here, not each job
    huey = queue.queue_of(app).huey
    with app.app_context():
        recovered = tasks.recover(app)
    log.info("drimhub worker: %d job(s) recovered at start-up, queue %s", len(recovered), huey.name)
    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=True, scheduler_interval=1,
                                    max_delay=1.0)
    consumer.run()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when ``drimhub serve`` dies, even by SIGKILL (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    prctl = getattr(libc, "prctl", None)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(workers: int = 1) -> subprocess.Popen[bytes]:
    """Start a worker process beside ``drimhub serve`` (same environment, same output)."""
    env = {**os.environ, "DRIMHUB_AUTO_MIGRATE": "false"}  # serve applied them before it started
    return subprocess.Popen([sys.executable, "-m", "drimhub.jobs.worker", "--workers", str(workers)], env=env,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Stop a worker started by :func:`spawn`: SIGTERM (it finishes its current tasks), then SIGKILL."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Supervisor:
    """Keeps one worker (:func:`spawn`) running beside ``drimhub serve``: a worker that died (killed,
    out of memory) is started again within :data:`CHECK_SECONDS`; :meth:`stop` stops it for good."""

    #: Seconds between two checks of the worker.
    CHECK_SECONDS = 2.0

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.process = spawn(workers)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="drimhub-worker-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(self.CHECK_SECONDS):
            with self._lock:
                if self._stopping.is_set() or self.process.poll() is None:
                    continue
                log.warning("drimhub serve: the job worker exited (%s), starting another", self.process.returncode)
                self.process = spawn(self.workers)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching, then stop the worker (:func:`stop`)."""
        self._stopping.set()
        with self._lock:
            stop(self.process, timeout)


def main(argv: list[str] | None = None) -> None:
    """``python -m drimhub.jobs.worker``: the same as ``drimhub worker``."""
    from drimhub.jobs.cli import worker

    worker.main(args=argv, prog_name="drimhub worker")


if __name__ == "__main__":
    main()
