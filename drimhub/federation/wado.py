"""Federated WADO-RS: a peer's study retrieved from the peer, cached, and streamed.

A study this node does not hold (neither its own nor a cached copy) is looked for on every peer
(QIDO-RS by StudyInstanceUID with dicomweb-client, in parallel); the first peer by name that holds
it serves it. Its instances are asked for as stored (``transfer-syntax=*``) through the peer's
guarded session (:mod:`drimhub.federation.outbound`) and its multipart answer is read as it
streams: each part's bytes go straight to a spooled file (at most
:attr:`~drimhub.federation.cache.Cache.max_bytes`), exactly as the peer sent them, are checked
against the request (Study, Series and SOP Instance UIDs in scope, else the retrieval fails) and
are stored in the cache like a STOW (:mod:`drimhub.federation.cache`); each is then sent on to
the client from the cached blob, with the caller's own access, in the representation its Accept
header picks (:func:`drimhub.dicomweb.negotiation.select_dicom`). No instance is held in memory.

Only the request holding the study's lease fills the cache; it marks the copy complete when it
received every instance the peer counts (NumberOfStudyRelatedInstances). Other requests (and
every request for a ``relay`` peer's study, never cached) stream the peer's parts without
caching them. A study or series is served from the cache only once the copy is complete; an
instance whenever it is cached (:func:`served_here`).

The status and headers of a streamed answer are sent before the first instance arrives: a peer
failing half-way, or an instance no acceptable representation exists for, ends the body early
(the client sees a truncated multipart body, never a complete-looking partial study). Requests
that need a whole resource first (metadata, frames, bulk data, rendered, one instance, or a
retrieve whose Accept is not multipart ``application/dicom``) fill the cache with
:func:`ensure_cached`, then are served by the local WADO-RS code.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from sqlalchemy.orm import Session

from drimhub.dicomweb import multipart
from drimhub.dicomweb import negotiation as neg
from drimhub.dicomweb import wado as local_wado
from drimhub.dicomweb.ingest import UnreadableInstance, parse_instance
from drimhub.dicomweb.multipart import new_boundary, write_parts
from drimhub.errors import InvalidRequest, NotAcceptable, NotFound, PeerUnavailable
from drimhub.federation import cache as fcache
from drimhub.federation import fanout
from drimhub.federation import qido as fqido
from drimhub.federation.cache import Cache, Lease
from drimhub.federation.fanout import Outbound, PeerFailure
from drimhub.federation.peers import PeerInfo
from drimhub.store import retrieve
from drimhub.store.access import Access
from drimhub.store.blobs import SpooledBlob
from drimhub.store.index import IndexEntry

log = logging.getLogger(__name__)

#: What a peer is asked for: every instance as stored (PS3.18 §8.7.3.5.2, ``transfer-syntax=*``).
ACCEPT_AS_STORED = f'multipart/related; type="{neg.DICOM}"; transfer-syntax={neg.AS_STORED}'
#: Seconds between two looks at a copy another request is filling.
WAIT_STEP = 0.25
#: Bytes read at once from a spooled part.
CHUNK = 1 << 20


@dataclass(frozen=True)
class Holder:
    """The peer that holds a study, and the study's patient as the peer's QIDO match names it."""

    peer: PeerInfo
    patient_id: str | None
    issuer: str | None


def locate(peers: Sequence[PeerInfo], out: Outbound, study: str,
           access: Access) -> tuple[Holder | None, list[PeerFailure]]:
    """The first peer (by name) holding ``study`` for this caller, and the peers that failed.

    A ``patient/`` restriction is sent as PatientID (and IssuerOfPatientID) filters, and a match
    of another patient is not taken.
    """
    filters = {"StudyInstanceUID": study, **fqido.patient_filters(access)}

    def ask(peer: PeerInfo) -> list[dict[str, Any]]:
        found = out.dicomweb(peer).search_for_studies(search_filters=filters, limit=1)
        return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []

    gathered = fanout.ask(peers, out, ask)
    for peer, matches in gathered.answers:
        for match in matches:
            if fqido.value(match, "0020000D") != study or not fqido.of_patient(match, access):
                continue
            return Holder(peer, fqido.value(match, "00100020"), fqido.value(match, "00100021")), gathered.failures
    return None, gathered.failures


def not_found(study: str, failures: Sequence[PeerFailure]) -> NotFound | PeerUnavailable:
    """The error for a study that neither this node nor any answering peer holds."""
    if failures:
        return PeerUnavailable(f"no study {study} here nor on the peers that answered; "
                               + "; ".join(f.text() for f in failures))
    return NotFound(f"no study {study}")


@dataclass(frozen=True)
class Fetched:
    """One instance retrieved from a peer: cached, or (not cached) its spooled bytes as received."""

    scope: local_wado.Scope
    cached: bool
    spool: SpooledBlob | None
    transfer_syntax: str


@contextmanager
def peer_errors(out: Outbound, peer: PeerInfo) -> Iterator[None]:
    """Turn a failed call to ``peer`` into this node's error: a 404 of the peer stays a 404,
    anything else is :class:`~drimhub.errors.PeerUnavailable` (502)."""
    try:
        yield
    except requests.HTTPError as exc:
        if exc.response is not None and exc.response.status_code == 404:
            raise NotFound(f"peer {peer.name} does not hold it") from exc
        raise PeerUnavailable(PeerFailure(peer.name, fanout.reason(exc, out.timeout(peer))).text()) from exc
    except (requests.RequestException, ValueError, InvalidRequest) as exc:  # a malformed or oversized answer
        raise PeerUnavailable(PeerFailure(peer.name, fanout.reason(exc, out.timeout(peer))).text()) from exc


def served_here(session: Session, access: Access, peer: str, scope: local_wado.Scope) -> bool:
    """True when this node serves ``scope`` of ``peer``'s study from its cache: a study or series
    once the copy is complete, an instance once it is cached."""
    if scope.sop is not None:
        return bool(retrieve.instances(session, access, scope.study, scope.series, scope.sop))
    return fcache.is_complete(session, peer, scope.study)


def expected_count(out: Outbound, peer: PeerInfo, scope: local_wado.Scope) -> int | None:
    """How many instances ``peer`` says ``scope`` has (NumberOfStudy/SeriesRelatedInstances), if it says."""
    if scope.sop is not None:
        return 1
    client = out.dicomweb(peer)
    try:
        if scope.series is None:
            found = client.search_for_studies(search_filters={"StudyInstanceUID": scope.study},
                                              fields=["NumberOfStudyRelatedInstances"])
            key, uid, count = "0020000D", scope.study, "00201208"
        else:
            found = client.search_for_series(scope.study, search_filters={"SeriesInstanceUID": scope.series},
                                             fields=["NumberOfSeriesRelatedInstances"])
            key, uid, count = "0020000E", scope.series, "00201209"
    finally:
        client._session.close()  # dicomweb-client keeps the guarded session it was given there
    for match in found if isinstance(found, list) else []:
        values = (match.get(count) or {}).get("Value") or [] if isinstance(match, dict) else []
        if fqido.value(match, key) == uid and values and isinstance(values[0], int):
            return int(values[0])
    return None


def _peer_parts(cache: Cache, out: Outbound, peer: PeerInfo,
                scope: local_wado.Scope) -> Iterator[tuple[IndexEntry, SpooledBlob]]:
    """Each instance of ``scope`` as ``peer`` stores it, spooled to disk part by part and parsed.

    Raises
    ------
    PeerUnavailable
        The peer sent an unreadable instance, one outside ``scope``, a part too large, or not a
        multipart answer.
    """
    url = f"{peer.dicomweb_url.rstrip('/')}/{_path(scope)}"
    with out.session(peer) as http, http.get(url, headers={"Accept": ACCEPT_AS_STORED}, stream=True,
                                             timeout=out.timeout(peer)) as response:
        response.raise_for_status()
        ctype, params = multipart.media_type(response.headers.get("Content-Type"))
        if ctype != "multipart/related" or not params.get("boundary"):
            raise PeerUnavailable(f"peer {peer.name} answered {ctype or 'nothing'}, not multipart/related")
        response.raw.decode_content = True  # a gzip-encoded answer is read decoded
        for _, capped in multipart.read_parts(response.raw, params["boundary"], cache.spool):
            assert isinstance(capped, fcache.CappedSpool)
            sink = capped.sink
            try:
                sink.close()
                parsed = parse_instance(sink.path)
            except UnreadableInstance as exc:
                sink.discard()
                raise PeerUnavailable(f"peer {peer.name} sent an unreadable instance for {scope.describe()}") \
                    from exc
            if not _in_scope(parsed, scope):
                sink.discard()
                log.warning("peer %s sent instance %s of study %s series %s for %s: dropped, retrieval failed",
                            peer.name, parsed.sop_uid, parsed.study_uid, parsed.series_uid, scope.describe())
                raise PeerUnavailable(f"peer {peer.name} sent an instance outside {scope.describe()}")
            yield parsed, sink


def _path(scope: local_wado.Scope) -> str:
    path = f"studies/{scope.study}"
    if scope.series is not None:
        path += f"/series/{scope.series}"
    if scope.sop is not None:
        path += f"/instances/{scope.sop}"
    return path


def _in_scope(parsed: IndexEntry, scope: local_wado.Scope) -> bool:
    return (parsed.study_uid == scope.study and scope.series in (None, parsed.series_uid)
            and scope.sop in (None, parsed.sop_uid))


def fetch(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope, *, store: bool,
          lease: Lease | None = None) -> Iterator[Fetched]:
    """Retrieve ``scope`` from ``peer`` instance by instance (a generator), caching each when ``store``.

    With ``lease`` (held on the study), the copy is marked complete once the whole study came and
    its count is the peer's. Uncached instances come as spooled files the consumer discards.
    """
    expected = expected_count(out, peer, scope) if lease is not None and scope.series is None else None
    marked, count = False, 0
    for parsed, sink in _peer_parts(cache, out, peer, scope):
        syntax = str(parsed.instance.get("transfer_syntax") or neg.EXPLICIT_VR_LE)
        item = local_wado.Scope(parsed.study_uid, parsed.series_uid, parsed.sop_uid)
        if not store:
            yield Fetched(item, False, sink, syntax)
            continue
        if not cache.store(peer.name, sink):
            raise PeerUnavailable(f"instance {parsed.sop_uid} of peer {peer.name} could not be cached")
        count += 1
        if not marked:
            cache.mark(peer.name, scope.study)
            marked = True
        if lease is not None:
            lease.renew()
        yield Fetched(item, True, None, syntax)
    if lease is not None and scope.series is None:
        if expected is not None and count == expected:
            cache.complete(peer.name, scope.study)
        else:
            log.warning("peer %s sent %d instances of study %s but counts %s: the copy stays partial",
                        peer.name, count, scope.study, expected)


def _fill(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope, lease: Lease | None) -> int:
    """Cache every instance of ``scope``; their number, checked against the peer's count."""
    expected = expected_count(out, peer, scope) if scope.series is not None or scope.sop is not None else None
    count = sum(1 for _ in fetch(cache, out, peer, scope, store=True, lease=lease))
    with cache.sessions() as session:
        whole = scope.series is None and fcache.is_complete(session, peer.name, scope.study)
    if not count or (scope.series is None and not whole) or (expected is not None and count != expected):
        raise PeerUnavailable(f"peer {peer.name} sent {count} instance(s) of {scope.describe()}, "
                              f"not the {expected if expected is not None else 'expected'} it holds")
    return count


