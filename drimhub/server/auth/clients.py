"""The OAuth2 client registry: registration, secrets, client public keys, scope narrowing.

A client is one of

* a backend service (RIS, PACS, a peer node): ``client_credentials`` with ``private_key_jwt``
  (SMART Backend Services), its public keys registered inline (a JWKS) or by URL, or with a
  client secret (``client_secret_basic`` / ``client_secret_post``);
* an app used by professionals (``authorization_code`` + ``refresh_token``): confidential
  (secret or keys) or public (``none``, PKCE only), recognised by its redirect URIs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session

from drimhub.server.auth.scopes import ResourceScope, parse_scopes
from drimhub.errors import InvalidRequest
from drimhub.store.access import check_org
from drimhub.store.security import OAuthClient

#: Organisation of a client or user registered without one.
DEFAULT_ORG = "local"
PRIVATE_KEY_JWT = "private_key_jwt"
SECRET_BASIC = "client_secret_basic"
SECRET_POST = "client_secret_post"
PUBLIC = "none"
#: A client registered with a secret may send it either way (RFC 6749 §2.3.1).
SECRET_METHODS = (SECRET_BASIC, SECRET_POST)
#: Client authentication methods of confidential clients at the token, introspection and
#: revocation endpoints (public clients add ``none`` where they may use it).
AUTH_METHODS = [PRIVATE_KEY_JWT, SECRET_BASIC, SECRET_POST]
#: Key types that can verify the assertion algorithms SMART Backend Services names.
_KEY_TYPES = {"RS384": "RSA", "ES384": "EC"}


def digest(value: str) -> str:
    """SHA-256 hex digest of a random secret (client secret, code, refresh token)."""
    return hashlib.sha256(value.encode()).hexdigest()


def create_client(session: Session, name: str, scope: str, *, org: str = DEFAULT_ORG,
                  jwks: dict[str, Any] | None = None, jwks_url: str | None = None, secret: bool = False,
                  redirect_uris: Iterable[str] = ()) -> tuple[OAuthClient, str | None]:
    """Register a client; the caller commits.

    Parameters
    ----------
    session : Session
        A write session.
    name, scope, org : str
        Display name, the scopes it may be granted (space-separated) and its organisation.
    jwks, jwks_url : dict or str, optional
        Its public keys (``private_key_jwt``): a JWKS document, or where to fetch one.
    secret : bool
        Give it a client secret (returned once, stored as a digest).
    redirect_uris : iterable of str
        Redirect URIs: the client is an app (authorization code); none means a backend service.

    Returns
    -------
    (OAuthClient, str or None)
        The row and, with ``secret``, the secret in clear.

    Raises
    ------
    InvalidRequest
        Contradictory or invalid registration data, or an organisation reserved for cached copies.
    """
    check_organisation(org)
    uris = [u for u in redirect_uris if u]
    _check_registration(jwks, jwks_url, secret, uris)
    clear = secrets.token_urlsafe(32) if secret else None
    method = PRIVATE_KEY_JWT if (jwks or jwks_url) else SECRET_BASIC if secret else PUBLIC
    row = OAuthClient(
        client_id=uuid.uuid4().hex, name=name, org=org or DEFAULT_ORG, scope=" ".join(scope.split()),
        auth_method=method, secret_hash=digest(clear) if clear else None,
        jwks=json.dumps(public_jwks(jwks)) if jwks else None, jwks_url=jwks_url,
        redirect_uris=" ".join(uris),
        grant_types="authorization_code refresh_token" if uris else "client_credentials",
    )
    session.add(row)
    session.flush()
    return row, clear


def _check_registration(jwks: dict[str, Any] | None, jwks_url: str | None, secret: bool, uris: list[str]) -> None:
    if sum(map(bool, (jwks, jwks_url, secret))) > 1:
        raise InvalidRequest("give at most one of a JWKS, a JWKS URL or a secret")
    if not (jwks or jwks_url or secret or uris):
        raise InvalidRequest("a backend client needs a JWKS, a JWKS URL or a secret")
    for uri in uris + ([jwks_url] if jwks_url else []):
        _check_url(uri)


def verify_secret(row: OAuthClient, secret: str) -> bool:
    """True when ``secret`` is the client's secret (constant-time comparison)."""
    return bool(row.secret_hash) and hmac.compare_digest(digest(secret), row.secret_hash or "")


def public_jwks(document: dict[str, Any]) -> dict[str, Any]:
    """The public half of a JWKS document, every key with a ``kid``.

    Raises
    ------
    InvalidRequest
        Not a JWKS, or without a key usable for RS384 or ES384.
    """
    try:
        keyset = KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"not a JWKS document: {exc}") from exc
    keys = [k for k in keyset.keys if k.key_type in _KEY_TYPES.values()]
    if not keys:
        raise InvalidRequest("the JWKS holds no RSA or EC key")
    for key in keys:
        key.ensure_kid()
    return KeySet(keys).as_dict(private=False)  # type: ignore[return-value]


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest(f"not an http(s) URL: {url}")


# --- client public keys ---------------------------------------------------------------------

