"""Cached copies of peers' studies: stored through the ordinary ingest, owned by ``peer:NAME``.

An instance retrieved from a peer through ``/federated/dicom-web`` is stored by
:class:`~drimhub.dicomweb.stow.StoreService` (same blobs, rows, FHIR derivation as a STOW) under the
organisation ``peer:NAME``, and its study is marked ``origin = NAME`` and
``expires_at = now + CACHE_DAYS`` (``drimhub purge`` removes it then). No token's organisation
is ever ``peer:...``, so plain ``/dicom-web`` never shows a cached copy; ``/federated/dicom-web``
adds the cache organisations of the current peers to the caller's :class:`Access`
(:func:`widen`). A cached instance replaces an older cached copy of itself (the peer is the
source of truth); an instance this node holds under another organisation is never touched.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from drimhub.dicomweb.stow import StoreService, StowResult
from drimhub.federation.peers import PeerInfo
from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore
from drimhub.store.engine import write_session
from drimhub.store.index import Outcome
from drimhub.store.models import Study

log = logging.getLogger(__name__)

#: Prefix of the organisation owning a peer's cached copies.
CACHE_PREFIX = "peer:"
#: Outcomes after which the instance is in the cache.
CACHED = frozenset({Outcome.STORED, Outcome.ALREADY_STORED})


def cache_org(peer: str) -> str:
    """The organisation owning the cached copies of ``peer``'s studies."""
    return CACHE_PREFIX + peer


def widen(access: Access, peers: Iterable[PeerInfo]) -> Access:
    """``access`` plus the cached copies of ``peers``' studies (the federated root's view).

    A share link's capability (``only``) is never widened: it stands for one study of this node.
    """
    if access.orgs is None or access.only is not None:
        return access
    return dataclasses.replace(access, orgs=access.orgs | {cache_org(p.name) for p in peers})


def origins(session: Session, study_uids: Iterable[str], peers: Sequence[PeerInfo]) -> dict[str, str]:
    """Study Instance UID → origin peer name, for those of ``study_uids`` held as a cached copy."""
    uids = sorted(set(study_uids))
    if not uids or not peers:
        return {}
    query = select(Study.study_uid, Study.origin).where(
        Study.study_uid.in_(uids), Study.org.in_(sorted(cache_org(p.name) for p in peers)),
        Study.origin.is_not(None))
    return {uid: str(origin) for uid, origin in session.execute(query)}


@dataclass(frozen=True)
class Cache:
    """Where cached copies go: the node's session factory and blob store, and their lifetime."""

    sessions: sessionmaker[Session]
    blobs: FileBlobStore
    days: int

    def store(self, peer: str, ds: Dataset) -> bool:
        """Store one instance retrieved from ``peer`` (its Part 10 encoding); True when it is cached.

        Only one instance is held in memory at a time: the caller passes them one by one.
        """
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        sink = self.blobs.spool()
        try:
            sink.write(buf.getbuffer())
        except BaseException:
            sink.discard()
            raise
        del buf
        result = StowResult()
        outcome = StoreService(self.sessions, self.blobs, overwrite=True, org=cache_org(peer)).store_one(sink, result)
        if outcome not in CACHED:
            log.warning("instance %s from peer %s not cached: %s", getattr(ds, "SOPInstanceUID", "?"), peer,
                        outcome.name if outcome is not None else "unreadable")
            return False
        return True

    def mark(self, peer: str, study: str) -> None:
        """Mark ``study`` as ``peer``'s cached copy, kept :attr:`days` days from now."""
        expires = datetime.now(timezone.utc) + timedelta(days=self.days)
        with write_session(self.sessions) as session:
            session.execute(update(Study).where(Study.study_uid == study, Study.org == cache_org(peer))
                            .values(origin=peer, expires_at=expires))