def ensure_cached(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope) -> int:
    """Retrieve ``scope`` from ``peer`` into the cache; the number of instances cached (0: it already was).

    One instance is cached at once; a series or a study under the study's lease, waiting (up to
    twice :data:`~drimhub.federation.cache.LEASE_SECONDS`) while another request fills the copy.

    Raises
    ------
    NotAcceptable
        ``peer`` is a ``relay`` peer: its studies are streamed, never cached.
    NotFound
        The peer does not hold ``scope``.
    PeerUnavailable
        The peer could not be reached, failed, or sent an incomplete or mismatching answer; or
        another request kept filling the copy too long.
    """
    if not fcache.cachable(peer):
        raise NotAcceptable(f"peer {peer.name} answers per user: its studies are only streamed "
                            "(multipart/related; type=\"application/dicom\"), never cached here")
    if scope.sop is not None:
        with peer_errors(out, peer):
            return _fill(cache, out, peer, scope, None)
    deadline = time.monotonic() + 2 * fcache.LEASE_SECONDS
    while True:
        with cache.lease(peer.name, scope.study) as lease:
            if lease is not None:
                with peer_errors(out, peer):
                    return _fill(cache, out, peer, scope, lease)
        with cache.sessions() as session:
            if fcache.is_complete(session, peer.name, scope.study):
                return 0
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"{scope.describe()} of peer {peer.name} is still being retrieved: retry later")
        time.sleep(WAIT_STEP)


