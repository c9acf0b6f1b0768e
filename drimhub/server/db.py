"""Per-app engine, session factory and blob store; one session per request.

``init_app`` builds them from the config and keeps them in ``app.extensions["drimhub"]``; nothing
connects at import time. Services take a ``Session`` (or the factory, for short write
transactions) and the blob store as arguments, so the CLI and the tests call them without Flask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flask import Flask, current_app, g
from joserfc.jwk import RSAKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from drimhub.server.auth.keys import load_signing_key

from drimhub.store import migrate
from drimhub.store.blobs import FileBlobStore
from drimhub.store.engine import make_engine, make_sessionmaker


@dataclass
class Resources:
    """What one app instance owns."""

    engine: Engine
    sessions: sessionmaker[Session]
    blobs: FileBlobStore
    #: The node's private signing key (tokens it issues, assertions it sends to peers).
    signing_key: RSAKey


def init_app(app: Flask) -> None:
    engine = make_engine(app.config["DATABASE_URL"])
    if app.config["AUTO_MIGRATE"]:
        migrate.upgrade(engine)
    key = load_signing_key(app.config["SIGNING_KEY"], Path(app.config["DATA_DIR"]))
    app.extensions["drimhub"] = Resources(engine, make_sessionmaker(engine),
                                          FileBlobStore.from_url(app.config["STORAGE_URL"]), key)
    app.teardown_appcontext(_close_session)


def resources() -> Resources:
    res: Resources = current_app.extensions["drimhub"]
    return res


def get_session() -> Session:
    """The request's read session (created on first use, closed at teardown)."""
    if "db_session" not in g:
        g.db_session = resources().sessions()
    session: Session = g.db_session
    return session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.rollback()
        session.close()
