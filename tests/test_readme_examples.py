"""The README's runnable examples, run as written, so that the README cannot rot.

"How a RIS vendor obtains a token": the blocks marked ``<!-- readme-test: NAME -->`` are taken
from README.md verbatim: the key generation (Python), the registration (the ``drimhub`` command,
run with click's runner against the test node's database), and the token request, STOW and QIDO
(Python, over HTTP against the live server).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

import dicomfactory as f
from drimhub.server.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(name: str) -> str:
    """The fenced code block that follows ``<!-- readme-test: name -->`` in the README."""
    match = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```[a-z]*\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no block marked readme-test: {name}"
    return match.group(1)


def run_python(block: str) -> tuple[dict[str, Any], str]:
    """Execute a README Python block; its globals and what it printed."""
    scope: dict[str, Any] = {"__name__": "__readme__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), scope)  # noqa: S102 (our own README)
    return scope, out.getvalue()


def run_drimhub(block: str, env: dict[str, str]) -> None:
    """Run a README ``drimhub ... > FILE`` command line with click's runner."""
    command, _, target = block.strip().partition(" > ")
    args = shlex.split(command)
    assert args[0] == "drimhub"
    result = CliRunner().invoke(main, args[1:], env=env)
    assert result.exit_code == 0, result.output
    Path(target.strip()).write_text(result.stdout)


def test_ris_backend_services_example(app: Flask, live_server: str, signing_key_pem: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    app.config["BASE_URL"] = live_server  # the node's public URL is the live server's
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRIMHUB_URL", live_server)
    instance = f.ct()
    (tmp_path / "image.dcm").write_bytes(instance.data)

    run_python(readme_block("ris-keygen"))
    assert {"ris.private.pem", "ris.jwks.json"} <= {p.name for p in tmp_path.iterdir()}
    run_drimhub(readme_block("ris-register"), {
        "DRIMHUB_DATA_DIR": app.config["DATA_DIR"], "DRIMHUB_DATABASE_URL": app.config["DATABASE_URL"],
        "DRIMHUB_STORAGE_URL": app.config["STORAGE_URL"], "DRIMHUB_SIGNING_KEY": signing_key_pem})
    scope, printed = run_python(readme_block("ris-token"))

    assert scope["stored"].status_code == 200, scope["stored"].text
    assert printed.splitlines() == ["200", str([instance.study])]
    assert _owner(app, instance.study) == "chu-a"  # the client's organisation


def _owner(app: Flask, study: str) -> str | None:
    from sqlalchemy import select

    from drimhub.store.models import Study

    with app.extensions["drimhub"].sessions() as session:
        return session.scalar(select(Study.org).where(Study.study_uid == study))
