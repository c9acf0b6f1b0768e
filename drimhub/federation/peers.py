"""Trusted peers: add, list, remove (``drimhub peer``, ``/api/peers``). Only listed peers are trusted.

A peer is trusted at one origin (scheme, host, port): its DICOMweb and FHIR roots live there, and
its tokens are only ever sent there (:mod:`drimhub.federation.outbound`). A peer on a loopback,
link-local or private address, or over plain http, is accepted only with ``allow_private``.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from drimhub.errors import Conflict, InvalidRequest, NotFound
from drimhub.store.network import Peer

#: A peer's name: a letter or digit, then up to 63 letters, digits, ``.``, ``_`` or ``-``.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: How this node authenticates to a peer (see :class:`drimhub.store.network.Peer`).
AUTH_METHODS = ("smart-backend", "relay")
#: Longest URL kept (the width of the peer table's URL columns).
MAX_URL = 512
#: Longest per-peer time-out, in seconds.
MAX_TIMEOUT = 600.0
_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN_URL_CHARS = re.compile(r"[\s\\\x00-\x1f\x7f]")


class Origin(NamedTuple):
    """A web origin (RFC 6454): scheme, host (lower case), port (explicit or the scheme's default)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS.get(self.scheme)
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


@dataclass(frozen=True)
class PeerInfo:
    """A peer as the services use it (a plain value: safe to hand to threads and jobs)."""

    name: str
    dicomweb_url: str
    fhir_url: str | None
    auth: str  # "smart-backend" or "relay"
    client_id: str | None
    scope: str
    token_url: str | None
    allow_private: bool
    timeout: float | None

    @property
    def origin(self) -> Origin:
        """The one origin this peer is trusted at (that of its DICOMweb root)."""
        return origin_of(self.dicomweb_url)

    @property
    def base_url(self) -> str:
        """The peer's base URL: its FHIR root without ``/fhir``, its DICOMweb root without
        ``/dicom-web``, or else its origin (drimhub's layout, ARCHITECTURE §3)."""
        if self.fhir_url and self.fhir_url.endswith("/fhir"):
            return self.fhir_url[: -len("/fhir")]
        if self.dicomweb_url.endswith("/dicom-web"):
            return self.dicomweb_url[: -len("/dicom-web")]
        return str(self.origin)


# --- URL and address rules ------------------------------------------------------------------


def origin_of(url: str) -> Origin:
    """The origin of an absolute http(s) URL.

    Raises
    ------
    InvalidRequest
        ``url`` is not an absolute http or https URL with a host and a valid port.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"not a valid URL: {url!r}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not parts.hostname:
        raise InvalidRequest(f"only absolute http and https URLs are accepted, not {url!r}")
    return Origin(scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme])


def address_refused(address: str) -> str | None:
    """Why a peer may not be reached at the IP ``address`` without ``allow_private`` (``"a loopback
    address"``...); None if it may.

    Unspecified, loopback, link-local (169.254.0.0/16, fe80::/10), multicast, private and reserved
    addresses are refused, as is every address that is not globally reachable. An IPv6 address
    that carries an IPv4 address (IPv4-mapped ``::ffff:0:0/96``, 6to4 ``2002::/16``, Teredo
    ``2001::/32``: server and client) is refused when that IPv4 address is.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # judged as the IPv4 address it is
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.sixtofour, *(ip.teredo or ())]
        for inner in (v4 for v4 in embedded if v4 is not None):
            reason = address_refused(str(inner))
            if reason:
                return f"an IPv6 address carrying {reason}"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return "not a globally reachable address"
    return None


def resolve(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to (an IP literal: itself).

    Raises
    ------
    OSError
        The name does not resolve.
    """
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def host_refused(host: str, port: int) -> str | None:
    """Why ``host`` may not be reached without ``allow_private`` (it is, or resolves to, a refused
    address); None when every address it resolves to is public, or when it does not resolve now
    (it is checked again, with its addresses then, before each connection)."""
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        return None
    for address in addresses:
        reason = address_refused(address)
        if reason:
            return f"{address} is {reason}" if address == host.strip("[]") else f"{host} resolves to {address}, {reason}"
    return None


def check_url(url: str, *, allow_private: bool, what: str = "URL") -> str:
    """``url`` without a trailing ``/``, if a peer may be reached there.

    Absolute http(s), no user information, no query, no fragment; https unless
    ``allow_private``; and without ``allow_private`` a host that is not (and does not resolve to)
    a loopback, link-local, private, unspecified, multicast or reserved address.

    Raises
    ------
    InvalidRequest
        The URL breaks one of these rules.
    """
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{what} is required")
    if len(url) > MAX_URL or _FORBIDDEN_URL_CHARS.search(url):
        raise InvalidRequest(f"{what} is not a valid URL (at most {MAX_URL} characters, no spaces or controls)")
    origin = origin_of(url)
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidRequest(f"{what} must not carry credentials")
    if parts.fragment or "#" in url:
        raise InvalidRequest(f"{what} must not have a fragment")
    if parts.query or "?" in url:
        raise InvalidRequest(f"{what} must not have a query")
    if not allow_private:
        if origin.scheme != "https":
            raise InvalidRequest(f"{what} must use https (plain http only with allow_private)")
        reason = host_refused(origin.host, origin.port)
        if reason:
            raise InvalidRequest(f"{what} refused: {reason} (allowed only with allow_private)")
    return url.rstrip("/")


# --- peers ------------------------------------------------------------------------------------


def add_peer(session: Session, name: str, base_url: str, *, client_id: str | None = None, scope: str = "",
             auth: str = "smart-backend", dicomweb_url: str | None = None, fhir_url: str | None = None,
             token_url: str | None = None, allow_private: bool = False, timeout: float | None = None) -> PeerInfo:
    """Trust a new peer.

    Parameters
    ----------
    session : Session
        A write session (the caller commits).
    name : str
        Its name (:data:`NAME`), unique.
    base_url : str
        Its base URL; ``dicomweb_url`` defaults to ``BASE/dicom-web`` and ``fhir_url`` to ``BASE/fhir``.
        Both must be on the base URL's origin.
    client_id : str, optional
        This node's client id at the peer (required for ``smart-backend``).
    scope : str
        Scopes asked for at the peer's token endpoint (``smart-backend``).
    auth : str
        ``smart-backend`` or ``relay``.
    token_url : str, optional
        The peer's token endpoint (default: discovered from its SMART configuration). It may be on
        another origin: it only receives client assertions, never a token.
    allow_private : bool
        The peer may be on a loopback, link-local or private address, or over plain http.
    timeout : float, optional
        Seconds each call to the peer may wait (default: ``DRIMHUB_PEER_TIMEOUT``).

    Raises
    ------
    InvalidRequest
        A value breaks the rules above.
    Conflict
        A peer of that name exists.
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRequest("a peer name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if auth not in AUTH_METHODS:
        raise InvalidRequest(f"auth must be one of {', '.join(AUTH_METHODS)}")
    if auth == "smart-backend" and not client_id:
        raise InvalidRequest("a smart-backend peer needs the client id this node was registered with there")
    if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= 255
                                  or not client_id.isprintable()):
        raise InvalidRequest("client_id must be 1 to 255 printable characters")
    if not isinstance(scope, str) or len(scope) > 1024 or not scope.isprintable():
        raise InvalidRequest("scope must be at most 1024 printable characters")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) \
                or not 0 < timeout <= MAX_TIMEOUT:
            raise InvalidRequest(f"timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}")
        timeout = float(timeout)
    base = check_url(base_url, allow_private=allow_private, what="url")
    dicomweb = check_url(dicomweb_url or f"{base}/dicom-web", allow_private=allow_private, what="dicomweb_url")
    fhir = check_url(fhir_url or f"{base}/fhir", allow_private=allow_private, what="fhir_url")
    for what, url in (("dicomweb_url", dicomweb), ("fhir_url", fhir)):
        if origin_of(url) != origin_of(base):
            raise InvalidRequest(f"{what} must be on the peer's origin {origin_of(base)}")
    token = check_url(token_url, allow_private=allow_private, what="token_url") if token_url else None
    row = Peer(name=name, dicomweb_url=dicomweb, fhir_url=fhir, auth=auth, client_id=client_id,
               scope=" ".join(scope.split()), token_url=token, allow_private=bool(allow_private), timeout=timeout)
    if session.scalar(select(Peer.pk).where(Peer.name == name)) is not None:
        raise Conflict(f"a peer called {name} exists")
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # added concurrently
        raise Conflict(f"a peer called {name} exists") from exc
    return _info(row)


def list_peers(session: Session) -> list[PeerInfo]:
    """Every peer, by name."""
    return [_info(row) for row in session.scalars(select(Peer).order_by(Peer.name))]


def get_peer(session: Session, name: str) -> PeerInfo:
    """The peer called ``name``; :class:`~drimhub.errors.NotFound` if none."""
    return _info(_row(session, name))


def remove_peer(session: Session, name: str) -> None:
    """Stop trusting the peer called ``name``; :class:`~drimhub.errors.NotFound` if none."""
    session.delete(_row(session, name))
    from drimhub.federation.cache import expire_copies  # here: the cache module imports this one

    expire_copies(session, name)  # its cached copies expire now (purged, no longer served)
    session.flush()


def peer_json(peer: PeerInfo) -> dict[str, Any]:
    """The API form of a peer (``GET /api/peers``); never a secret."""
    return {
        "name": peer.name, "url": peer.base_url, "dicomweb_url": peer.dicomweb_url, "fhir_url": peer.fhir_url,
        "auth": peer.auth, "client_id": peer.client_id, "scope": peer.scope, "token_url": peer.token_url,
        "allow_private": peer.allow_private, "timeout": peer.timeout,
    }


def _row(session: Session, name: str) -> Peer:
    row = session.scalar(select(Peer).where(Peer.name == name)) if isinstance(name, str) else None
    if row is None:
        raise NotFound(f"no peer called {name}")
    return row


def _info(row: Peer) -> PeerInfo:
    return PeerInfo(name=row.name, dicomweb_url=row.dicomweb_url, fhir_url=row.fhir_url, auth=row.auth,
                    client_id=row.client_id, scope=row.scope or "", token_url=row.token_url,
                    allow_private=bool(row.allow_private), timeout=row.timeout)
