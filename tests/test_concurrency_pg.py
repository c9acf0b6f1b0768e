"""Concurrent writers on PostgreSQL: lock order of STOW, DELETE racing STOW.

These interleavings only exist with row locks (SQLite serialises writers on one lock), so the
tests run on PostgreSQL only.
"""

from __future__ import annotations

import threading

import pytest
from flask import Flask
from sqlalchemy import func, select

import dicomfactory as f
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
