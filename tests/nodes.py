"""Several drimhub nodes on loopback for the sharing-node tests: each a real `drimhub serve`, with its
own database, data folder and signing key, and tokens signed by that key."""

from __future__ import annotations

import subprocess
from pathlib import Path

from joserfc.jwk import RSAKey

from drimhub.server.auth import tokens
from serverproc import DRIMHUB, ServerProcess


class Node:
    """One node: ``drimhub serve`` on SQLite under ``root/name`` (not started until :meth:`start`)."""

    def __init__(self, name: str, root: Path, workers: int = 1, **env: str) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = RSAKey.generate_key(2048, private=True)
        self.key.ensure_kid()
        self.server = ServerProcess(self.dir / "var", f"sqlite:///{self.dir / 'drimhub.db'}", workers=workers,
                                    DRIMHUB_SIGNING_KEY=self.key.as_pem(private=True).decode(), **env)
        self.url = self.server.url
        self.env = self.server.env

    def start(self) -> Node:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def kill(self) -> None:
        self.server.kill()

    def token(self, scope: str = "system/*.cruds", org: str = "org-a", sub: str = "tester", ttl: int = 3600,
              **extra: object) -> str:
        """An access token of this node (signed with its key)."""
        claims = tokens.access_token_claims(issuer=self.url, audience=self.url, subject=sub, client_id="test",
                                            scope=scope, org=org, ttl=ttl, extra=dict(extra) or None)
        return tokens.sign(claims, self.key)

    def headers(self, scope: str = "system/*.cruds", org: str = "org-a", **kwargs: object) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, org, **kwargs)}"}

    def cli(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``drimhub ARGS`` with this node's environment (its database, key and base URL)."""
        return subprocess.run([DRIMHUB, *args], env=self.env, input=stdin, capture_output=True, text=True,
                              check=check, timeout=120)
