"""Who is calling: what a validated access token says, in one value."""

from __future__ import annotations

from dataclasses import dataclass

from drimhub.server.auth.scopes import ScopeSet


@dataclass(frozen=True)
class Principal:
    """The caller of one request.

    ``org`` is the organisation the token acts for (claim ``org``); ``patient`` the patient
    context of ``patient/`` scopes (claim ``patient``: a Patient ID, optionally
    ``issuer|id``); ``share`` the grant a share link's capability token stands for;
    ``token_ref`` identifies the token in audit records without revealing it
    (its ``jti``, or the last 32 characters of an opaque token).
    """

    sub: str
    org: str
    client_id: str | None
    scopes: ScopeSet
    issuer: str
    token_ref: str
    patient: str | None = None
    expires_at: int | None = None
    #: Id of the share grant a capability token (share link) was issued for (claim ``share``).
    share: str | None = None
