"""Resource protection: the caller of a request, from its bearer token (RFC 6750, RFC 9068, RFC 7662).

An Authlib :class:`~authlib.integrations.flask_oauth2.ResourceProtector` with one bearer
validator, :class:`NodeTokenValidator`, which accepts:

- **this node's tokens**: a JWS signed with the node key (RS384 only), header ``typ`` ``at+jwt``
  (RFC 9068 §4), ``iss`` the node's issuer, ``aud`` naming the node (its base URL, or its
  ``/fhir`` or ``/dicom-web`` root, the ``aud`` a SMART app names), ``exp`` in the future, and a
  ``jti`` that is not revoked (``oauth_revoked_token``). Only these may be a share link's
  capability (claim ``share``: :attr:`Principal.share`; the policy checks its grant);
- **JWTs of a trusted issuer** (``DRIMHUB_TRUSTED_ISSUERS`` ``ISSUER=JWKS_URL``): signed by a key
  of the issuer's JWKS, fetched and cached per process, keyed by ``kid``; an unknown ``kid``
  refetches the set at most once a minute per issuer. Same ``iss``, ``aud`` and ``exp`` checks;
- **tokens of an introspection issuer** (``ISSUER=introspect:URL``; credentials for the
  introspection endpoint, when it needs them, go in the URL: ``introspect:https://ID:SECRET@host/…``):
  an RFC 7662 request, ``active`` must be true; an active answer is cached, keyed by the SHA-256
  of the token, never past the token's ``exp`` nor more than :data:`INTROSPECTION_CACHE_MAX`
  seconds. A JWT goes to the issuer its ``iss`` names; an opaque token only when exactly one
  introspection issuer is configured.

An item may end with ``;org=ORG`` (every token of that issuer acts for organisation ORG; one
naming another organisation is refused; ORG may not be a reserved ``peer:`` organisation) or
``;org-claim=CLAIM`` (the organisation is in claim CLAIM rather than ``org``): Pro Santé Connect
tokens, for one, carry no ``org``.

Never accepted: ``alg: none`` and HMAC algorithms (:data:`ALGORITHMS`), a token without an
organisation (every token acts for one: an ``org`` claim, or an issuer's mapping), a token acting
for an organisation reserved for peers' cached copies (``peer:...``, :func:`drimhub.store.access.check_org`).

The accepted token itself is kept for the request (:func:`current_token`): the federation relays
it to ``relay`` peers when an external issuer both nodes trust issued it (:func:`relayable_token`).
An issuer that cannot be reached is a 502, not a 401: the client's token may well be valid.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import requests
from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2.rfc6749 import MissingAuthorizationError, OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from flask import Flask, current_app, g
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from drimhub.server import urls
from drimhub.server.auth.keys import ALGORITHM
from drimhub.server.auth.principal import Principal
from drimhub.server.auth.scopes import parse_scopes
from drimhub.server.db import get_session, resources
from drimhub.errors import DrimhubError, PeerUnavailable, Unauthorized
from drimhub.store.access import check_org
from drimhub.store.security import RevokedToken

REALM = "drimhub"
#: Signature algorithms accepted from trusted issuers (asymmetric only; never none nor HS*).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: Clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (seconds).
LEEWAY = 30
#: Longest time an active introspection answer is reused (seconds).
INTROSPECTION_CACHE_MAX = 300
#: Shortest time between two fetches of one issuer's JWKS (seconds).
JWKS_MIN_REFRESH = 60
HTTP_TIMEOUT = 5
_EXT = "drimhub.protect"
_TRUSTED = "drimhub.trusted_issuers"


#: The revocation check, built once: a Core SELECT on the unique (indexed) ``jti`` column.
_REVOKED = (select(RevokedToken.__table__.c.pk).where(RevokedToken.__table__.c.jti == bindparam("jti"))
            .limit(1))


def is_revoked(session: Session, jti: str) -> bool:
    """True when the access token ``jti`` was revoked (a row of ``oauth_revoked_token``).

    Run on the request's read session (the request's first query opens its transaction).
    """
    return session.connection().execute(_REVOKED, {"jti": jti}).first() is not None


class TokenRejected(Exception):
    """The token is not acceptable; the message says why (it goes into ``error_description``)."""


# --- the node's identity ------------------------------------------------------------------

def node_audiences() -> list[str]:
    """The ``aud`` values that name this node."""
    base = urls.base_url()
    return [base, f"{base}/fhir", f"{base}/dicom-web"]


# --- trusted issuers ----------------------------------------------------------------------

@dataclass(frozen=True)
class TrustedIssuer:
    """An external issuer whose tokens this node accepts: by JWKS, or by introspection.

    ``org`` pins the organisation every token of the issuer acts for (a hospital's own IdP whose
    tokens carry none); ``org_claim`` names the claim that holds it instead of ``org``.
    """

    issuer: str
    jwks_url: str | None = None
    introspection_url: str | None = None
    credentials: tuple[str, str] | None = None
    org: str | None = None
    org_claim: str = "org"


#: Options after ``;`` in a ``TRUSTED_ISSUERS`` item, and the :class:`TrustedIssuer` field each sets.
_ISSUER_OPTIONS = {"org": "org", "org-claim": "org_claim"}
_SYNTAX = "ISSUER=JWKS_URL or ISSUER=introspect:URL, optionally followed by ;org=ORG or ;org-claim=CLAIM"


def parse_trusted_issuers(value: str) -> dict[str, TrustedIssuer]:
    """Parse ``TRUSTED_ISSUERS``: items separated by spaces or commas, each
    ``ISSUER=JWKS_URL`` or ``ISSUER=introspect:URL``, optionally followed by ``;org=ORG`` (every
    token of the issuer acts for ORG) or ``;org-claim=CLAIM`` (the organisation is in claim CLAIM).

    Raises
    ------
    ValueError
        An item does not follow that syntax.
    """
    trusted: dict[str, TrustedIssuer] = {}
    for item in re.split(r"[\s,]+", value.strip()):
        if not item:
            continue
        issuer, sep, rest = item.partition("=")
        target, *options = rest.split(";")
        if not sep or not issuer or not target:
            raise ValueError(f"DRIMHUB_TRUSTED_ISSUERS: {item!r} is not {_SYNTAX}")
        extra = _issuer_options(item, options)
        if target.startswith("introspect:"):
            url, credentials = _split_credentials(target.removeprefix("introspect:"))
            trusted[issuer] = TrustedIssuer(issuer, introspection_url=url, credentials=credentials, **extra)
        else:
            trusted[issuer] = TrustedIssuer(issuer, jwks_url=target, **extra)
    return trusted


def _issuer_options(item: str, options: list[str]) -> dict[str, Any]:
    """The :class:`TrustedIssuer` fields set by the ``;name=value`` options of ``item``."""
    fields: dict[str, Any] = {}
    for option in options:
        name, _, setting = option.partition("=")
        if name not in _ISSUER_OPTIONS or not setting:
            raise ValueError(f"DRIMHUB_TRUSTED_ISSUERS: {item!r}: {option!r} is not org=ORG nor org-claim=CLAIM")
        if name == "org":
            try:
                check_org(setting)
            except ValueError as exc:
                raise ValueError(f"DRIMHUB_TRUSTED_ISSUERS: {item!r}: {exc}") from None
        fields[_ISSUER_OPTIONS[name]] = setting
    if len(fields) > 1:
        raise ValueError(f"DRIMHUB_TRUSTED_ISSUERS: {item!r}: org and org-claim exclude each other")
    return fields


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.hostname or ""
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=netloc)), (parts.username, parts.password or "")


class JwksCache:
    """Trusted issuers' key sets, per process, refetched when a token names an unknown ``kid``."""

    def __init__(self) -> None:
        self._sets: dict[str, tuple[KeySet, set[str], float]] = {}
        self._lock = threading.Lock()

    def key_set(self, url: str, kid: str | None) -> KeySet:
        """The key set at ``url``, fetched again when ``kid`` is unknown and the copy is old enough."""
        with self._lock:
            cached = self._sets.get(url)
        if cached and (kid is None or kid in cached[1] or time.monotonic() - cached[2] < JWKS_MIN_REFRESH):
            return cached[0]
        try:
            response = requests.get(url, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
            keys = KeySet.import_key_set(document)
        except (requests.RequestException, ValueError, JoseError) as exc:
            raise PeerUnavailable(f"the token issuer's key set could not be fetched: {type(exc).__name__}") from exc
        kids = {str(k.get("kid")) for k in document.get("keys", []) if k.get("kid")}
        with self._lock:
            self._sets[url] = (keys, kids, time.monotonic())
        return keys


class IntrospectionCache:
    """Active RFC 7662 answers, per process, keyed by the token's SHA-256, kept until the token expires."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: dict[str, tuple[dict[str, Any], float]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def lookup(self, token: str, issuer: TrustedIssuer) -> dict[str, Any]:
        """The introspection answer for ``token`` (cached when active)."""
        key = hashlib.sha256(f"{issuer.issuer}\n{token}".encode()).hexdigest()
        now = time.time()
        with self._lock:
            hit = self._entries.get(key)
            if hit and hit[1] > now:
                return hit[0]
        answer = _introspect(token, issuer)
        exp = answer.get("exp")
        if answer.get("active") is True and isinstance(exp, int | float) and exp > now:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
                self._entries[key] = (answer, min(float(exp), now + INTROSPECTION_CACHE_MAX))
        return answer


def _introspect(token: str, issuer: TrustedIssuer) -> dict[str, Any]:
    assert issuer.introspection_url is not None
    try:
        response = requests.post(issuer.introspection_url, timeout=HTTP_TIMEOUT, auth=issuer.credentials,
                                  data={"token": token, "token_type_hint": "access_token"},
                                  headers={"Accept": "application/json"})
        response.raise_for_status()
        answer = orjson.loads(response.content)
    except (requests.RequestException, orjson.JSONDecodeError) as exc:
        raise PeerUnavailable(f"the token issuer's introspection endpoint failed: {type(exc).__name__}") from exc
    if not isinstance(answer, dict):
        raise PeerUnavailable("the token issuer's introspection endpoint answered no JSON object")
    return answer


# --- validation -----------------------------------------------------------------------------

class NodeTokenValidator(BearerTokenValidator):  # type: ignore[misc]
    """Authlib bearer validator: a token string in, a :class:`Principal` out."""

    def __init__(self, trusted: dict[str, TrustedIssuer]) -> None:
        super().__init__(realm=REALM)
        self.trusted = trusted
        self.jwks = JwksCache()
        self.introspection = IntrospectionCache()

    def authenticate_token(self, token_string: str) -> Principal:
        try:
            principal = self._principal(token_string)
        except (TokenRejected, JoseError) as exc:
            raise InvalidTokenError(description=_reason(exc), realm=REALM) from exc
        g.bearer_token = token_string  # the request's accepted token (current_token), never logged
        return principal

    def validate_token(self, token: Principal | None, scopes: Any, request: Any) -> None:
        # expiry and revocation were checked with the signature; scopes are the policy's business
        if token is None:
            raise InvalidTokenError(realm=REALM)

    def _principal(self, token: str) -> Principal:
        if token.count(".") != 2:
            return self._opaque(token)
        try:
            compact = jws.extract_compact(token.encode())
            header, claims = compact.headers(), orjson.loads(compact.payload)
        except (JoseError, orjson.JSONDecodeError, ValueError) as exc:
            raise TokenRejected("the token is not a well-formed JWT") from exc
        if header.get("alg") not in ALGORITHMS or not isinstance(claims, dict):
            raise TokenRejected(f"signature algorithm {str(header.get('alg'))[:16]!r} is not accepted")
        issuer = claims.get("iss")
        if issuer == urls.issuer():
            return self._own(token)
        trusted = self.trusted.get(issuer) if isinstance(issuer, str) else None
        if trusted is None:
            raise TokenRejected("the token's issuer is not trusted by this node")
        if trusted.introspection_url:
            return self._introspected(token, trusted)
        keys = self.jwks.key_set(str(trusted.jwks_url), header.get("kid"))
        verified = jwt.decode(token, keys, algorithms=list(ALGORITHMS))
        _claims_registry(trusted.issuer).validate(verified.claims)
        return _to_principal(verified.claims, trusted.issuer, token, trusted)

    def _own(self, token: str) -> Principal:
        verified = jwt.decode(token, resources().signing_key, algorithms=[ALGORITHM])
        if str(verified.header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise TokenRejected("not an access token (typ must be at+jwt)")
        _claims_registry(urls.issuer(), jti=True).validate(verified.claims)
        jti = str(verified.claims["jti"])
        if is_revoked(get_session(), jti):
            raise TokenRejected("the token was revoked")
        return _to_principal(verified.claims, urls.issuer(), token)

    def _opaque(self, token: str) -> Principal:
        introspecting = [t for t in self.trusted.values() if t.introspection_url]
        if len(introspecting) != 1:
            raise TokenRejected("the token is not a JWT, and no single introspection issuer is configured")
        return self._introspected(token, introspecting[0])

    def _introspected(self, token: str, trusted: TrustedIssuer) -> Principal:
        answer = self.introspection.lookup(token, trusted)
        if answer.get("active") is not True:
            raise TokenRejected("the token is not active (introspection)")
        claims = {"iss": trusted.issuer, **answer}
        options = {"iss": {"essential": True, "value": trusted.issuer}, "exp": {"essential": True}}
        if "aud" in answer:
            options["aud"] = {"essential": True, "values": node_audiences()}
        jwt.JWTClaimsRegistry(leeway=LEEWAY, **options).validate(claims)  # type: ignore[arg-type]
        return _to_principal(claims, trusted.issuer, token, trusted)


def _claims_registry(issuer: str, jti: bool = False) -> jwt.JWTClaimsRegistry:
    return jwt.JWTClaimsRegistry(
        leeway=LEEWAY, iss={"essential": True, "value": issuer}, aud={"essential": True, "values": node_audiences()},
        exp={"essential": True}, sub={"essential": True}, jti={"essential": jti})


def _organisation(claims: dict[str, Any], trusted: TrustedIssuer | None) -> str:
    """The organisation a validated token acts for: its ``org`` claim, or as ``trusted`` maps it."""
    claim = trusted.org_claim if trusted else "org"
    named = claims.get(claim)
    if trusted is not None and trusted.org is not None:
        if named not in (None, trusted.org):
            raise TokenRejected(f"the token names another organisation than {trusted.org!r}, its issuer's")
        return trusted.org
    if not isinstance(named, str) or not named:
        raise TokenRejected(f"the token names no organisation (claim {claim})")
    try:
        return check_org(named)
    except ValueError as exc:
        raise TokenRejected(str(exc)) from None


def _to_principal(claims: dict[str, Any], issuer: str, token: str, trusted: TrustedIssuer | None = None) -> Principal:
    """The caller a validated token describes (``trusted``: the external issuer that vouched for it)."""
    org = _organisation(claims, trusted)
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    client_id = claims.get("client_id") or claims.get("azp")
    patient = claims.get("patient")
    jti = claims.get("jti")
    share = claims.get("share") if trusted is None else None  # a share link's capability: this node's only
    return Principal(
        sub=str(claims.get("sub") or client_id or ""), org=org, client_id=str(client_id) if client_id else None,
        scopes=parse_scopes(str(scope)), issuer=issuer, token_ref=str(jti) if jti else token[-32:],
        patient=str(patient) if patient else None, expires_at=int(claims["exp"]) if "exp" in claims else None,
        share=str(share) if share else None)


def _reason(exc: Exception) -> str:
    """A short reason for ``error_description``."""
    if isinstance(exc, TokenRejected):
        return str(exc)
    names = {"ExpiredTokenError": "the token has expired", "BadSignatureError": "the token's signature is invalid"}
    if type(exc).__name__ in names:
        return names[type(exc).__name__]
    claim = getattr(exc, "claim", None)
    if claim:
        return f"claim {claim!r} is missing or invalid"
    return f"the token was refused: {getattr(exc, 'error', type(exc).__name__)}"


# --- entry points ---------------------------------------------------------------------------

def www_authenticate(error: str | None = None, description: str | None = None) -> str:
    """A ``WWW-Authenticate`` value (RFC 6750 §3): ``Bearer realm="drimhub"`` plus the error, if any."""
    value = f'Bearer realm="{REALM}"'
    if error:
        value += f', error="{error}"'
    if description:  # RFC 6750 §3: %x20-21 / %x23-5B / %x5D-7E only
        value += ', error_description="{}"'.format(re.sub(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]', "?", description))
    return value


def authenticate() -> Principal:
    """The caller of the current request.

    Raises
    ------
    Unauthorized
        No bearer token, or one that is malformed, expired, revoked, of an unknown issuer, for
        another audience, with a bad signature or ``alg: none``; carries ``WWW-Authenticate``.
    PeerUnavailable
        The token's issuer could not be asked (JWKS or introspection endpoint down).
    """
    protector: ResourceProtector = current_app.extensions[_EXT]
    try:
        token: Principal = protector.acquire_token()
        return token
    except MissingAuthorizationError:
        raise Unauthorized("a bearer token is required (Authorization: Bearer ...)",
                           www_authenticate=www_authenticate(), oauth_error="unauthorized") from None
    except OAuth2Error as exc:  # InvalidTokenError, UnsupportedTokenTypeError
        description = exc.description if isinstance(exc, InvalidTokenError) else "not a bearer token"
        raise Unauthorized(description, www_authenticate=www_authenticate("invalid_token", description),
                           oauth_error="invalid_token") from None


def current_token() -> str | None:
    """The bearer token accepted for the current request (None before :func:`authenticate`)."""
    token: str | None = g.get("bearer_token")
    return token


def relayable_token(principal: Principal) -> str | None:
    """The current request's token, if it may be relayed to a peer; else None.

    Only a token of an external issuer in ``TRUSTED_ISSUERS`` (one the peer can trust too) is
    relayed: never this node's own tokens (signed with its key, for it alone).
    """
    trusted: dict[str, TrustedIssuer] = current_app.extensions[_TRUSTED]
    if principal.issuer == urls.issuer() or principal.issuer not in trusted:
        return None
    return current_token()


def init_app(app: Flask) -> None:
    """Build the app's resource protector from ``TRUSTED_ISSUERS``."""
    try:
        trusted = parse_trusted_issuers(app.config["TRUSTED_ISSUERS"] or "")
    except ValueError as exc:
        raise DrimhubError(str(exc)) from exc
    protector = ResourceProtector()
    protector.register_token_validator(NodeTokenValidator(trusted))
    app.extensions[_EXT] = protector
    app.extensions[_TRUSTED] = trusted
