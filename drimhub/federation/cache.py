"""Cached copies of peers' studies: stored through the ordinary ingest, owned by ``peer:NAME``.

An instance retrieved from a peer through ``/federated/dicom-web`` is stored by
:class:`~drimhub.dicomweb.stow.StoreService` (same blobs, rows, FHIR derivation as a STOW) under the
organisation ``peer:NAME``, and its study is marked ``origin = NAME`` and ``expires_at = now +``
the ``cached=DAYS`` retention policy (:func:`lifetime`; ``drimhub purge`` removes it then). No
token's organisation is ever ``peer:...``, so plain ``/dicom-web`` never shows a cached copy;
``/federated/dicom-web`` adds the cache organisations of the current peers to the caller's
:class:`Access`, for copies that have not expired (:func:`widen`).

A copy is served as a study only once it is complete (:attr:`Study.cache_complete`, set by
:meth:`Cache.complete` after a retrieval that brought every instance the peer counts). One
request at a time fills a copy: it holds the study's lease (:class:`~drimhub.store.network.CacheLease`,
:meth:`Cache.lease`); the others stream from the peer without caching. Copies of ``relay`` peers
are never made: such a peer decides per user, and a copy would hand one user what the peer allowed
another. A cached instance replaces an older cached copy of itself (the peer is the source of
truth); an instance this node holds under another organisation is never touched.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from drimhub.dicomweb.stow import StoreService, StowResult
from drimhub.federation.peers import PeerInfo
from drimhub.sharing.retention import cache_days
from drimhub.store.access import RESERVED_ORG_PREFIX, Access
from drimhub.store.blobs import FileBlobStore, SpooledBlob
from drimhub.store.engine import write_session
from drimhub.store.index import Outcome
from drimhub.store.models import Study
from drimhub.store.network import CacheLease

log = logging.getLogger(__name__)

#: Prefix of the organisation owning a peer's cached copies.
CACHE_PREFIX = RESERVED_ORG_PREFIX
#: Outcomes after which the instance is in the cache.
CACHED = frozenset({Outcome.STORED, Outcome.ALREADY_STORED})
#: Seconds a lease on filling a copy lasts unless renewed (each instance stored renews it).
LEASE_SECONDS = 60.0
#: Largest instance (bytes) taken from a peer.
MAX_INSTANCE_BYTES = 4 << 30


def cache_org(peer: str) -> str:
    """The organisation owning the cached copies of ``peer``'s studies."""
    return CACHE_PREFIX + peer


def cachable(peer: PeerInfo) -> bool:
    """True when copies of ``peer``'s studies may be kept: not a ``relay`` peer (it answers per user)."""
    return peer.auth != "relay"


def lifetime(retention: str) -> timedelta:
    """How long a new cached copy is kept: the ``cached=DAYS`` policy of ``retention`` (default 30 days)."""
    return timedelta(days=cache_days(retention))


def widen(access: Access, peers: Iterable[PeerInfo], now: datetime | None = None) -> Access:
    """``access`` plus the unexpired cached copies of ``peers``' studies (the federated root's view).

    A share link's capability (``only``) is never widened: it stands for one study of this node.
    ``relay`` peers have no copies.
    """
    if access.only is not None:
        return access
    moment = now or datetime.now(timezone.utc)
    if access.orgs is None:  # every organisation's studies: the unexpired copies too
        return dataclasses.replace(access, cached=True, copies_after=moment)
    return dataclasses.replace(access, orgs=access.orgs | {cache_org(p.name) for p in peers if cachable(p)},
                               copies_after=moment)


def origins(session: Session, study_uids: Iterable[str], peers: Sequence[PeerInfo]) -> dict[str, str]:
    """Study Instance UID → origin peer name, for those of ``study_uids`` held as an unexpired cached copy."""
    uids = sorted(set(study_uids))
    if not uids or not peers:
        return {}
    query = select(Study.study_uid, Study.origin).where(
        Study.study_uid.in_(uids), Study.org.in_(sorted(cache_org(p.name) for p in peers)),
        Study.origin.is_not(None), Study.expires_at > datetime.now(timezone.utc))
    return {uid: str(origin) for uid, origin in session.execute(query)}


def is_complete(session: Session, peer: str, study: str) -> bool:
    """True when ``peer``'s study is held here as a complete, unexpired cached copy."""
    found = session.scalar(select(Study.pk).where(
        Study.study_uid == study, Study.org == cache_org(peer), Study.origin == peer,
        Study.cache_complete.is_not(None), Study.expires_at > datetime.now(timezone.utc)))
    return found is not None


