"""The ``drimhub`` command line (ARCHITECTURE.md §3).

Heavy imports stay inside the commands: ``serve`` must set ``PROMETHEUS_MULTIPROC_DIR`` before
prometheus-client is first imported, so that every gunicorn worker reports into one registry.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click


@click.group()
def main() -> None:
    """drimhub: FHIR + DICOMweb sharing node."""


def _app(**overrides: Any) -> Any:
    from drimhub.server.app import create_app

    return create_app(overrides or None)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", default=None, type=int, help="Worker processes (default: 2 x cores).")
@click.option("--threads", default=4, show_default=True, type=int, help="Threads per worker.")
def serve(host: str, port: int, workers: int | None, threads: int) -> None:
    """Serve with gunicorn, after applying migrations and sweeping leftovers of a crash."""
    from drimhub.server.config import DEFAULTS

    data_dir = Path(os.environ.get("DRIMHUB_DATA_DIR", DEFAULTS["DATA_DIR"])).resolve()
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    from drimhub.server.db import Resources
    from drimhub.store.sweep import sweep

    app = _app()  # applies migrations once, before any worker starts
    res: Resources = app.extensions["drimhub"]
    temps, orphans = sweep(res.sessions, res.blobs, float(app.config["SWEEP_MIN_AGE"]))
    res.engine.dispose()
    click.echo(f"drimhub: swept {temps} temporary files and {orphans} orphan blobs", err=True)
    from drimhub.server.wsgi import run_gunicorn

    run_gunicorn(host, port, workers or 2 * (os.cpu_count() or 1), threads)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations."""
    _app().extensions["drimhub"].engine.dispose()
    click.echo("database is up to date")


@db.command("sweep")
@click.option("--min-age", default=None, type=float, help="Seconds (default: DRIMHUB_SWEEP_MIN_AGE).")
def db_sweep(min_age: float | None) -> None:
    """Remove temporary files and orphan blobs."""
    from drimhub.store.sweep import sweep

    app = _app()
    res = app.extensions["drimhub"]
    age = min_age if min_age is not None else float(app.config["SWEEP_MIN_AGE"])
    temps, orphans = sweep(res.sessions, res.blobs, age)
    click.echo(f"removed {temps} temporary files and {orphans} orphan blobs")


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def import_(paths: tuple[Path, ...]) -> None:
    """Ingest DICOM files, folders and zip archives."""
    from tqdm import tqdm

    from drimhub.dicomweb.importer import ImportSummary, collect, import_one
    from drimhub.dicomweb.stow import StoreService

    app = _app()
    res = app.extensions["drimhub"]
    service = StoreService(res.sessions, res.blobs, overwrite=app.config["STOW_DUPLICATE_POLICY"] == "overwrite")
    sources = collect(list(paths))
    summary = ImportSummary()
    for source in tqdm(sources, unit="file", desc="importing", file=sys.stderr):
        import_one(service, source, summary)
    click.echo(f"{summary.stored} stored, {summary.already} already present, {len(summary.failed)} failed")
    for name, reason in summary.failed:
        click.echo(f"  failed: {name}: {reason}")
    if summary.failed:
        sys.exit(1)
