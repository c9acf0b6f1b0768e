"""Crash and concurrency behaviour of the real server (`drimhub serve`, gunicorn workers).

- SIGKILL at random points during STOW: after a restart no row points to a missing blob, the
  sweep removed orphan blobs and temporary files, and every instance that was acknowledged in
  a ReferencedSOPSequence is still there, byte for byte.
- 8 clients storing into the same study at once, 5 rounds: exact counts and bytes, no 5xx.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

import dicomfactory as f
from drimhub.store.blobs import FileBlobStore
from drimhub.store.engine import make_engine, make_sessionmaker
from drimhub.store.models import Instance, Series, Study
from serverproc import ServerProcess

pytestmark = pytest.mark.slow


def _post(server: ServerProcess, parts: list[bytes]) -> requests.Response:
    body, ctype = f.multipart(parts)
    return requests.post(server.url + "/dicom-web/studies", data=body, headers={"Content-Type": ctype, **server.headers},
                         timeout=60)


def _referenced(r: requests.Response) -> list[str]:
    return [i["00081155"]["Value"][0] for i in r.json().get("00081199", {}).get("Value", [])]


def _rows(db_url: str) -> dict[str, tuple[str, str]]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        rows = {r.sop_uid: (r.blob_key, r.digest) for r in s.execute(select(Instance.sop_uid, Instance.blob_key, Instance.digest))}
    engine.dispose()
    return rows


def test_sigkill_during_stow_keeps_every_acknowledged_instance(fresh_db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    rng = random.Random(20261123)
    acked: dict[str, str] = {}
    sent = 0
    lock = threading.Lock()
    batches = [[f.ct(rows=256, cols=256, seed=b * 10 + i) for i in range(8)] for b in range(40)]

    def sender(server: ServerProcess, stop: threading.Event, mine: list[list[f.Instance]]) -> None:
        nonlocal sent
        for batch in mine:
            if stop.is_set():
                return
            try:
                r = _post(server, [i.data for i in batch])
            except requests.RequestException:
                return  # the server died under us: nothing was acknowledged
            assert r.status_code == 200, r.text
            with lock:
                sent += 1
                for inst in batch:
                    if inst.sop in _referenced(r):
                        acked[inst.sop] = hashlib.sha256(inst.data).hexdigest()

    for round_ in range(4):
        server = ServerProcess(data_dir, fresh_db_url).start()
        stop = threading.Event()
        mine = batches[round_ * 10:(round_ + 1) * 10]
        threads = [threading.Thread(target=sender, args=(server, stop, mine[k::2])) for k in range(2)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.4, 1.6))
        server.kill()
        stop.set()
        for t in threads:
            t.join(60)

    server = ServerProcess(data_dir, fresh_db_url).start()  # restart: migrations, then the sweep
    server.stop()
    rows = _rows(fresh_db_url)
    blobs = FileBlobStore(data_dir / "blobs")
    assert acked, "no STOW was acknowledged before the kills: the test did not exercise anything"
    for sop, digest in acked.items():
        assert sop in rows, f"acknowledged instance {sop} lost"
        assert rows[sop][1] == digest
    for sop, (key, digest) in rows.items():
        assert blobs.exists(key), f"row {sop} points to a missing blob"
        assert hashlib.sha256(blobs.path(key).read_bytes()).hexdigest() == digest
    assert {k for k, _ in blobs.keys()} == {key for key, _ in rows.values()}, "orphan blobs left"
    assert not any(blobs.tmp.iterdir()), "temporary files left"


def test_eight_clients_same_study_five_rounds(fresh_db_url: str, tmp_path: Path) -> None:
    study, own_series, shared_series = f.new_uid(), f.new_uid(), f.new_uid()
    server = ServerProcess(tmp_path / "var", fresh_db_url, workers=2).start()
    expected: dict[str, int] = {}
    try:
        for round_ in range(5):
            shared = [f.ct(study, shared_series, seed=round_ * 100 + i, instance_number=i) for i in range(3)]
            bodies = []
            for client in range(8):
                own = [f.ct(study, own_series, seed=round_ * 1000 + client * 10 + i) for i in range(3)]
                bodies.append([i.data for i in own + shared])
                expected.update({i.sop: len(i.data) for i in own + shared})
            barrier = threading.Barrier(8)
            answers: list[requests.Response] = []

            def client_run(parts: list[bytes]) -> None:
                barrier.wait()
                answers.append(_post(server, parts))

            threads = [threading.Thread(target=client_run, args=(b,)) for b in bodies]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert sorted(r.status_code for r in answers) == [200] * 8, [r.text for r in answers if r.status_code != 200]
            assert all(len(_referenced(r)) == 6 for r in answers)
    finally:
        server.stop()
    engine = make_engine(fresh_db_url)
    with make_sessionmaker(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        assert s.scalar(select(func.count()).select_from(Series)) == 2
        assert s.scalar(select(func.count()).select_from(Instance)) == len(expected) == 5 * (8 * 3 + 3)
        assert s.scalar(select(func.sum(Instance.size))) == sum(expected.values())
    engine.dispose()
    blobs = FileBlobStore(tmp_path / "var" / "blobs")
    assert sum(blobs.path(k).stat().st_size for k, _ in blobs.keys()) == sum(expected.values())
