"""One request's calls to every peer, in parallel, each within its own time-out.

A federated request (``/federated/dicom-web``, FHIR ``_federated=true``) asks every peer at once
in a thread pool. Each peer has its own deadline (the peer's ``timeout``, else the app's
``PEER_TIMEOUT``); a peer that fails or misses its deadline becomes a :class:`PeerFailure`, never an
error of the request. Threads get plain values only (:class:`Outbound`, :class:`PeerInfo`): no
Flask context, no database session.

A ``relay`` peer gets the caller's token only when an external identity provider both nodes
trust issued it (:func:`drimhub.server.auth.protect.relayable_token`); otherwise it is not asked
at all, and the answer says so (``peer NAME needs a token of a shared identity provider``).
Searches read at most :data:`MAX_ANSWER` bytes of a peer's answer, within its time-out
(:class:`drimhub.federation.outbound.OriginGuard`), and every session is closed after its call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import requests
from dicomweb_client import DICOMwebClient
from joserfc.jwk import RSAKey

from drimhub.errors import DrimhubError
from drimhub.federation import outbound
from drimhub.federation.peers import PeerInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Peers asked at the same time by one request.
MAX_PARALLEL = 8
#: Longest reason kept in a Warning header or an OperationOutcome.
MAX_REASON = 160
#: Largest search answer (QIDO-RS, FHIR searchset) read from a peer, in bytes.
MAX_ANSWER = 32 * 1024 * 1024
#: Why a ``relay`` peer is not asked without a relayable token.
NEEDS_SHARED_IDP = "needs a token of a shared identity provider"


@dataclass(frozen=True)
class Outbound:
    """How this node calls its peers on behalf of one caller (plain values, safe in threads).

    Attributes
    ----------
    signing_key : RSAKey
        The node's key (SMART backend services client assertions).
    relay_token : str or None
        The caller's token if it may be relayed (an external issuer's), given only to ``relay``
        peers; None: ``relay`` peers are not asked.
    default_timeout : float
        Seconds a peer without its own ``timeout`` is waited for (``PEER_TIMEOUT``).
    """

    signing_key: RSAKey
    relay_token: str | None
    default_timeout: float

    def timeout(self, peer: PeerInfo) -> float:
        """The peer's own time-out, else the default (:func:`drimhub.federation.outbound.peer_timeout`)."""
        return outbound.peer_timeout(peer, self.default_timeout)

    def can_ask(self, peer: PeerInfo) -> bool:
        """False for a ``relay`` peer when there is no relayable token."""
        return peer.auth != "relay" or self.relay_token is not None

    def _relay(self, peer: PeerInfo) -> str | None:
        return self.relay_token if peer.auth == "relay" else None

    def dicomweb(self, peer: PeerInfo, max_body: int | None = None) -> DICOMwebClient:
        """A dicomweb-client for ``peer`` (:func:`drimhub.federation.outbound.dicomweb_client`); its
        session is the caller's to close (:meth:`client` does)."""
        return outbound.dicomweb_client(peer, self.signing_key, relay_token=self._relay(peer),
                                        timeout=self.timeout(peer), max_body=max_body)

    @contextmanager
    def client(self, peer: PeerInfo, max_body: int | None = MAX_ANSWER) -> Iterator[DICOMwebClient]:
        """:meth:`dicomweb` for one search, its session closed afterwards."""
        found = self.dicomweb(peer, max_body)
        try:
            yield found
        finally:
            found._session.close()  # dicomweb-client keeps the session it was given there

    def session(self, peer: PeerInfo, max_body: int | None = MAX_ANSWER) -> requests.Session:
        """A guarded session for ``peer``'s FHIR calls (:func:`drimhub.federation.outbound.peer_session`);
        use it in a ``with`` block."""
        return outbound.peer_session(peer, self.signing_key, relay_token=self._relay(peer),
                                     timeout=self.timeout(peer), max_body=max_body)


@dataclass(frozen=True)
class PeerFailure:
    """A peer that did not answer usefully, and why (safe to show: no credential in it)."""

    peer: str
    reason: str
    #: The peer was not asked at all (:data:`NEEDS_SHARED_IDP`).
    skipped: bool = False

    def text(self) -> str:
        """``peer NAME unavailable: REASON``, or ``peer NAME REASON`` for a peer not asked (the
        Warning text, the OperationOutcome diagnostics)."""
        return f"peer {self.peer} {self.reason}" if self.skipped else f"peer {self.peer} unavailable: {self.reason}"


@dataclass
class Gathered(Generic[T]):
    """The answers of the peers that answered, in the peers' order, and the failures."""

    answers: list[tuple[PeerInfo, T]] = field(default_factory=list)
    failures: list[PeerFailure] = field(default_factory=list)


def reason(exc: BaseException, timeout: float) -> str:
    """A short, credential-free reason for a failed call."""
    if isinstance(exc, (requests.Timeout, FutureTimeout)):
        text = f"no answer within {timeout:g} s"
    elif isinstance(exc, requests.ConnectionError):
        text = "connection failed"
    elif isinstance(exc, requests.HTTPError) and exc.response is not None:
        text = f"HTTP {exc.response.status_code}"
    elif isinstance(exc, DrimhubError):
        text = exc.message
    else:
        text = f"{type(exc).__name__}"
    # a Warning header's quoted text: printable latin-1, no quote or backslash (RFC 9110 §5.6.4)
    cleaned = "".join(c if c.isprintable() and c not in '"\\' and ord(c) < 256 else " " for c in text)
    return cleaned[:MAX_REASON]


class Fanout(Generic[T]):
    """Calls to every peer, started at once; :meth:`gather` collects them.

    Start it, do the local work in the request's thread meanwhile, then gather.
    """

    def __init__(self, peers: Sequence[PeerInfo], out: Outbound, call: Callable[[PeerInfo], T]) -> None:
        self.peers = [peer for peer in peers if out.can_ask(peer)]
        self.skipped = [PeerFailure(peer.name, NEEDS_SHARED_IDP, skipped=True) for peer in peers
                        if not out.can_ask(peer)]
        self.out = out
        self.started = time.monotonic()
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(len(self.peers), MAX_PARALLEL)),
                                       thread_name_prefix="drimhub-peer") if self.peers else None
        self.futures: list[Future[T]] = [self.pool.submit(call, peer) for peer in self.peers] if self.pool else []

    def gather(self) -> Gathered[T]:
        """Wait for each peer until its own deadline; never raises for a peer's failure."""
        out: Gathered[T] = Gathered(failures=list(self.skipped))
        try:
            for peer, future in zip(self.peers, self.futures):
                timeout = self.out.timeout(peer)
                left = max(0.0, self.started + timeout - time.monotonic())
                try:
                    out.answers.append((peer, future.result(timeout=left)))
                except Exception as exc:  # noqa: BLE001 - a peer's failure is a warning, never ours
                    log.warning("peer %s: %s", peer.name, reason(exc, timeout),
                                exc_info=not isinstance(exc, (requests.RequestException, FutureTimeout)))
                    out.failures.append(PeerFailure(peer.name, reason(exc, timeout)))
        finally:
            if self.pool is not None:  # late answers are dropped, not awaited
                self.pool.shutdown(wait=False, cancel_futures=True)
        return out


def ask(peers: Sequence[PeerInfo], out: Outbound, call: Callable[[PeerInfo], T]) -> Gathered[T]:
    """``call(peer)`` for every peer in parallel, each within its time-out (:class:`Fanout`)."""
    return Fanout(peers, out, call).gather()
