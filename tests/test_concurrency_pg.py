"""Concurrent writers on PostgreSQL: lock order of STOW, DELETE racing STOW.

These interleavings only exist with row locks (SQLite serialises writers on one lock), so the
tests run on PostgreSQL only.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

import dicomfactory as f
from drimhub.dicomweb.ingest import parse_instance
from drimhub.store.engine import write_session
from drimhub.store.index import InstanceRow, Outcome, store_instances
from drimhub.store.models import Instance, Series, Study

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def _post(app: Flask, auth: str, parts: list[bytes]):
    body, ctype = f.multipart(parts)
    return app.test_client().post("/dicom-web/studies", data=body,
                                  headers={"Content-Type": ctype, "Authorization": auth,
                                           "Accept": "application/dicom+json"})


def _count(app: Flask, model: type) -> int:
    with app.extensions["drimhub"].sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def test_stow_same_studies_in_opposite_orders_never_deadlocks(app: Flask, bearer: dict[str, str]) -> None:
    """PS3.18 §10.5: writers sharing studies, each in its own order: every instance stored, 200 each."""
    studies = [(f.new_uid(), f.new_uid()) for _ in range(6)]
    threads_n, rounds = 4, 3
    statuses: list[int] = []
    lock = threading.Lock()

    def writer(k: int, rnd: int, barrier: threading.Barrier) -> None:
        order = studies if k % 2 == 0 else studies[::-1]
        order = order[k // 2:] + order[:k // 2]
        parts = [f.ct(st, se, rows=8, cols=8, seed=rnd * 100 + k).data for st, se in order]
        barrier.wait()
        r = _post(app, bearer["Authorization"], parts)
        with lock:
            statuses.append(r.status_code)

    for rnd in range(rounds):
        barrier = threading.Barrier(threads_n)
        threads = [threading.Thread(target=writer, args=(k, rnd, barrier)) for k in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert statuses == [200] * threads_n * rounds
    assert _count(app, Study) == 6
    assert _count(app, Series) == 6
    assert _count(app, Instance) == 6 * threads_n * rounds


def _lock_waiters(app: Flask) -> int:
    with app.extensions["drimhub"].sessions() as s:
        return int(s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                 " AND datname = current_database()")))


def test_delete_racing_stow_keeps_the_new_instance(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    """A DELETE of a series' only instance, while a STOW inserts another one into it, spares the new one."""
    study, series = f.new_uid(), f.new_uid()
    old, new = f.ct(study, series), f.ct(study, series)
    body, ctype = f.multipart([old.data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    (tmp_path / "new.dcm").write_bytes(new.data)
    row = InstanceRow(parse_instance(tmp_path / "new.dcm"), blob_key="0" * 64, size=len(new.data), digest="0" * 64)
    inserted, release = threading.Event(), threading.Event()

    def stow() -> None:  # the STOW's indexing transaction, held open after its INSERT
        with write_session(app.extensions["drimhub"].sessions) as session:
            assert store_instances(session, [row], False, "org-a")[0].outcome is Outcome.STORED
            inserted.set()
            release.wait(30)

    writer = threading.Thread(target=stow)
    writer.start()
    assert inserted.wait(30)
    answers: list[int] = []
    deleter = threading.Thread(target=lambda: answers.append(
        client.delete(f"/dicom-web/studies/{study}/series/{series}/instances/{old.sop}").status_code))
    deleter.start()
    deadline = time.monotonic() + 30
    while _lock_waiters(app) == 0 and time.monotonic() < deadline:  # the DELETE waits on the series row
        time.sleep(0.05)
    release.set()
    writer.join(30)
    deleter.join(30)
    assert answers and answers[0] < 300, answers
    with app.extensions["drimhub"].sessions() as s:
        assert s.scalars(select(Instance.sop_uid)).all() == [new.sop]
    assert _count(app, Series) == 1 and _count(app, Study) == 1
