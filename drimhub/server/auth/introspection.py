"""Token introspection (RFC 7662) and revocation (RFC 7009) over the node's own tokens.

Access tokens are JWTs signed by the node: they are recognised by their signature and ``iss``
and revoked by ``jti`` (a :class:`RevokedToken` row until their ``exp``). Refresh tokens are
opaque and found by digest. A token of another issuer, or with a bad signature, is unknown:
introspection answers ``{"active": false}`` (RFC 7662 §2.2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from drimhub.errors import Unauthorized
from drimhub.server.auth.clients import AUTH_METHODS, PUBLIC, digest
from drimhub.server.auth.keys import ALGORITHM
from drimhub.server.auth.protect import is_revoked
from drimhub.server.db import get_session, resources
from drimhub.sharing.grants import capability_grant
from drimhub.store.engine import write_session
from drimhub.store.security import RefreshToken, RevokedToken, User


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; every stored datetime is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class AccessRecord:
    """An access token issued by this node, from its verified claims."""

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims

    def check_client(self, client: Any) -> bool:
        return bool(self.claims.get("client_id") == client.get_client_id())

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def is_expired(self) -> bool:
        return float(self.claims.get("exp", 0)) <= time.time()

    def is_revoked(self) -> bool:
        jti = self.claims.get("jti")
        return jti is not None and is_revoked(get_session(), str(jti))

    def introspection(self) -> dict[str, Any]:
        """RFC 7662 §2.2 members, plus ``org`` and SMART's launch context ``patient``.

        A share link's capability (claim ``share``) is active only while its grant is
        (:func:`drimhub.sharing.grants.capability_grant`: not revoked, not expired), and the answer
        carries ``share`` and ``study``: its scope alone would read as the whole organisation's.
        """
        names = ("scope", "client_id", "sub", "org", "exp", "iat", "iss", "aud", "jti", "patient", "share")
        answer = {name: self.claims[name] for name in names if name in self.claims}
        if "share" in self.claims:
            try:
                grant = capability_grant(get_session(), str(self.claims["share"]), str(self.claims.get("jti")))
            except Unauthorized:
                return {"active": False}
            answer["study"] = grant.study_uid
        return {"active": True, "token_type": "Bearer", **answer}

    def revoke(self) -> None:
        """Refuse the token until it expires (RFC 7009 §2.1), by ``jti``."""
        if self.is_expired():
            return
        now = datetime.now(UTC)
        try:
            with write_session(resources().sessions) as session:
                session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
                session.add(RevokedToken(jti=str(self.claims["jti"]),
                                         expires_at=datetime.fromtimestamp(float(self.claims["exp"]), UTC)))
        except IntegrityError:
            pass  # revoked already


class RefreshRecord:
    """A stored refresh token."""

    def __init__(self, row: RefreshToken) -> None:
        self.row = row

    def check_client(self, client: Any) -> bool:
        return bool(self.row.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.row.scope

    def is_expired(self) -> bool:
        return _aware(self.row.expires_at) <= datetime.now(UTC)

    def is_revoked(self) -> bool:
        return bool(self.row.revoked)

    def introspection(self) -> dict[str, Any]:
        user = get_session().get(User, self.row.user_pk) if self.row.user_pk is not None else None
        if user is None or not user.active:
            return {"active": False}
        return {"active": True, "scope": self.row.scope, "client_id": self.row.client_id, "sub": user.username,
                "org": user.org, "exp": int(_aware(self.row.expires_at).timestamp())}

    def revoke(self) -> None:
        with write_session(resources().sessions) as session:
            session.execute(update(RefreshToken).where(RefreshToken.pk == self.row.pk).values(revoked=True))


def decode_access_token(token: str, key: RSAKey, issuer: str) -> AccessRecord | None:
    """The claims of an access token this node signed for ``issuer``, or None.

    Expiry is not checked here: an expired token is still *ours* (introspection answers
    inactive, revocation has nothing to do).
    """
    try:
        decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
    except (JoseError, ValueError):
        return None
    if decoded.header.get("typ") != "at+jwt" or decoded.claims.get("iss") != issuer:  # RFC 9068 §4
        return None
    if not isinstance(decoded.claims.get("jti"), str) or not isinstance(decoded.claims.get("exp"), int | float):
        return None
    return AccessRecord(decoded.claims)


def find_refresh_token(token: str) -> RefreshRecord | None:
    """The stored refresh token ``token`` (found by digest), revoked and expired ones included."""
    row = get_session().scalar(select(RefreshToken).where(RefreshToken.token_hash == digest(token)))
    return RefreshRecord(row) if row else None


def find_token(token: str, hint: str | None, key: RSAKey, issuer: str) -> AccessRecord | RefreshRecord | None:
    """The token, looked up first as the hinted type then as the other (RFC 7009 §2.1)."""
    lookups: list[Callable[[], AccessRecord | RefreshRecord | None]] = [
        lambda: decode_access_token(token, key, issuer), lambda: find_refresh_token(token)]
    if hint == "refresh_token":
        lookups.reverse()
    for lookup in lookups:
        record = lookup()
        if record is not None:
            return record
    return None


class _TokenLookup:
    """What both endpoints share: how to find a token of this node."""

    def __init__(self, issuer: Callable[[], str], key: Callable[[], RSAKey]) -> None:
        super().__init__(None)  # type: ignore[call-arg]
        self._issuer, self._key = issuer, key

    def query_token(self, token_string: str, token_type_hint: str | None) -> AccessRecord | RefreshRecord | None:
        return find_token(token_string, token_type_hint, self._key(), self._issuer())


class Introspection(_TokenLookup, IntrospectionEndpoint):  # type: ignore[misc]
    """``/oauth/introspect``: any registered confidential client may ask (RFC 7662 §2.1)."""

    CLIENT_AUTH_METHODS = AUTH_METHODS

    def check_permission(self, token: Any, client: Any, request: Any) -> bool:
        return True  # resource servers (peers, gateways) introspect tokens issued to others

    def introspect_token(self, token: AccessRecord | RefreshRecord) -> dict[str, Any]:
        return token.introspection()


class Revocation(_TokenLookup, RevocationEndpoint):  # type: ignore[misc]
    """``/oauth/revoke``: a client revokes its own tokens; public clients too (RFC 7009 §2.1)."""

    CLIENT_AUTH_METHODS = [*AUTH_METHODS, PUBLIC]

    def revoke_token(self, token: AccessRecord | RefreshRecord, request: Any) -> None:
        token.revoke()
