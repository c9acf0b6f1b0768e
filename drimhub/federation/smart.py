"""SMART Backend Services client: this node's access tokens at a peer's authorization server.

SMART App Launch 2.x "Backend Services" with RFC 7523 client authentication (``private_key_jwt``):
the token endpoint is the peer's configured ``token_url``, or the ``token_endpoint`` of its SMART
configuration (``{base}/.well-known/smart-configuration``, then ``{FHIR base}/.well-known/...``),
which must then be on the peer's own origin. The node asks for ``grant_type=client_credentials``
with a client assertion signed by its own key (RS384, ``kid`` of the key it publishes at
``/oauth/jwks``): ``iss`` = ``sub`` = the client id, ``aud`` = the token endpoint URL, ``exp``
five minutes at most ahead, a random ``jti``. Tokens are cached per process, keyed by (peer name,
token URL, scope, client id), until 30 seconds before they expire.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from drimhub.errors import InvalidRequest, PeerUnavailable
from drimhub.federation.outbound import OutboundRefused, guarded_session, peer_timeout
from drimhub.federation.peers import PeerInfo, check_url, origin_of

#: Algorithm of the client assertions (SMART Backend Services: RS384 or ES384).
ALGORITHM = "RS384"
#: Assertion lifetime in seconds (SMART: ``exp`` no more than five minutes in the future).
ASSERTION_LIFETIME = 300
#: A cached token is dropped this many seconds before it expires.
EXPIRY_MARGIN = 30
#: RFC 7523 §2.2 client assertion type.
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Largest token endpoint answer read (bytes).
MAX_TOKEN_ANSWER = 64 * 1024
#: Where SMART servers publish their configuration, relative to a base (SMART App Launch 2.x).
WELL_KNOWN = "/.well-known/smart-configuration"

_lock = threading.Lock()
#: (peer name, token URL, scope, client id) → (access token, monotonic time it stops being used).
_tokens: dict[tuple[str, str, str, str], tuple[str, float]] = {}
#: (peer name, base URL, FHIR URL) → discovered token endpoint.
_endpoints: dict[tuple[str, str, str | None], str] = {}


def client_assertion(client_id: str, token_url: str, key: RSAKey, *, now: float | None = None) -> str:
    """A signed client assertion for ``token_url`` (RFC 7523 §3, SMART Backend Services)."""
    issued = int(now if now is not None else time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": issued,
              "exp": issued + ASSERTION_LIFETIME, "jti": secrets.token_urlsafe(24)}
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": key.kid}
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM])


def token_endpoint(peer: PeerInfo, *, timeout: float | None = None) -> str:
    """The peer's token endpoint: configured, or discovered (and remembered per process).

    Raises
    ------
    PeerUnavailable
        No SMART configuration could be read, or it has no usable ``token_endpoint``.
    OutboundRefused
        The discovered endpoint is on another origin than the peer (configure it with ``--token-url``).
    """
    if peer.token_url:
        return peer.token_url
    key = (peer.name, peer.base_url, peer.fhir_url)
    with _lock:
        known = _endpoints.get(key)
    if known:
        return known
    found = _discover(peer, timeout or peer_timeout(peer))
    with _lock:
        _endpoints[key] = found
    return found


def _discover(peer: PeerInfo, timeout: float) -> str:
    candidates = [peer.base_url + WELL_KNOWN]
    if peer.fhir_url:
        candidates.append(peer.fhir_url + WELL_KNOWN)
    problems = []
    with guarded_session(peer.origin, allow_private=peer.allow_private, timeout=timeout,
                         max_body=MAX_TOKEN_ANSWER) as session:
        for url in dict.fromkeys(candidates):
            try:
                response = session.get(url, headers={"Accept": "application/json"}, allow_redirects=True)
                document = response.json() if response.status_code == 200 else None
            except (requests.RequestException, ValueError) as exc:
                problems.append(f"{url}: {type(exc).__name__}")
                continue
            endpoint = document.get("token_endpoint") if isinstance(document, dict) else None
            if not isinstance(endpoint, str):
                problems.append(f"{url}: HTTP {response.status_code}, no token_endpoint")
                continue
            try:
                endpoint = check_url(endpoint, allow_private=peer.allow_private, what="token_endpoint")
            except InvalidRequest as exc:
                raise OutboundRefused(f"peer {peer.name}: {exc.message}") from exc
            if origin_of(endpoint) != peer.origin:
                raise OutboundRefused(f"peer {peer.name} names a token endpoint on another origin "
                                      f"({origin_of(endpoint)}); configure it explicitly with --token-url")
            return endpoint
    raise PeerUnavailable(f"peer {peer.name}: no SMART configuration ({'; '.join(problems)})")


def _cache_key(peer: PeerInfo, token_url: str) -> tuple[str, str, str, str]:
    return (peer.name, token_url, peer.scope, peer.client_id or "")


def access_token(peer: PeerInfo, signing_key: RSAKey, *, timeout: float | None = None) -> str:
    """An access token of ``peer`` for this node (cached until 30 s before it expires).

    Raises
    ------
    PeerUnavailable
        The token endpoint cannot be found or reached, or refused the request (its ``error`` is
        in the message; never a secret).
    """
    if not peer.client_id:
        raise PeerUnavailable(f"peer {peer.name} has no client id for SMART backend services")
    seconds = timeout or peer_timeout(peer)
    token_url = token_endpoint(peer, timeout=seconds)
    key = _cache_key(peer, token_url)
    with _lock:
        cached = _tokens.get(key)
    if cached and cached[1] > time.monotonic():
        return cached[0]
    token, lifetime = _request_token(peer, token_url, signing_key, seconds)
    if lifetime is not None and lifetime > EXPIRY_MARGIN:
        with _lock:
            _tokens[key] = (token, time.monotonic() + lifetime - EXPIRY_MARGIN)
    return token


def drop_token(peer: PeerInfo) -> None:
    """Forget the cached tokens of ``peer`` (after it answered 401)."""
    with _lock:
        for key in [k for k in _tokens if k[0] == peer.name]:
            del _tokens[key]


def _request_token(peer: PeerInfo, token_url: str, signing_key: RSAKey, timeout: float) -> tuple[str, float | None]:
    """POST the client credentials grant; the token and its ``expires_in``."""
    assert peer.client_id is not None
    form = {"grant_type": "client_credentials", "scope": peer.scope, "client_assertion_type": JWT_BEARER,
            "client_assertion": client_assertion(peer.client_id, token_url, signing_key)}
    origin = origin_of(token_url)
    try:  # InvalidURL, InvalidSchema... are ValueErrors too: only the sending is in this block
        with guarded_session(origin, allow_private=peer.allow_private, timeout=timeout,
                             max_body=MAX_TOKEN_ANSWER) as session:
            response = session.post(token_url, data=form, headers={"Accept": "application/json"},
                                    allow_redirects=False)
    except (requests.RequestException, ValueError) as exc:
        raise PeerUnavailable(f"peer {peer.name}: token endpoint unreachable ({type(exc).__name__})") from exc
    try:
        body: Any = response.json()
    except ValueError:
        raise PeerUnavailable(f"peer {peer.name}: the token endpoint answered HTTP {response.status_code}, "
                              "not JSON") from None
    if response.status_code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        raise PeerUnavailable(f"peer {peer.name}: the token endpoint refused this node "
                              f"(HTTP {response.status_code}, {str(error)[:64]})")
    token, kind, lifetime = body.get("access_token"), body.get("token_type"), body.get("expires_in")
    if not isinstance(token, str) or not token or str(kind).lower() != "bearer":
        raise PeerUnavailable(f"peer {peer.name}: the token endpoint answered without a bearer access token")
    ok = isinstance(lifetime, int | float) and not isinstance(lifetime, bool)
    return token, float(lifetime) if ok else None
