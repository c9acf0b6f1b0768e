"""The `drimhub` command line: import (files, folders, zip archives), db commands, serve's start-up checks."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

import dicomfactory as f
from drimhub.server.cli import is_loopback, main
from drimhub.store.engine import make_engine, make_sessionmaker
from drimhub.store.models import Instance, Study


@pytest.fixture
def env(fresh_db_url: str, tmp_path: Path) -> dict[str, str]:
    return {"DRIMHUB_DATA_DIR": str(tmp_path / "var"), "DRIMHUB_DATABASE_URL": fresh_db_url}


def count(db_url: str) -> int:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        n = s.scalar(select(func.count()).select_from(Instance))
    engine.dispose()
    return int(n or 0)


def test_import_files_folders_and_zip(env: dict[str, str], fresh_db_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    study = f.new_uid()
    (src / "a.dcm").write_bytes(f.ct(study).data)
    (src / "sub" / "b.dcm").write_bytes(f.pdf(study).data)
    (src / "notes.txt").write_text("not dicom")
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.writestr("x/c1.dcm", f.ct(study).data)
        zf.writestr("x/c2.dcm", f.sr(study).data)
    runner = CliRunner()
    r = runner.invoke(main, ["import", str(src), str(tmp_path / "c.zip")], env=env)
    assert r.exit_code == 1, r.output  # one file failed
    assert "4 stored, 0 already present, 1 failed" in r.output
    assert "notes.txt: cannot understand (0xC000)" in r.output
    assert count(fresh_db_url) == 4
    again = runner.invoke(main, ["import", str(tmp_path / "c.zip")], env=env)
    assert again.exit_code == 0, again.output
    assert "0 stored, 2 already present, 0 failed" in again.output
    assert count(fresh_db_url) == 4


def test_db_upgrade_and_sweep(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    orphan_dir = tmp_path / "var" / "blobs" / "objects" / "ab" / "cd"
    orphan_dir.mkdir(parents=True)
    (orphan_dir / ("abcd" + "0" * 28)).write_bytes(b"orphan")
    (tmp_path / "var" / "blobs" / "tmp" / "x.part").write_bytes(b"partial")
    r = runner.invoke(main, ["db", "sweep", "--min-age", "0"], env=env)
    assert r.exit_code == 0, r.output
    assert "removed 1 temporary files and 1 orphan blobs" in r.output


def test_import_goes_on_past_a_corrupt_zip_member(env: dict[str, str], fresh_db_url: str, tmp_path: Path) -> None:
    study = f.new_uid()
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", f.ct(study, seed=1).data)
        zf.writestr("b.dcm", f.ct(study, seed=2).data)
        zf.writestr("c.dcm", f.ct(study, seed=3).data)
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("b.dcm")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    raw[middle] ^= 0xFF  # corrupt b.dcm's compressed data
    archive.write_bytes(bytes(raw))
    r = CliRunner().invoke(main, ["import", str(archive)], env=env)
    assert r.exit_code == 1, r.output
    assert "2 stored, 0 already present, 1 failed" in r.output
    assert "d.zip:b.dcm: cannot read" in r.output
    assert not any((tmp_path / "var" / "blobs" / "tmp").iterdir())


def _study_orgs(db_url: str) -> dict[str, str]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        orgs = {uid: org for uid, org in s.execute(select(Study.study_uid, Study.org))}
    engine.dispose()
    return orgs


def test_import_as_an_organisation(env: dict[str, str], fresh_db_url: str, tmp_path: Path) -> None:
    study, other = f.new_uid(), f.new_uid()
    (tmp_path / "a.dcm").write_bytes(f.ct(study).data)
    (tmp_path / "b.dcm").write_bytes(f.ct(other).data)
    (tmp_path / "a2.dcm").write_bytes(f.ct(study).data)
    runner = CliRunner()
    assert runner.invoke(main, ["import", "--org", "chu-a", str(tmp_path / "a.dcm")], env=env).exit_code == 0
    assert runner.invoke(main, ["import", str(tmp_path / "b.dcm")], env=env).exit_code == 0
    assert _study_orgs(fresh_db_url) == {study: "chu-a", other: "local"}
    r = runner.invoke(main, ["import", "--org", "chu-b", str(tmp_path / "a2.dcm")], env=env)
    assert r.exit_code == 1 and "0 stored, 0 already present, 1 failed" in r.output  # chu-a's study
    bad = runner.invoke(main, ["import", "--org", "", str(tmp_path / "a2.dcm")], env=env)
    assert bad.exit_code == 2 and "organisation" in bad.output


# --- serve: refusal to expose a misconfigured node ------------------------------------------

@pytest.fixture
def serve_env(tmp_path: Path, signing_key_pem: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """A serve environment on SQLite, with gunicorn replaced by a recorder (nothing is bound)."""
    from drimhub.server import wsgi

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))  # serve sets it; restored after
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(wsgi, "run_gunicorn", lambda host, port, *_: calls.append((host, port)))
    return {"DRIMHUB_DATA_DIR": str(tmp_path / "var"), "DRIMHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}",
            "DRIMHUB_SIGNING_KEY": signing_key_pem, "DRIMHUB_BASE_URL": None, "_calls": calls}  # type: ignore[dict-item]


def _serve(serve_env: dict[str, Any], *args: str) -> Any:
    env = {k: v for k, v in serve_env.items() if not k.startswith("_")}
    return CliRunner().invoke(main, ["serve", *args], env=env)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "pacs.example.org"])
def test_serve_refuses_a_public_bind_without_base_url(serve_env: dict[str, Any], host: str) -> None:
    r = _serve(serve_env, "--host", host)
    assert r.exit_code == 2, r.output
    assert "not a loopback address" in r.output and "DRIMHUB_BASE_URL is not set" in r.output
    assert serve_env["_calls"] == []


def test_serve_refuses_a_public_bind_without_a_signing_key(serve_env: dict[str, Any], tmp_path: Path) -> None:
    serve_env.update(DRIMHUB_BASE_URL="https://pacs.example.org", DRIMHUB_SIGNING_KEY=str(tmp_path / "missing.pem"))
    r = _serve(serve_env, "--host", "0.0.0.0")
    assert r.exit_code == 2, r.output
    assert "no signing key" in r.output and "DRIMHUB_BASE_URL" not in r.output
    assert serve_env["_calls"] == []


def test_serve_on_loopback_needs_no_base_url(serve_env: dict[str, Any]) -> None:
    r = _serve(serve_env, "--host", "127.0.0.1", "--port", "8181")
    assert r.exit_code == 0, r.output
    assert serve_env["_calls"] == [("127.0.0.1", 8181)]


def test_serve_on_a_public_address_when_configured(serve_env: dict[str, Any]) -> None:
    serve_env["DRIMHUB_BASE_URL"] = "https://pacs.example.org"
    r = _serve(serve_env, "--host", "0.0.0.0")
    assert r.exit_code == 0, r.output
    assert serve_env["_calls"] == [("0.0.0.0", 8080)]


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("", False), ("192.168.1.2", False), ("example.org", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_access_log_carries_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from drimhub.server.wsgi import ACCESS_LOG_FORMAT

    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", ACCESS_LOG_FORMAT)
    resp = SimpleNamespace(status="200 OK", sent=12, headers=[("X-Request-Id", "rid-42"), ("Content-Length", "12")])
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/healthz", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.9"}
    Logger(cfg).access(resp, [], environ, timedelta(milliseconds=7))
    line = capsys.readouterr().out.strip()
    assert line.startswith("10.0.0.9 - - [") and '"GET /healthz HTTP/1.1" 200 12' in line
    assert line.endswith(" 7ms rid-42")
