"""The ``drimhub`` command line (ARCHITECTURE.md §3).

Heavy imports stay inside the commands: ``serve`` must set ``PROMETHEUS_MULTIPROC_DIR`` before
prometheus-client is first imported, so that every gunicorn worker reports into one registry.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

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
@click.option("--no-worker", is_flag=True, envvar="DRIMHUB_NO_WORKER",
              help="Do not start a background job worker (run `drimhub worker` elsewhere). Env: DRIMHUB_NO_WORKER=1.")
def serve(host: str, port: int, workers: int | None, threads: int, no_worker: bool) -> None:
    """Serve with gunicorn, after applying migrations and sweeping leftovers of a crash.

    Unless ``--no-worker``, one background job worker (``drimhub worker``) runs beside gunicorn,
    is started again if it dies, and stops with it.

    A non-loopback ``--host`` needs ``DRIMHUB_BASE_URL`` and a usable signing key, else the
    command exits with status 2 before binding (see :func:`exposure_problems`).
    """
    from drimhub.server.config import DEFAULTS

    problems = exposure_problems(host)
    if problems:
        _refuse(f"refusing to listen on {host}, which is not a loopback address:", problems,
                "Fix the above, or bind 127.0.0.1 (the default) behind a reverse proxy.")
    data_dir = Path(os.environ.get("DRIMHUB_DATA_DIR", DEFAULTS["DATA_DIR"])).resolve()
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    from drimhub.server.db import Resources
    from drimhub.store.sweep import sweep

    from drimhub.errors import DrimhubError

    try:
        app = _app()  # applies migrations once, before any worker starts
    except DrimhubError as exc:
        _refuse("cannot start:", [exc.message])
    res: Resources = app.extensions["drimhub"]
    temps, orphans = sweep(res.sessions, res.blobs, float(app.config["SWEEP_MIN_AGE"]))
    res.engine.dispose()
    click.echo(f"drimhub: swept {temps} temporary files and {orphans} orphan blobs", err=True)
    from drimhub.jobs import worker as job_worker
    from drimhub.server.wsgi import run_gunicorn

    background = None if no_worker else job_worker.Supervisor()  # restarted if it dies
    try:
        run_gunicorn(host, port, workers or 2 * (os.cpu_count() or 1), threads)
    finally:
        if background is not None:
            background.stop()


def _refuse(headline: str, problems: list[str], advice: str = "") -> NoReturn:
    """Print why ``serve`` does not start, and exit with status 2."""
    click.echo(f"drimhub serve: {headline}", err=True)
    for problem in problems:
        click.echo(f"  - {problem}", err=True)
    if advice:
        click.echo(advice, err=True)
    sys.exit(2)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only accepts local connections.

    ``localhost`` and the 127.0.0.0/8 and ::1 addresses are loopback; the wildcards (``0.0.0.0``,
    ``::``, empty) and any other name are not: a name may resolve to a public address.
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problems(host: str) -> list[str]:
    """Why ``drimhub serve`` must not listen on ``host``; empty when it may.

    On a loopback address nothing is required. Elsewhere the node must be able to sign tokens
    (``DRIMHUB_SIGNING_KEY``, or a key in DATA_DIR it can read or create), and
    ``DRIMHUB_BASE_URL`` must be set: otherwise the audience its tokens must carry, its issuer
    and every RetrieveURL would come from the Host header a client sends.
    """
    if is_loopback(host):
        return []
    from flask import Flask

    from drimhub.server import config
    from drimhub.server.auth import keys
    from drimhub.errors import DrimhubError

    app = Flask("drimhub")
    try:
        config.load(app, None)
    except DrimhubError as exc:
        return [exc.message]
    problems = []
    base = urlsplit(str(app.config["BASE_URL"] or ""))
    if base.scheme not in ("http", "https") or not base.netloc:
        problems.append("DRIMHUB_BASE_URL is not set to an http(s) URL (the public URL of this node, "
                        "e.g. https://pacs.example.org)")
    try:
        keys.load_signing_key(app.config["SIGNING_KEY"], Path(app.config["DATA_DIR"]))
    except DrimhubError as exc:
        problems.append(f"{exc.message} (set DRIMHUB_SIGNING_KEY, or make DRIMHUB_DATA_DIR writable)")
    return problems


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


@main.group()
def audit() -> None:
    """Audit trail maintenance."""


@audit.command("purge")
@click.option("--days", default=None, type=click.IntRange(min=0),
              help="Keep this many days (default: DRIMHUB_AUDIT_RETENTION_DAYS).")
def audit_purge(days: int | None) -> None:
    """Remove audit events older than the retention period."""
    from drimhub.store.audit import purge

    app = _app()
    keep = days if days is not None else int(app.config["AUDIT_RETENTION_DAYS"])
    removed = purge(app.extensions["drimhub"].sessions, keep)
    click.echo(f"removed {removed} audit events older than {keep} days")


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--org", default="local", show_default=True, callback=lambda _c, _p, v: _check_org(v),
              help="Organisation that owns the studies created (as the org claim of a STOW token).")
def import_(paths: tuple[Path, ...], org: str) -> None:
    """Ingest DICOM files, folders and zip archives, as organisation ``--org``.

    Like a STOW of that organisation: new studies belong to it, and an instance of a study that
    another organisation owns is refused; the push rules queue their pushes once the import ends.
    """
    from tqdm import tqdm

    from drimhub.dicomweb.importer import ImportSummary, collect, import_one
    from drimhub.dicomweb.stow import StoreService
    from drimhub.sharing import retention

    app = _app()
    res = app.extensions["drimhub"]
    service = StoreService(res.sessions, res.blobs, overwrite=app.config["STOW_DUPLICATE_POLICY"] == "overwrite",
                           org=org, node=retention.node_url(app.config))
    sources = collect(list(paths))
    summary = ImportSummary()
    archives: dict[Path, zipfile.ZipFile] = {}
    try:
        for source in tqdm(sources, unit="file", desc="importing", file=sys.stderr):
            import_one(service, source, summary, archives)
    finally:
        for archive in archives.values():
            archive.close()
    from drimhub.jobs.rules import after_store

    queued = after_store(res, summary.studies, app=app)
    click.echo(f"{summary.stored} stored, {summary.already} already present, {len(summary.failed)} failed"
               + (f", {len(queued)} push(es) queued" if queued else ""))
    for name, reason in summary.failed:
        click.echo(f"  failed: {name}: {reason}")
    if summary.failed:
        sys.exit(1)


#: Longest organisation identifier (the study's ``org`` column).
MAX_ORG = 64


def _check_org(org: str) -> str:
    """``org`` if it is an acceptable organisation identifier, else a usage error."""
    if not org or len(org) > MAX_ORG or not org.isprintable() or org != org.strip():
        raise click.BadParameter(f"an organisation is 1 to {MAX_ORG} printable characters, without surrounding spaces")
    from drimhub.store.access import check_org

    try:
        return check_org(org)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# --- OAuth2: tokens, clients, users ---------------------------------------------------------

#: Base URL assumed by `drimhub token` when DRIMHUB_BASE_URL is not set (`drimhub serve`'s default).
DEFAULT_BASE_URL = "http://127.0.0.1:8080"


@main.command()
@click.option("--scope", required=True, help='Space-separated scopes, e.g. "system/*.rs".')
@click.option("--org", default="local", show_default=True, callback=lambda _c, _p, v: _check_org(v),
              help="Organisation (claim org).")
@click.option("--sub", default=None, help="Subject (default: drimhub-cli).")
@click.option("--ttl", default=300, show_default=True, type=click.IntRange(min=1), help="Lifetime in seconds.")
@click.option("--patient", default=None, help="Patient context (claim patient) for patient/ scopes.")
def token(scope: str, org: str, sub: str | None, ttl: int, patient: str | None) -> None:
    """Print an access token signed with the node's key, alone on stdout.

    aud is DRIMHUB_BASE_URL (default http://127.0.0.1:8080), iss DRIMHUB_ISSUER or the same.
    """
    from flask import Flask

    from drimhub.server import config, urls
    from drimhub.server.auth import keys, tokens
    from drimhub.errors import DrimhubError

    app = Flask("drimhub")
    try:
        config.load(app, None)
        key = keys.load_signing_key(app.config["SIGNING_KEY"], Path(app.config["DATA_DIR"]))
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc
    base = urls.configured_base_url(app.config, DEFAULT_BASE_URL)
    claims = tokens.access_token_claims(
        issuer=urls.configured_issuer(app.config, base), audience=base, subject=sub or "drimhub-cli",
        client_id="drimhub-cli", scope=" ".join(scope.split()), org=org or "local", ttl=ttl, patient=patient)
    click.echo(tokens.sign(claims, key))


@main.group()
def client() -> None:
    """OAuth2 clients (backend services, apps, peer nodes)."""


@client.command("create")
@click.argument("name")
@click.option("--scope", required=True, help='Scopes it may be granted, e.g. "system/ImagingStudy.rs".')
@click.option("--org", default="local", show_default=True, callback=lambda _c, _p, v: _check_org(v),
              help="Organisation its tokens act for.")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Its public keys (JWKS JSON): private_key_jwt.")
@click.option("--jwks-url", help="Where its public keys are published: private_key_jwt.")
@click.option("--secret", is_flag=True, help="Give it a client secret (printed once).")
@click.option("--redirect-uri", "redirect_uris", multiple=True,
              help="Redirect URI of an app (authorization code + PKCE); repeatable. Without --jwks-*/--secret: a public app.")
def client_create(name: str, scope: str, org: str, jwks_file: Path | None, jwks_url: str | None, secret: bool,
                  redirect_uris: tuple[str, ...]) -> None:
    """Register an OAuth2 client; prints it as JSON (with client_secret once, for --secret)."""
    import json

    from drimhub.server.auth.clients import create_client
    from drimhub.errors import DrimhubError
    from drimhub.store.engine import write_session

    try:
        jwks = json.loads(jwks_file.read_text()) if jwks_file else None
    except ValueError as exc:
        raise click.ClickException(f"{jwks_file}: not JSON: {exc}") from exc
    res = _app().extensions["drimhub"]
    try:
        with write_session(res.sessions) as session:
            row, clear = create_client(session, name, scope, org=org, jwks=jwks, jwks_url=jwks_url, secret=secret,
                                       redirect_uris=redirect_uris)
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        res.engine.dispose()
    out = {"client_id": row.client_id, "name": row.name, "org": row.org, "scope": row.scope,
           "token_endpoint_auth_method": row.auth_method, "grant_types": row.grant_types.split(),
           "redirect_uris": row.redirect_uris.split()}
    if clear:
        out["client_secret"] = clear
    click.echo(json.dumps(out, indent=2))


@main.group()
def user() -> None:
    """Professionals who log in at /oauth/authorize."""


@user.command("add")
@click.argument("username")
@click.option("--scope", required=True, help='Scopes the user may be granted, e.g. "user/*.rs".')
@click.option("--org", default="local", show_default=True, callback=lambda _c, _p, v: _check_org(v),
              help="Organisation the user acts for.")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def user_add(username: str, scope: str, org: str, display_name: str, password_stdin: bool) -> None:
    """Add a user; the password is prompted for (twice) unless --password-stdin."""
    from drimhub.server.auth.users import add_user
    from drimhub.errors import DrimhubError
    from drimhub.store.engine import write_session

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    res = _app().extensions["drimhub"]
    try:
        with write_session(res.sessions) as session:
            add_user(session, username, password, scope=scope, org=org, display_name=display_name)
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        res.engine.dispose()
    click.echo(f"user {username} added (org {org})")


def _add_package_commands() -> None:
    """The commands of the sharing node's packages (``peer``, ``worker``, ``purge``...)."""
    from drimhub.federation.cli import COMMANDS as federation
    from drimhub.jobs.cli import COMMANDS as jobs
    from drimhub.sharing.cli import COMMANDS as sharing

    for command in (*federation, *jobs, *sharing):
        main.add_command(command)


_add_package_commands()
