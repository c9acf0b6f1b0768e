"""Engine and session factory for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=NORMAL`` (durable across an application crash; WAL
keeps the database consistent across a power loss) and a busy timeout, so several gunicorn
workers can share one file. Write transactions start with ``BEGIN IMMEDIATE`` (see
:func:`write_session`) so that two writers queue on the lock instead of failing when one of
them upgrades a read lock. Writers of every process first take an ``flock`` on a file beside
the database: a waiting writer wakes the moment the lock is free, where SQLite's own busy
handler sleeps up to 100 ms between tries.
"""

from __future__ import annotations

import fcntl
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Execution option that makes a SQLite transaction begin with BEGIN IMMEDIATE.
_IMMEDIATE = "drimhub_immediate"
#: Attempts of one write transaction that meets a deadlock or a serialisation failure.
ATTEMPTS = 3
#: SQLSTATEs of a transaction PostgreSQL rolled back that may simply be run again:
#: serialization_failure and deadlock_detected (PostgreSQL Appendix A, class 40).
_RETRY_SQLSTATES = {"40001", "40P01"}


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine for ``url``; SQLite gets its pragmas and its folder."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Session factory used by the app, the CLI and the tests."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for one short write transaction, committed on success.

    On SQLite the transaction takes the write lock at once (BEGIN IMMEDIATE).
    """
    with factory() as session, _writer_lock(session):
        session.connection(execution_options={_IMMEDIATE: True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def _writer_lock(session: Session) -> Iterator[None]:
    """Hold the SQLite writer lock file, if the engine has one."""
    url = session.get_bind().engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield
        return
    with open(f"{url.database}.writelock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_transient(exc: OperationalError) -> bool:
    """True when ``exc`` is a deadlock, a serialisation failure, or a locked SQLite database."""
    if getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


def with_retries(factory: sessionmaker[Session], work: Callable[[Session], T], what: str) -> T:
    """``work(session)`` in one :func:`write_session`, run again (up to :data:`ATTEMPTS` times in
    all) when the transaction meets a transient conflict (:func:`is_transient`). ``work`` must
    start from scratch each time: everything it did in a failed attempt was rolled back."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with write_session(factory) as session:
                return work(session)
        except OperationalError as exc:
            if attempt == ATTEMPTS or not is_transient(exc):
                raise
            log.warning("%s: %s, retrying (attempt %d)", what, type(exc.orig).__name__, attempt + 1)
            time.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")
