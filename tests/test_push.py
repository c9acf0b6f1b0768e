"""A pushes a study to C through a restart of its worker (issue 5): real nodes (`drimhub serve`), a real
`drimhub worker` process killed with SIGKILL, exact instance counts at the peer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import dicomfactory as f
from nodes import Node
from serverproc import DRIMHUB, kill_group, stop_group

N = 7
SCOPE = "system/ImagingStudy.crs"


class Worker:
    """`drimhub worker` of a node, in its own process group."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.node.dir / "worker.log", "ab") as log:
            self.proc = subprocess.Popen([DRIMHUB, "worker"], env=self.node.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def kill(self) -> None:
        kill_group(self.proc)

    def stop(self) -> None:
        stop_group(self.proc, 15)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node, Worker]]:
    a = Node("node-a", tmp_path, DRIMHUB_NO_WORKER="1", DRIMHUB_JOBS_RETRY_BASE="0.5", DRIMHUB_JOBS_RETRY_CAP="1",
             DRIMHUB_JOBS_MAX_ATTEMPTS="1000")
    c = Node("node-c", tmp_path)
    worker = Worker(a)
    try:
        yield a, c, worker
    finally:
        worker.stop()
        a.stop()
        c.stop()


def wait_for(a: Node, job_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = requests.get(f"{a.url}/api/jobs/{job_id}", headers=a.headers("drimhub/push"),
                                           timeout=10).json()
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def push(a: Node, study: str) -> dict[str, Any]:
    answer = requests.post(f"{a.url}/api/peers/c/push", json={"study": study}, headers=a.headers("drimhub/push"),
                           timeout=10)
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def held_by_c(c: Node, study: str) -> tuple[int, list[str]]:
    """What C holds of the study: QIDO NumberOfStudyRelatedInstances, and the instances' SOP UIDs."""
    headers = c.headers("system/ImagingStudy.rs", org="node-a")
    studies = requests.get(f"{c.url}/dicom-web/studies", params={"StudyInstanceUID": study,
                                                                  "includefield": "00201208"},
                           headers=headers, timeout=10).json()
    assert len(studies) == 1
    found = requests.get(f"{c.url}/dicom-web/studies/{study}/instances", headers=headers, timeout=10).json()
    return studies[0]["00201208"]["Value"][0], [i["00080018"]["Value"][0] for i in found]


def test_a_push_survives_a_killed_worker_and_a_peer_down(nodes: tuple[Node, Node, Worker]) -> None:
    a, c, worker = nodes
    a.start()
    registered = json.loads(c.cli("client", "create", "node-a", "--jwks-url", a.url + "/oauth/jwks", "--scope", SCOPE,
                                  "--org", "node-a").stdout)
    a.cli("peer", "add", "c", "--url", c.url, "--client-id", registered["client_id"], "--scope", SCOPE,
          "--allow-private")
    study, series = f.new_uid(), f.new_uid()
    instances = [f.ct(study, series, instance_number=i + 1) for i in range(N)]
    body, content_type = f.multipart([i.data for i in instances])
    stored = requests.post(f"{a.url}/dicom-web/studies", data=body, timeout=30,
                           headers={**a.headers(), "Content-Type": content_type})
    assert stored.status_code == 200, stored.text

    worker.start()
    job = push(a, study)  # C is down
    job = wait_for(a, job["id"], {"retrying", "failed"})
    assert job["state"] == "retrying" and job["error"], job
    worker.kill()
    worker.start()
    c.start()
    job = wait_for(a, job["id"], {"succeeded", "failed"})
    assert (job["state"], job["done"], job["total"], job["error"]) == ("succeeded", N, N, None), job
    assert job["attempts"] >= 2
    count, sops = held_by_c(c, study)
    assert count == N and sorted(sops) == sorted(i.sop for i in instances)  # none lost, none duplicated

    again = wait_for(a, push(a, study)["id"], {"succeeded", "failed"})
    assert again["state"] == "succeeded", again
    count, sops = held_by_c(c, study)
    assert count == N and sorted(sops) == sorted(i.sop for i in instances)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append((int(entry.name), command))
    return found


def test_serve_runs_a_worker_and_stops_it(tmp_path: Path) -> None:
    node = Node("solo", tmp_path).start()
    try:
        assert node.server.proc is not None
        serve = node.server.proc.pid
        workers = [pid for pid, command in _children(serve) if "drimhub.jobs.worker" in command]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)  # the worker dies: serve starts another
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            again = [pid for pid, command in _children(serve) if "drimhub.jobs.worker" in command and pid != workers[0]]
            if again:
                break
            time.sleep(0.2)
        assert len(again) == 1
        workers = again
        os.kill(serve, signal.SIGTERM)  # the master alone, as a service manager would
        node.server.proc.wait(30)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{workers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{workers[0]}").exists()
    finally:
        node.kill()
