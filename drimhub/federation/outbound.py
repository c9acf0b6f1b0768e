"""Every outbound call to a peer: exact-origin token sending, no cross-origin redirects, SSRF checks.

A call to a peer goes through a :class:`requests.Session` made here and nowhere else
(:func:`peer_session`, :func:`dicomweb_client`). Its guarantees (security.md G24):

- every request, and each redirect hop (requests hands each hop to the adapter), is checked when
  it is sent: its origin must be exactly the peer's, its scheme http(s) (https unless the peer was
  added with ``allow_private``); otherwise :class:`OutboundRefused` is raised before a byte leaves;
- without ``allow_private``, the host is resolved when the connection is opened (the only lookup:
  none blocks before) and the connection is made only to the addresses checked then (no loopback,
  link-local, private... address, nor an IPv6 address carrying one), so a name that changes its
  answer (DNS rebinding) cannot slip through. The refusal names the host, never the address it
  resolved to (logged only);
- the ``Authorization`` header is attached by :class:`PeerAuth` only to a request for the peer's
  exact origin; no proxy, no ``.netrc``, no environment settings are used;
- every call has a time-out (the peer's, else the caller's default: ``DRIMHUB_PEER_TIMEOUT``,
  passed in by the web layer); a session made with ``max_body`` reads a non-streamed answer
  within one overall deadline (that time-out) and refuses one larger than ``max_body`` bytes
  (:class:`AnswerTooLarge`), so that a peer cannot hold a request nor fill the memory.

``smart-backend`` peers get a token of the peer's authorization server (:mod:`drimhub.federation.smart`;
a 401 from the peer drops it and retries once with a new one); ``relay`` peers the caller's own.

Errors: :class:`OutboundRefused` (a :class:`~drimhub.errors.PeerUnavailable`, 502) for a refused
request; connection failures and time-outs stay :class:`requests.RequestException`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from dicomweb_client import DICOMwebClient
from joserfc.jwk import RSAKey
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from drimhub.errors import Forbidden, InvalidRequest, PeerUnavailable
from drimhub.federation.peers import Origin, PeerInfo, address_refused, origin_of

log = logging.getLogger(__name__)

#: Time-out (seconds) when neither the peer nor the app's ``PEER_TIMEOUT`` says otherwise.
DEFAULT_TIMEOUT = 10.0
#: Redirects followed (each on the peer's own origin only).
MAX_REDIRECTS = 5


class OutboundRefused(PeerUnavailable):
    """A request to a peer was refused before it was sent: another origin (a redirect away from the
    peer), a scheme other than http(s), or an address the peer may not use."""


class AnswerTooLarge(PeerUnavailable):
    """A peer's answer was larger than the session's ``max_body``."""


# --- connections only to checked addresses ------------------------------------------------------


class _PublicAddressesOnly:
    """urllib3 connection mix-in: resolve the host when connecting, refuse the connection if any
    address it resolves to is not public, and connect only to those checked addresses."""

    _dns_host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any
    host: str

    def _new_conn(self) -> socket.socket:
        host = self._dns_host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        for info in infos:
            address = str(info[4][0])
            reason = address_refused(address)
            if reason:  # the address stays in the log: the caller only learns the kind of address
                log.warning("refused to connect to %s: it resolves to %s, %s", self.host, address, reason)
                raise OutboundRefused(f"refused to connect to {self.host}: it resolves to {reason}")
        error: OSError | None = None
        for family, kind, proto, _name, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if self.timeout is not _DEFAULT_TIMEOUT:
                    sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out")
        raise NewConnectionError(self, f"failed to establish a new connection: {error}")  # type: ignore[arg-type]


class _PublicHTTPConnection(_PublicAddressesOnly, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicAddressesOnly, HTTPSConnection):
    pass


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


# --- the guarded adapter and session ------------------------------------------------------------


class OriginGuard(HTTPAdapter):
    """A transport adapter that sends only to one origin, with a time-out on every request.

    Parameters
    ----------
    origin : Origin
        The only origin requests may go to.
    allow_private : bool
        Whether that origin may be on a loopback, link-local or private address, or plain http.
    timeout : float
        Seconds, for a request sent without its own time-out; also the overall deadline of reading
        a non-streamed answer when ``max_body`` is set.
    max_body : int or None
        Largest non-streamed answer read, in bytes (None: no limit, no overall deadline).
    """

    def __init__(self, origin: Origin, *, allow_private: bool, timeout: float, max_body: int | None = None) -> None:
        self.origin, self.allow_private, self.timeout, self.max_body = origin, allow_private, timeout, max_body
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        if not self.allow_private:
            self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise OutboundRefused("calls to peers never go through a proxy")

    def check(self, url: str) -> None:
        """Refuse (:class:`OutboundRefused`) a request for ``url`` unless it may go to the origin."""
        try:
            origin = origin_of(url)
        except InvalidRequest as exc:
            raise OutboundRefused(f"refused a request to a URL that is not http(s): {exc.message}") from exc
        if origin != self.origin:
            raise OutboundRefused(f"refused a request to {origin}: only {self.origin} may be called")
        if not self.allow_private and origin.scheme != "https":
            raise OutboundRefused(f"refused a plain http request to {origin}")
        # the addresses are checked when connecting (_PublicAddressesOnly): no lookup here

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Mapping[str, str] | None = None) -> requests.Response:
        self.check(str(request.url))
        if proxies and any(proxies.values()):
            raise OutboundRefused("calls to peers never go through a proxy")
        timeout = self.timeout if timeout is None else timeout
        if stream or self.max_body is None:
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=None)
        deadline = time.monotonic() + self.timeout
        response = super().send(request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=None)
        try:
            response._content = _read_capped(response, self.max_body, deadline)  # what .content returns
        finally:
            response.close()
        return response


def _read_capped(response: requests.Response, limit: int, deadline: float) -> bytes:
    """The body of ``response``, read before ``deadline`` (monotonic) and at most ``limit`` bytes.

    Raises
    ------
    AnswerTooLarge
        The body is longer than ``limit``.
    requests.Timeout
        The deadline passed before the body was read.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise AnswerTooLarge(f"the answer is larger than {limit} bytes")
    body = bytearray()
    for chunk in response.iter_content(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise AnswerTooLarge(f"the answer is larger than {limit} bytes")
        if time.monotonic() > deadline:
            raise requests.Timeout("the answer was not read within the deadline")
    return bytes(body)


class GuardedSession(requests.Session):
    """A session whose every URL, whatever its scheme, goes to one :class:`OriginGuard`."""

    def __init__(self, guard: OriginGuard) -> None:
        super().__init__()
        self.trust_env = False  # no proxy, no .netrc credentials, no CA bundle from the environment
        self.max_redirects = MAX_REDIRECTS
        self.guard = guard
        self.mount("https://", guard)
        self.mount("http://", guard)

    def get_adapter(self, url: str) -> HTTPAdapter:
        return self.guard  # file:, ftp:... reach the guard too, which refuses them


def guarded_session(origin: Origin, *, allow_private: bool, timeout: float,
                    max_body: int | None = None) -> GuardedSession:
    """A session that sends only to ``origin`` (no credentials attached; ``max_body``: :class:`OriginGuard`)."""
    return GuardedSession(OriginGuard(origin, allow_private=allow_private, timeout=timeout, max_body=max_body))


def peer_timeout(peer: PeerInfo, default: float | None = None) -> float:
    """Seconds a call to ``peer`` may wait: the peer's own time-out, else ``default`` (the caller's
    setting, e.g. ``PEER_TIMEOUT``), else :data:`DEFAULT_TIMEOUT`. The one rule for it."""
    return float(peer.timeout or default or DEFAULT_TIMEOUT)


# --- credentials ----------------------------------------------------------------------------


class PeerAuth(AuthBase):
    """``Authorization: Bearer`` for requests to exactly ``origin``, and to no other.

    Parameters
    ----------
    origin : Origin
        The peer's origin.
    token : callable
        ``token(fresh)``: the bearer token; ``fresh=True`` after the peer answered 401.
    retry : bool
        Retry once with a fresh token when the peer answers 401 (only for a body that can be
        sent twice).
    """

    def __init__(self, origin: Origin, token: Callable[[bool], str], *, retry: bool) -> None:
        self.origin, self.token, self.retry = origin, token, retry

    def _attach(self, request: requests.PreparedRequest, fresh: bool) -> None:
        request.headers.pop("Authorization", None)
        try:
            same = origin_of(str(request.url)) == self.origin
        except InvalidRequest:
            same = False
        if same:
            request.headers["Authorization"] = f"Bearer {self.token(fresh)}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self._attach(request, False)
        if self.retry:
            request.register_hook("response", self._retry_on_401)
        return request

    def _retry_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, "_drimhub_retried", False):
            return response
        if request.body is not None and not isinstance(request.body, bytes | str):
            return response  # a streamed body cannot be sent again
        response.content  # noqa: B018  (read it, to give the connection back)
        response.close()
        again = request.copy()
        again._drimhub_retried = True  # type: ignore[attr-defined]
        self._attach(again, True)
        retried: requests.Response = response.connection.send(again, **kwargs)  # type: ignore[attr-defined]
        retried.history.append(response)
        retried.request = again
        return retried