def accepts_multipart_dicom(accept: str | None) -> bool:
    """True when the Accept header takes ``multipart/related; type="application/dicom"`` in some form."""
    return any(rng.multipart and rng.part in (neg.DICOM, "application/*", "*/*") for rng in neg.parse_accept(accept))


def retrieve_from_peer(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope, accept: str | None,
                       access: Access) -> local_wado.WadoAnswer | None:
    """A retrieve of ``scope`` held by ``peer``: streamed (:func:`stream`) when the client takes
    multipart ``application/dicom`` and ``scope`` is a study or series, else None once the cache
    holds it (:func:`ensure_cached`): the local WADO-RS code then answers in any representation."""
    if scope.sop is None and accepts_multipart_dicom(accept):
        return stream(cache, out, peer, scope, accept, access)
    if not fcache.cachable(peer) and accepts_multipart_dicom(accept):
        return stream(cache, out, peer, scope, accept, access)
    ensure_cached(cache, out, peer, scope)
    return None


def _leased(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope) -> Iterator[Fetched]:
    """:func:`fetch` caching under the study's lease when it can be had, else only streaming."""
    if not fcache.cachable(peer):
        yield from fetch(cache, out, peer, scope, store=False)
        return
    with cache.lease(peer.name, scope.study) as lease:
        yield from fetch(cache, out, peer, scope, store=lease is not None, lease=lease)


