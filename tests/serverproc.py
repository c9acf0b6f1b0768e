"""Run `drimhub serve` (the real gunicorn server) as a child process for black-box tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from joserfc.jwk import RSAKey

from drimhub.server.auth import tokens

_KEY: RSAKey | None = None


def _signing_key() -> RSAKey:
    """One signing key for every server process of the session (generating one is slow)."""
    global _KEY
    if _KEY is None:
        _KEY = RSAKey.generate_key(2048, private=True)
        _KEY.ensure_kid()
    return _KEY

DRIMHUB = str(Path(sys.executable).with_name("drimhub"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the process group of ``proc`` (started with ``start_new_session``), as a crash would."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it after ``timeout`` seconds."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)


class ServerProcess:
    """`drimhub serve` on a free loopback port, in its own process group.

    ``headers`` carry an all-powerful bearer token for organisation ``org-a``, signed with the
    key the process is given.
    """

    def __init__(self, data_dir: Path, db_url: str, workers: int = 2, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"serve-{self.port}.log"
        key = _signing_key()
        self.env = {**os.environ, "DRIMHUB_DATA_DIR": str(data_dir), "DRIMHUB_DATABASE_URL": db_url,
                    "DRIMHUB_SWEEP_MIN_AGE": "0", "DRIMHUB_BASE_URL": self.url,
                    "DRIMHUB_SIGNING_KEY": key.as_pem(private=True).decode(), **env}
        claims = tokens.access_token_claims(issuer=self.url, audience=self.url, subject="tester", client_id="test",
                                            scope="system/*.cruds", org="org-a", ttl=3600)
        self.headers = {"Authorization": f"Bearer {tokens.sign(claims, key)}"}
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [DRIMHUB, "serve", "--port", str(self.port), "--workers", str(self.workers)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"drimhub serve exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("drimhub serve did not become ready")

    def kill(self) -> None:
        """SIGKILL the whole process group (master and workers), as a crash would."""
        kill_group(self.proc)

    def stop(self) -> None:
        stop_group(self.proc)
