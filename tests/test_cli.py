"""The `drimhub` command line: import (files, folders, zip archives) and db commands."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

import dicomfactory as f
from drimhub.server.cli import main
from drimhub.store.engine import make_engine, make_sessionmaker
from drimhub.store.models import Instance


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