def peer_session(peer: PeerInfo, signing_key: RSAKey, *, relay_token: str | None = None,
                 timeout: float | None = None, max_body: int | None = None) -> requests.Session:
    """A session for plain HTTP calls (FHIR...) to ``peer``, authenticated as the peer's ``auth`` says.

    ``timeout``: seconds per call (None: :func:`peer_timeout` with no default); ``max_body``: cap
    and overall deadline of non-streamed answers (:class:`OriginGuard`).

    Raises
    ------
    Forbidden
        A ``relay`` peer without a ``relay_token`` to relay.
    """
    seconds = timeout or peer_timeout(peer)
    session = guarded_session(peer.origin, allow_private=peer.allow_private, timeout=seconds, max_body=max_body)
    if peer.auth == "relay":
        if not relay_token:
            raise Forbidden(f"peer {peer.name} accepts the caller's own token, and there is none to relay")
        token = relay_token
        session.auth = PeerAuth(peer.origin, lambda _fresh: token, retry=False)
    else:
        from drimhub.federation import smart

        def backend_token(fresh: bool) -> str:
            if fresh:
                smart.drop_token(peer)
            return smart.access_token(peer, signing_key, timeout=seconds)

        session.auth = PeerAuth(peer.origin, backend_token, retry=True)
    return session


def dicomweb_client(peer: PeerInfo, signing_key: RSAKey, *, relay_token: str | None = None,
                    timeout: float | None = None, max_body: int | None = None) -> DICOMwebClient:
    """A dicomweb-client for ``peer``'s DICOMweb root, authenticated as the peer's ``auth`` says.

    ``smart-backend``: a token obtained from the peer's token endpoint with a client assertion
    signed by ``signing_key`` (cached until shortly before it expires); ``relay``: ``relay_token``
    (the caller's own). The token is sent only to the peer's exact origin. The client does not
    retry: a failure is raised at once. Its session is the caller's to close (``client._session``
    is dicomweb-client's; :meth:`drimhub.federation.fanout.Outbound.client` closes it).
    """
    seconds = timeout or peer_timeout(peer)
    session = peer_session(peer, signing_key, relay_token=relay_token, timeout=seconds, max_body=max_body)
    client = DICOMwebClient(url=peer.dicomweb_url, session=session, timeout=seconds)
    # dicomweb-client would retry every failure (refusals and time-outs included) up to 5 times with
    # back-off: a federated search waits for a peer once, and pushes retry as durable jobs.
    client.set_http_retry_params(retry=False)
    return client