def expire_copies(session: Session, peer: str) -> int:
    """Mark every cached copy of ``peer``'s studies expired now (the peer is removed); how many.

    The purge removes them, and the federated root no longer serves them, even when another node
    is later added under the same name.
    """
    result = session.execute(update(Study).where(Study.org == cache_org(peer), Study.origin.is_not(None))
                             .values(expires_at=datetime.now(timezone.utc)))
    return int(getattr(result, "rowcount", 0) or 0)


class CappedSpool:
    """A spooled blob refusing more than ``limit`` bytes (a peer's part is written straight to disk)."""

    def __init__(self, sink: SpooledBlob, limit: int) -> None:
        self.sink = sink
        self.limit = limit

    def write(self, data: bytes | memoryview) -> None:
        if self.sink.size + len(data) > self.limit:
            raise ValueError(f"a part is larger than {self.limit} bytes")
        self.sink.write(data)

    def discard(self) -> None:
        self.sink.discard()


@dataclass(frozen=True)
class Cache:
    """Where cached copies go: the node's session factory and blob store, and their lifetime."""

    sessions: sessionmaker[Session]
    blobs: FileBlobStore
    keep: timedelta = timedelta(days=30)
    max_bytes: int = MAX_INSTANCE_BYTES

    def spool(self) -> CappedSpool:
        """A new spooled blob for one part received from a peer (at most :attr:`max_bytes`)."""
        return CappedSpool(self.blobs.spool(), self.max_bytes)

    def store(self, peer: str, sink: SpooledBlob) -> bool:
        """Store one spooled instance retrieved from ``peer`` (its bytes as received); True when cached.

        The spool is consumed (moved into the blob store or discarded).
        """
        result = StowResult()
        outcome = StoreService(self.sessions, self.blobs, overwrite=True, org=cache_org(peer)).store_one(sink, result)
        if outcome not in CACHED:
            log.warning("an instance from peer %s was not cached: %s", peer,
                        outcome.name if outcome is not None else "unreadable")
            return False
        return True

    def mark(self, peer: str, study: str) -> None:
        """Mark ``study`` as ``peer``'s cached copy, kept :attr:`keep` from now (not complete yet)."""
        expires = datetime.now(timezone.utc) + self.keep
        with write_session(self.sessions) as session:
            session.execute(update(Study).where(Study.study_uid == study, Study.org == cache_org(peer))
                            .values(origin=peer, expires_at=expires))

    def complete(self, peer: str, study: str) -> None:
        """Record that ``peer``'s study is cached whole (every instance the peer counts)."""
        with write_session(self.sessions) as session:
            session.execute(update(Study).where(Study.study_uid == study, Study.org == cache_org(peer),
                                                Study.origin == peer)
                            .values(cache_complete=datetime.now(timezone.utc)))

    @contextmanager
    def lease(self, peer: str, study: str) -> Iterator[Lease | None]:
        """The lease on filling ``peer``'s study (None: another request holds it), released on exit."""
        held = Lease(self.sessions, peer, study, uuid.uuid4().hex)
        if not held.take():
            yield None
            return
        try:
            yield held
        finally:
            held.release()


@dataclass(frozen=True)
class Lease:
    """One request's lease on filling a cached copy (a :class:`CacheLease` row it holds)."""

    sessions: sessionmaker[Session]
    origin: str
    study: str
    holder: str

    def take(self) -> bool:
        """Insert the lease row, or take over one whose time ran out; True when held."""
        now = datetime.now(timezone.utc)
        until = now + timedelta(seconds=LEASE_SECONDS)
        with write_session(self.sessions) as session:
            dialect = session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            stmt = (insert(CacheLease).values(origin=self.origin, study_uid=self.study, holder=self.holder,
                                              until=until)
                    .on_conflict_do_nothing(index_elements=["origin", "study_uid"]).returning(CacheLease.pk))
            if session.scalar(stmt) is not None:
                return True
            taken = session.execute(update(CacheLease).where(
                CacheLease.origin == self.origin, CacheLease.study_uid == self.study, CacheLease.until < now)
                .values(holder=self.holder, until=until))
            return bool(getattr(taken, "rowcount", 0))

    def renew(self) -> None:
        """Push the lease's end :data:`LEASE_SECONDS` from now."""
        with write_session(self.sessions) as session:
            session.execute(update(CacheLease).where(CacheLease.origin == self.origin,
                                                     CacheLease.study_uid == self.study,
                                                     CacheLease.holder == self.holder)
                            .values(until=datetime.now(timezone.utc) + timedelta(seconds=LEASE_SECONDS)))

    def release(self) -> None:
        """Give the lease up (when the filling ended, complete or not)."""
        try:
            with write_session(self.sessions) as session:
                session.execute(delete(CacheLease).where(CacheLease.origin == self.origin,
                                                         CacheLease.study_uid == self.study,
                                                         CacheLease.holder == self.holder))
        except Exception:
            log.exception("releasing the cache lease on study %s of peer %s failed: it expires by itself",
                          self.study, self.origin)
