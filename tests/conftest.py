"""Fixtures: an app per test on a real database (SQLite and PostgreSQL), real DICOM data.

PostgreSQL: ``DRIMHUB_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``)
names a server where a throw-away database is created for the session and dropped after. When
that server cannot be reached the PostgreSQL cases are skipped, unless ``CI`` or
``DRIMHUB_TEST_REQUIRE_POSTGRES`` is set: then they fail.

Every route needs a bearer token: the ``client`` fixture sends an all-powerful one
(:data:`DEFAULT_SCOPE` for organisation :data:`DEFAULT_ORG`), ``mint`` makes others, and
``anon`` is a client without any.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc.jwk import RSAKey
from sqlalchemy import text
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from drimhub.server.app import create_app
from drimhub.server.auth import tokens
from drimhub.server.db import Resources
from drimhub.store import audit, migrate, network, security  # noqa: F401  (their tables join Base.metadata)
from drimhub.store.engine import make_engine
from drimhub.store.models import Base

PG_ADMIN_URL = os.environ.get("DRIMHUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = bool(os.environ.get("CI") or os.environ.get("DRIMHUB_TEST_REQUIRE_POSTGRES"))
BACKENDS = ["sqlite", "postgresql"]
#: The test node's public URL: the issuer and audience of its tokens (the test client's own host).
BASE_URL = "http://localhost"
DEFAULT_SCOPE = "system/*.cruds"
DEFAULT_ORG = "org-a"


def _pg_conninfo(url: str) -> str:
    u = make_url(url)
    return f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username or 'postgres'} dbname={u.database or 'postgres'}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a throw-away PostgreSQL database for this test session."""
    name = f"drimhub_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (CI) but unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own for tests that run server processes."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'drimhub.db'}"
        return
    session_url = make_url(request.getfixturevalue("postgres_url"))
    name = f"{session_url.database}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield session_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per session; each test starts from a copy of it."""
    path = tmp_path_factory.mktemp("template") / "drimhub.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()  # the last connection closing checkpoints the WAL into the file
    return path


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for one test: a fresh (migrated) SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / "drimhub.db")
        return f"sqlite:///{tmp_path / 'drimhub.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _truncate(res: Resources) -> None:
    """Empty every table of the shared PostgreSQL test database (SQLite files are per test)."""
    with res.engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # DELETE: much faster than TRUNCATE on tables this small
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())


@pytest.fixture(scope="session")
def signing_key_pem() -> str:
    """One node signing key for the whole session (generating one per test is slow)."""
    return RSAKey.generate_key(2048, private=True).as_pem(private=True).decode()


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Extra settings of the ``app`` fixture; a test module overrides this fixture to change them."""
    return {}


@pytest.fixture
def app(db_url: str, tmp_path: Path, signing_key_pem: str, app_config: dict[str, Any]) -> Iterator[Flask]:
    application = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "var"), "DATABASE_URL": db_url,
                              "STORAGE_URL": f"file://{tmp_path / 'blobs'}", "SIGNING_KEY": signing_key_pem,
                              "BASE_URL": BASE_URL, **app_config})
    res: Resources = application.extensions["drimhub"]
    _truncate(res)  # before, not after: the next test empties it anyway, the last one's is dropped
    yield application
    res.engine.dispose()


Mint = Callable[..., str]


@pytest.fixture
def mint(app: Flask) -> Mint:
    """``mint(scope=..., org=..., **claims)``: an access token signed by the test node's key.

    Keyword arguments other than ``scope``, ``org``, ``ttl``, ``patient`` and ``audience`` become
    extra claims (they replace the standard ones of the same name).
    """
    def make(scope: str = DEFAULT_SCOPE, org: str = DEFAULT_ORG, *, ttl: int = 3600, patient: str | None = None,
             audience: str = BASE_URL, **extra: Any) -> str:
        claims = tokens.access_token_claims(issuer=BASE_URL, audience=audience, subject="tester",
                                            client_id="test-client", scope=scope, org=org, ttl=ttl,
                                            patient=patient, extra=extra)
        return tokens.sign(claims, app.extensions["drimhub"].signing_key)
    return make


@pytest.fixture
def bearer(mint: Mint) -> dict[str, str]:
    """The ``Authorization`` header of the default all-powerful token."""
    return {"Authorization": f"Bearer {mint()}"}


@pytest.fixture
def client(app: Flask, bearer: dict[str, str]) -> FlaskClient:
    """A test client that sends the default all-powerful token with every request."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = bearer["Authorization"]
    return test_client


@pytest.fixture
def anon(app: Flask) -> FlaskClient:
    """A test client without a token."""
    return app.test_client()


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The app served by werkzeug on 127.0.0.1 in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