def stream(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope,
           accept: str | None, access: Access) -> local_wado.WadoAnswer:
    """``scope`` retrieved from ``peer`` as it arrives: cached when this request fills the copy, and
    sent on as ``multipart/related; type="application/dicom"`` (module docstring), each cached
    instance read back with the caller's ``access``.

    Raises
    ------
    NotAcceptable
        The client takes no multipart ``application/dicom`` answer at all.
    NotFound, PeerUnavailable
        The peer sends nothing, or fails before its first instance arrived (the status can
        still say so).
    """
    if not accepts_multipart_dicom(accept):
        raise NotAcceptable("instances are sent as multipart/related; type=\"application/dicom\"")
    items = _leased(cache, out, peer, scope)
    try:
        with peer_errors(out, peer):
            first = next(items, None)
    except BaseException:
        items.close()
        raise
    if first is None:
        raise NotFound(f"peer {peer.name} sent no instance of {scope.describe()}")
    boundary = new_boundary()
    headers = {"Content-Type": f'multipart/related; type="{neg.DICOM}"; boundary={boundary}'}
    parts = _parts(cache, out, peer, scope, itertools.chain([first], items), neg.parse_accept(accept), access)
    return local_wado.WadoAnswer(200, headers, write_parts(parts, boundary))


def _parts(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope, items: Iterator[Fetched],
           ranges: list[neg.MediaRange], access: Access) -> Iterator[tuple[str, Any]]:
    """(content type, chunks) of each instance, in the order the peer sends them."""
    try:
        with peer_errors(out, peer):
            for item in items:
                yield _part(cache, item, ranges, access)
    except Exception:
        log.exception("federated retrieve of %s from peer %s ended early", scope.describe(), peer.name)
        raise
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the peer's answer and the lease are given back when the client went away


def _part(cache: Cache, item: Fetched, ranges: list[neg.MediaRange], access: Access) -> tuple[str, Any]:
    """One instance's part: from the cache in the chosen representation, or as received."""
    if not item.cached:
        assert item.spool is not None
        selection = neg.select_dicom(ranges, item.transfer_syntax)
        if selection is None or selection.transfer_syntax != item.transfer_syntax:
            item.spool.discard()
            raise NotAcceptable(f"instance {item.scope.sop} (not cached) cannot be sent as the client accepts")
        return selection.content_type(), _spooled(item.spool)
    with cache.sessions() as session:
        found = retrieve.instances(session, access, item.scope.study, item.scope.series, item.scope.sop)
        if not found:
            raise NotFound(f"instance {item.scope.sop} is not in the cache for this caller")
        inst = found[0]
        selection = neg.select_dicom(ranges, inst.transfer_syntax, encodable=local_wado.encodable(inst))
        if selection is None:
            raise NotAcceptable(f"instance {inst.sop_uid} stored in {inst.transfer_syntax} cannot be sent in any "
                                "acceptable representation")
        # one instance as a bare application/dicom in the chosen syntax: the local WADO-RS code
        answer = local_wado.retrieve_instances(session, cache.blobs, item.scope,
                                               f"{neg.DICOM}; transfer-syntax={selection.transfer_syntax}",
                                               access=access)
    return selection.content_type(), answer.body


def _spooled(sink: SpooledBlob) -> Iterator[bytes]:
    """The bytes of a spooled part, read in chunks; the spool is deleted afterwards."""
    try:
        with open(sink.path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    finally:
        sink.discard()
