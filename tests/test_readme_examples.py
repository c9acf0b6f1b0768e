"""The README's runnable examples, run as written, so that the README cannot rot.

"How a RIS vendor obtains a token" and the FHIR paths of a RIS and a referring physician: the blocks marked ``<!-- readme-test: NAME -->`` are taken
from README.md verbatim: the key generation (Python), the registration (the ``drimhub`` command,
run with click's runner against the test node's database), and the token request, STOW and QIDO
(Python, over HTTP against the live server).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
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


def run_bash(block: str, cwd: Path, env: dict[str, str]) -> None:
    """Run a README shell block with bash, stopping at the first failing command."""
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_fhir_ris_then_physician_examples(app: Flask, live_server: str, mint: Any, tmp_path: Path) -> None:
    """The RIS posts its report for a study already stored; the physician then finds study, report and PDF."""
    study = re.search(r"^STUDY=(\S+)", readme_block("fhir-ris"), re.M)
    assert study
    ins = "2800275012345"
    ct = f.ct(study.group(1), PatientID=ins, IssuerOfPatientID="1.2.250.1.213.1.4.10")
    body, content_type = f.multipart([ct.data])
    token = mint("system/*.cruds")
    stored = requests.post(f"{live_server}/dicom-web/studies", data=body, timeout=30,
                           headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"})
    assert stored.status_code == 200, stored.text
    pdf = b"%PDF-1.4\n%drimhub readme\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    (tmp_path / "report.pdf").write_bytes(pdf)
    env = {"DRIMHUB_URL": live_server, "TOKEN": token}

    run_bash(readme_block("fhir-ris"), tmp_path, env)
    answer = orjson.loads((tmp_path / "answer.json").read_bytes())
    assert [e["response"]["status"] for e in answer["entry"]] == ["200 OK", "201 Created"]  # the STOW's Patient
    run_bash(readme_block("fhir-ris"), tmp_path, env)  # sent again: the same report, updated
    again = orjson.loads((tmp_path / "answer.json").read_bytes())
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK", "200 OK"]
    assert again["entry"][1]["response"]["location"].startswith(
        answer["entry"][1]["response"]["location"].rsplit("/_history", 1)[0])

    (tmp_path / "report.pdf").unlink()
    run_bash(readme_block("fhir-physician"), tmp_path, env)
    patients = orjson.loads((tmp_path / "patient.json").read_bytes())
    assert [e["resource"]["id"] for e in patients["entry"]] == [answer["entry"][0]["response"]["location"].split("/")[1]]
    studies = orjson.loads((tmp_path / "studies.json").read_bytes())
    kinds = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in studies["entry"]]
    assert kinds == [("ImagingStudy", "match"), ("DiagnosticReport", "include")]
    assert (tmp_path / "report.pdf").read_bytes() == pdf


def test_two_nodes_in_five_minutes(tmp_path: Path) -> None:
    """The "two nodes in five minutes" walk-through, run as written with bash (ports made free)."""
    from serverproc import DRIMHUB, free_port

    block = readme_block("two-nodes")
    block = block.replace("8081", str(free_port())).replace("8082", str(free_port()))
    block = block.replace(".venv/bin/drimhub", DRIMHUB)
    (tmp_path / "ct").mkdir()
    study = f.new_uid()
    series = f.new_uid()
    for number in range(3):
        (tmp_path / "ct" / f"{number}.dcm").write_bytes(f.ct(study, series, PatientID="PAT001").data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMHUB_")}
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err + (tmp_path / "vannes.log").read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            proc.wait(30)
    found = orjson.loads((tmp_path / "found.json").read_bytes())
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    assert found[0]["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study}")
    prior = (tmp_path / "prior.multipart").read_bytes()
    assert prior.count(b"DICM") == 3
    share = orjson.loads((tmp_path / "share.json").read_bytes())
    assert share["study"] == study and share["permissions"] == ["read"] and share["token"]
    metadata = orjson.loads((tmp_path / "metadata.json").read_bytes())
    assert len(metadata) == 3 and {m["0020000D"]["Value"][0] for m in metadata} == {study}