class JwksCache:
    """JWKS documents fetched from client URLs, kept briefly.

    SMART Backend Services: a JWKS fetched by URL is cached no longer than its
    ``Cache-Control`` allows; an unknown ``kid`` triggers one refetch, at most every
    ``min_refetch`` seconds per URL (a bad assertion cannot make us hammer the client).
    """

    def __init__(self, ttl: float = 300, min_refetch: float = 10, timeout: float = 5,
                 max_bytes: int = 256 * 1024) -> None:
        self.ttl, self.min_refetch, self.timeout, self.max_bytes = ttl, min_refetch, timeout, max_bytes
        self._entries: dict[str, tuple[float, float, KeySet]] = {}  # url -> (fetched, expires, keys)
        self._lock = threading.Lock()

    def get(self, url: str, *, refresh: bool = False) -> KeySet:
        """The key set at ``url``, from the cache when fresh (or refetched recently).

        Raises
        ------
        InvalidRequest
            The URL is not http(s), cannot be fetched, or holds no usable JWKS.
        """
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(url)
        if entry and now < entry[1] and not (refresh and now - entry[0] >= self.min_refetch):
            return entry[2]
        keys, max_age = self._fetch(url)
        with self._lock:
            self._entries[url] = (now, now + min(self.ttl, max_age), keys)
        return keys

    def _fetch(self, url: str) -> tuple[KeySet, float]:
        _check_url(url)
        try:
            with requests.get(url, timeout=self.timeout, stream=True,
                              headers={"Accept": "application/json"}) as resp:
                resp.raise_for_status()
                body = resp.raw.read(self.max_bytes + 1, decode_content=True)
                cache_control = resp.headers.get("Cache-Control", "")
        except requests.RequestException as exc:
            raise InvalidRequest(f"JWKS URL unavailable: {type(exc).__name__}") from exc
        if len(body) > self.max_bytes:
            raise InvalidRequest("JWKS document too large")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise InvalidRequest("JWKS URL did not answer JSON") from exc
        return KeySet.import_key_set(public_jwks(document)), _max_age(cache_control, self.ttl)  # type: ignore[arg-type]

    def clear(self) -> None:
        """Forget every fetched key set."""
        with self._lock:
            self._entries.clear()


def _max_age(cache_control: str, default: float) -> float:
    """Seconds a response may be cached according to its ``Cache-Control`` (RFC 9111 §5.2.2)."""
    value = cache_control.lower()
    if "no-store" in value or "no-cache" in value:
        return 0
    match = re.search(r"max-age=(\d+)", value)
    return float(match.group(1)) if match else default


#: The process' cache of client JWKS fetched by URL.
JWKS_CACHE = JwksCache()


def find_public_key(row: OAuthClient, kid: str | None, alg: str) -> Any:
    """The client key named ``kid`` that can verify ``alg``, or None.

    SMART Backend Services: the key is found by ``kid`` (and its type, ``kty``) in the JWKS
    registered inline or at the client's JWKS URL; an unknown ``kid`` refetches the URL once.
    """
    kty = _KEY_TYPES.get(alg)
    if not kid or not kty:
        return None
    if row.jwks:
        return _pick(KeySet.import_key_set(json.loads(row.jwks)), kid, kty)
    if not row.jwks_url:
        return None
    key = _pick(JWKS_CACHE.get(row.jwks_url), kid, kty)
    return key or _pick(JWKS_CACHE.get(row.jwks_url, refresh=True), kid, kty)


def _pick(keys: KeySet, kid: str, kty: str) -> Any:
    return next((k for k in keys.keys if k.kid == kid and k.key_type == kty), None)


# --- scopes ---------------------------------------------------------------------------------

def narrow_scope(requested: str | None, allowed: str, contexts: tuple[str, ...], *,
                 keep_other: bool = False) -> str:
    """The scopes granted: each requested scope as far as ``allowed`` covers it.

    RFC 6749 §3.3: the server may grant fewer scopes than requested, and uses the allowed
    ones when none is requested. A clinical scope (SMART App Launch 2.x) is granted with the
    permission letters the allowed scopes of the same context give on its resource; a granular
    scope (``?param=value``) and any other scope (``offline_access``…) only when allowed as
    they are, or always with ``keep_other``. Clinical scopes of other ``contexts`` are dropped
    (backend clients get ``system/`` scopes, professionals ``user/`` scopes).
    """
    allowed_words = set(allowed.split())
    coverage = parse_scopes(" ".join(w for w in allowed.split() if "?" not in w)).clinical
    granted: dict[str, None] = {}
    for word in (requested if requested is not None and requested.strip() else allowed).split():
        parsed = parse_scopes(word).clinical
        if not parsed:
            if word in allowed_words or keep_other:
                granted[word] = None
            continue
        wanted = parsed[0]
        if wanted.context not in contexts:
            continue
        if word in allowed_words:
            granted[word] = None
            continue
        if "?" in word:
            continue
        granted.update(dict.fromkeys(_covered(wanted, coverage)))
    return " ".join(granted)


def _covered(wanted: ResourceScope, coverage: tuple[ResourceScope, ...]) -> list[str]:
    """The v2 scopes giving what ``coverage`` allows of ``wanted`` (``*`` expands to the allowed types)."""
    letters: dict[str, set[str]] = {}
    for have in coverage:
        if have.context == wanted.context and (have.resource == "*" or wanted.resource in ("*", have.resource)):
            resource = wanted.resource if have.resource == "*" else have.resource
            letters.setdefault(resource, set()).update(have.permissions & wanted.permissions)
    return [f"{wanted.context}/{resource}.{''.join(c for c in 'cruds' if c in perms)}"
            for resource, perms in letters.items() if perms]


def check_organisation(org: str) -> None:
    """InvalidRequest for an organisation reserved for peers' cached copies (``peer:...``)."""
    try:
        check_org(org or DEFAULT_ORG)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
