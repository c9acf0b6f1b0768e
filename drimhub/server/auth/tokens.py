"""Access tokens of this node: JWTs in the RFC 9068 profile, signed with the node's key."""

from __future__ import annotations

import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from drimhub.server.auth.keys import ALGORITHM

#: Longest access token lifetime (SMART App Launch 2.x: expires_in SHOULD NOT exceed 300 s).
MAX_TTL = 300


def access_token_claims(*, issuer: str, audience: str, subject: str, client_id: str, scope: str, org: str,
                        ttl: int = MAX_TTL, patient: str | None = None, extra: dict[str, Any] | None = None,
                        now: int | None = None) -> dict[str, Any]:
    """The claims of an access token (RFC 9068 §2.2 plus ``org`` and SMART's ``patient``)."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer, "sub": subject, "aud": audience, "client_id": client_id, "scope": scope, "org": org,
        "iat": issued, "exp": issued + ttl, "jti": uuid.uuid4().hex,
    }
    if patient:
        claims["patient"] = patient
    if extra:
        claims.update(extra)
    return claims


def sign(claims: dict[str, Any], key: RSAKey) -> str:
    """A JWS compact token of ``claims``; header ``typ: at+jwt`` (RFC 9068 §2.1)."""
    return jwt.encode({"alg": ALGORITHM, "typ": "at+jwt", "kid": key.kid}, claims, key, algorithms=[ALGORITHM])
