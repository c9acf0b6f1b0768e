"""``private_key_jwt`` client authentication (RFC 7523 §2.2, SMART Backend Services).

Authlib's :class:`JWTBearerClientAssertion` does the protocol; this module adds what SMART
requires of it: RS384 or ES384 only, the key found by ``kid`` in the client's registered JWKS
or JWKS URL, ``exp`` at most five minutes ahead, and a ``jti`` never accepted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from flask import request
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from drimhub.server.auth.clients import PRIVATE_KEY_JWT, find_public_key
from drimhub.server.db import resources
from drimhub.errors import InvalidRequest
from drimhub.store.engine import write_session
from drimhub.store.security import SeenAssertion

#: Algorithms a client assertion may use (SMART Backend Services: servers SHALL support both).
ALGORITHMS = ["RS384", "ES384"]
#: Longest assertion lifetime: ``exp`` no more than five minutes in the future (SMART Backend
#: Services, "Authenticating to the token endpoint").
MAX_ASSERTION_LIFETIME = 300
#: Clock skew tolerated on ``exp`` and ``iat``.
LEEWAY = 30


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """Client authentication by a signed JWT (method ``private_key_jwt``).

    Parameters
    ----------
    audiences : callable
        Returns the accepted ``aud`` values (the token endpoint URL) for the current request.
    """

    CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

    def __init__(self, audiences: Callable[[], list[str]]) -> None:
        super().__init__(validate_jti=True, leeway=LEEWAY)
        self._audiences = audiences

    def __call__(self, query_client: Any, req: Any) -> Any:
        try:
            return super().__call__(query_client, req)
        except InvalidClientError as exc:
            exc.status_code = 401  # RFC 6749 §5.2: a failed client authentication MAY be 401
            raise

    def get_audiences(self) -> list[str]:
        """The ``aud`` an assertion must carry: the token endpoint URL (SMART Backend Services)."""
        return self._audiences()

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        """Verify the signature with RS384/ES384 only, then the claims."""
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ALGORITHMS)
        except JoseError as exc:
            raise InvalidClientError(description=exc.description or exc.error) from exc
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: Any) -> None:
        """Authlib's checks (``iss`` = ``sub``, ``aud``, ``exp``, ``jti``) plus the 5-minute bound."""
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp > time.time() + MAX_ASSERTION_LIFETIME + LEEWAY:
            # SMART Backend Services: exp SHALL be no more than five minutes in the future
            raise InvalidClientError(description="exp is more than five minutes in the future")
        super().verify_claims(claims)

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        """Remember ``jti`` until the assertion expires; False when it was seen before.

        SMART Backend Services: a ``jti`` already seen for this ``iss`` within the maximum
        assertion lifetime SHALL be rejected.
        """
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            return False
        expires = datetime.fromtimestamp(float(claims["exp"]) + LEEWAY, UTC)
        return remember_jti(str(claims["iss"]), jti, expires)

    def resolve_client_public_key(self, client: Any) -> Callable[[Any], Any]:
        """A key resolver for joserfc: the registered key named by the header's ``kid``."""
        row = client.row

        def resolve(obj: Any) -> Any:
            headers = obj.headers()
            try:
                key = find_public_key(row, headers.get("kid"), str(headers.get("alg")))
            except InvalidRequest as exc:
                raise InvalidClientError(description=exc.message) from exc
            if key is None:
                raise InvalidKeyIdError(f"no registered key for kid {headers.get('kid')!r} and alg {headers.get('alg')!r}")
            return key

        return resolve


def remember_jti(issuer: str, jti: str, expires: datetime) -> bool:
    """Record an assertion ``jti``; False when already recorded (a replay).

    Expired records are purged on the way: they cannot be replayed, their ``exp`` has passed.
    """
    try:
        with write_session(resources().sessions) as session:
            session.execute(delete(SeenAssertion).where(SeenAssertion.expires_at < datetime.now(UTC)))
            session.add(SeenAssertion(issuer=issuer, jti=jti, expires_at=expires))
    except IntegrityError:
        return False
    return True


def endpoint_audiences(token_url: str) -> list[str]:
    """``aud`` values accepted: the token endpoint, and the endpoint called (introspection, revocation)."""
    return list(dict.fromkeys([token_url, request.base_url]))
