"""Federated WADO-RS: a peer's study retrieved with dicomweb-client, cached, and streamed.

A study this node does not hold (neither its own nor a cached copy) is looked for on every peer
(QIDO-RS by StudyInstanceUID, in parallel); the first peer by name that holds it serves it. Its
instances are asked for as stored (``transfer-syntax=*``) and come one at a time
(dicomweb-client's ``iter_study`` / ``iter_series`` decode the multipart answer as it streams):
each is stored in the cache (:mod:`drimhub.federation.cache`), then sent on to the client from
the cached blob, in the representation the client's Accept header picks for it
(:func:`drimhub.dicomweb.negotiation.select_dicom`, transcoding like any local instance). No more
than one instance is ever held in memory.

The status and headers of a streamed answer are sent before the first instance arrives: a peer
failing half-way, or an instance no acceptable representation exists for, ends the body early
(the client sees a truncated multipart body, never a complete-looking partial study). Requests
that need a whole resource first (metadata, frames, bulk data, rendered, one instance) fill the
cache with :func:`ensure_cached`, then are served by the local WADO-RS code.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from pydicom.dataset import Dataset

from drimhub.dicomweb import negotiation as neg
from drimhub.dicomweb import wado as local_wado
from drimhub.dicomweb.multipart import new_boundary, write_parts
from drimhub.errors import NotAcceptable, NotFound, PeerUnavailable
from drimhub.federation import fanout
from drimhub.federation.cache import Cache, cache_org
from drimhub.federation.fanout import Outbound, PeerFailure
from drimhub.federation.peers import PeerInfo
from drimhub.store import retrieve
from drimhub.store.access import Access

log = logging.getLogger(__name__)

#: What a peer is asked for: every instance as stored (PS3.18 §8.7.3.5.2, ``transfer-syntax=*``).
AS_STORED = ((neg.DICOM, neg.AS_STORED),)


@dataclass(frozen=True)
class Holder:
    """The peer that holds a study, and the study's patient as the peer's QIDO match names it."""

    peer: PeerInfo
    patient_id: str | None
    issuer: str | None


def _first(match: dict[str, Any], tag: str) -> str | None:
    values = (match.get(tag) or {}).get("Value") or []
    return str(values[0]) if values and isinstance(values[0], str) else None


def locate(peers: Sequence[PeerInfo], out: Outbound, study: str,
           access: Access) -> tuple[Holder | None, list[PeerFailure]]:
    """The first peer (by name) holding ``study`` for this caller, and the peers that failed.

    A ``patient/`` restriction is sent as PatientID (and IssuerOfPatientID) filters, and a match
    of another patient is not taken.
    """
    filters = {"StudyInstanceUID": study}
    if access.patient is not None:
        filters["PatientID"] = access.patient.id
        if access.patient.issuer:
            filters["IssuerOfPatientID"] = access.patient.issuer

    def ask(peer: PeerInfo) -> list[dict[str, Any]]:
        found = out.dicomweb(peer).search_for_studies(search_filters=filters, limit=1)
        return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []

    gathered = fanout.ask(peers, out, ask)
    for peer, matches in gathered.answers:
        for match in matches:
            patient, issuer = _first(match, "00100020"), _first(match, "00100021")
            if _first(match, "0020000D") != study:
                continue
            if access.patient is not None and not access.patient.matches(patient, issuer if access.patient.issuer
                                                                         else None):
                continue
            return Holder(peer, patient, issuer), gathered.failures
    return None, gathered.failures


def not_found(study: str, failures: Sequence[PeerFailure]) -> NotFound | PeerUnavailable:
    """The error for a study that neither this node nor any answering peer holds."""
    if failures:
        return PeerUnavailable(f"no study {study} here nor on the peers that answered; "
                               + "; ".join(f.text() for f in failures))
    return NotFound(f"no study {study}")


@dataclass(frozen=True)
class Fetched:
    """One instance retrieved from a peer: where it went (the cache) or, if it could not be cached,
    its encoding as received."""

    scope: local_wado.Scope
    cached: bool
    data: bytes | None
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
    except (requests.RequestException, ValueError) as exc:  # ValueError: a malformed multipart answer
        raise PeerUnavailable(PeerFailure(peer.name, fanout.reason(exc, out.timeout(peer))).text()) from exc


def fetch(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope) -> Iterator[Fetched]:
    """Retrieve ``scope`` from ``peer`` instance by instance, caching each (a generator).

    The study is marked as the peer's cached copy once its first instance is stored.
    """
    client = out.dicomweb(peer)
    if scope.sop is not None:
        assert scope.series is not None
        datasets: Iterator[Dataset] = iter([client.retrieve_instance(scope.study, scope.series, scope.sop,
                                                                     media_types=AS_STORED)])
    elif scope.series is not None:
        datasets = client.iter_series(scope.study, scope.series, media_types=AS_STORED)
    else:
        datasets = client.iter_study(scope.study, media_types=AS_STORED)
    marked = False
    try:
        for ds in datasets:
            if str(getattr(ds, "StudyInstanceUID", "")) != scope.study:
                log.warning("peer %s sent an instance of another study for %s: dropped", peer.name, scope.describe())
                continue
            stored = cache.store(peer.name, ds)
            if stored and not marked:
                cache.mark(peer.name, scope.study)
                marked = True
            syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or neg.EXPLICIT_VR_LE)
            data = None if stored else _encode(ds)
            yield Fetched(local_wado.Scope(scope.study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)),
                          stored, data, syntax)
    finally:
        close = getattr(datasets, "close", None)
        if close is not None:
            close()  # closes the peer's response when the client went away


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ensure_cached(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope) -> int:
    """Retrieve ``scope`` from ``peer`` into the cache; the number of instances cached.

    Raises
    ------
    NotFound
        The peer sent nothing this node could cache, or does not hold ``scope``.
    PeerUnavailable
        The peer could not be reached or failed.
    """
    with peer_errors(out, peer):
        cached = sum(1 for item in fetch(cache, out, peer, scope) if item.cached)
    if not cached:
        raise NotFound(f"peer {peer.name} sent no instance of {scope.describe()} that could be cached")
    return cached


def accepts_multipart_dicom(accept: str | None) -> bool:
    """True when the Accept header takes ``multipart/related; type="application/dicom"`` in some form."""
    return any(rng.multipart and rng.part in (neg.DICOM, "application/*", "*/*") for rng in neg.parse_accept(accept))


def stream(cache: Cache, out: Outbound, peer: PeerInfo, scope: local_wado.Scope,
           accept: str | None) -> local_wado.WadoAnswer:
    """``scope`` retrieved from ``peer`` as it arrives: cached, and sent on as
    ``multipart/related; type="application/dicom"`` (module docstring).

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
    items = fetch(cache, out, peer, scope)
    with peer_errors(out, peer):
        first = next(items, None)
    if first is None:
        raise NotFound(f"peer {peer.name} sent no instance of {scope.describe()}")
    boundary = new_boundary()
    headers = {"Content-Type": f'multipart/related; type="{neg.DICOM}"; boundary={boundary}'}
    parts = _parts(cache, peer, scope, itertools.chain([first], items), neg.parse_accept(accept))
    return local_wado.WadoAnswer(200, headers, write_parts(parts, boundary))


def _parts(cache: Cache, peer: PeerInfo, scope: local_wado.Scope, items: Iterator[Fetched],
           ranges: list[neg.MediaRange]) -> Iterator[tuple[str, Any]]:
    """(content type, chunks) of each instance, in the order the peer sends them."""
    access = Access.of_org(cache_org(peer.name))
    try:
        for item in items:
            yield _part(cache, item, ranges, access)
    except Exception:
        log.exception("federated retrieve of %s from peer %s ended early", scope.describe(), peer.name)
        raise


def _part(cache: Cache, item: Fetched, ranges: list[neg.MediaRange], access: Access) -> tuple[str, Any]:
    """One instance's part: from the cache in the chosen representation, or as received."""
    if not item.cached:
        selection = neg.select_dicom(ranges, item.transfer_syntax)
        if selection is None or selection.transfer_syntax != item.transfer_syntax or item.data is None:
            raise NotAcceptable(f"instance {item.scope.sop} (not cachable) cannot be sent as the client accepts")
        return selection.content_type(), [item.data]
    with cache.sessions() as session:
        found = retrieve.instances(session, access, item.scope.study, item.scope.series, item.scope.sop)
        if not found:
            raise NotFound(f"instance {item.scope.sop} vanished from the cache")
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
