"""The built-in OAuth2 authorization server: Authlib's Flask server over drimhub's tables.

Grants: ``client_credentials`` (SMART Backend Services), ``authorization_code`` with PKCE S256
(professionals, SMART App Launch 2.x) and rotating ``refresh_token``. Endpoints: RFC 7662
introspection and RFC 7009 revocation. Access tokens are RS384 JWTs in the RFC 9068 profile
(:mod:`drimhub.server.auth.tokens`), valid :data:`tokens.MAX_TTL` seconds.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (AccessDeniedError, ClientMixin, InvalidRequestError, InvalidScopeError,
                                    grants)
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask
from sqlalchemy import delete, select, update

from drimhub.server.auth import introspection, tokens
from drimhub.server.auth.assertion import PrivateKeyJWT, endpoint_audiences
from drimhub.server.auth.clients import (AUTH_METHODS, PRIVATE_KEY_JWT, PUBLIC, SECRET_METHODS, digest,
                                         narrow_scope, verify_secret)
from drimhub.server.auth.scopes import parse_scopes
from drimhub.server.db import get_session, resources
from drimhub.server.urls import base_url, issuer
from drimhub.store.engine import write_session
from drimhub.store.security import AuthorizationCode, OAuthClient, RefreshToken, User

#: Authorization codes live two minutes (RFC 6749 §4.1.2: short, at most 10 minutes).
CODE_TTL = 120
#: Refresh token lifetimes: ``offline_access`` outlives the session, ``online_access`` a workday
#: (SMART App Launch 2.x, "Scopes for requesting a refresh token").
REFRESH_TTL = {"offline_access": timedelta(days=30), "online_access": timedelta(hours=10)}
#: Scope contexts each kind of grant may carry (patient/ needs a patient picker: not offered).
SYSTEM, USER = ("system",), ("user",)


def token_url() -> str:
    """The token endpoint's URL: the ``aud`` of client assertions (SMART Backend Services)."""
    return f"{base_url()}/oauth/token"


class Client(ClientMixin):  # type: ignore[misc]
    """Authlib's view of an :class:`OAuthClient` row."""

    def __init__(self, row: OAuthClient) -> None:
        self.row = row
        self.client_id = row.client_id

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.row.redirect_uris.split()
        return uris[0] if len(uris) == 1 else None  # RFC 6749 §3.1.2.3: required when several

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The ``user/`` scopes an app may obtain of ``scope``; None when nothing is left."""
        return narrow_scope(scope, self.row.scope, USER) or None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.row.redirect_uris.split()  # exact match (RFC 6749 §3.1.2.2)

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_secret(self.row, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.row.auth_method in SECRET_METHODS:
            return method in SECRET_METHODS
        return method == self.row.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and self.check_grant_type("authorization_code")

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.row.grant_types.split()


def query_client(client_id: str | None) -> Client | None:
    """The registered client ``client_id``, or None."""
    if not client_id:
        return None
    row = get_session().scalar(select(OAuthClient).where(OAuthClient.client_id == client_id))
    return Client(row) if row else None


def generate_token(grant_type: str, client: Client, user: User | None = None, scope: str | None = None,
                   expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
    """The token answer: an RFC 9068 JWT access token, and a refresh token when asked for.

    ``sub`` and ``org`` are the user's after a login, the client's for client credentials.
    A refresh token comes with ``offline_access`` or ``online_access`` (SMART App Launch 2.x).
    """
    granted = scope or ""
    claims = tokens.access_token_claims(
        issuer=issuer(), audience=base_url(), subject=user.username if user else client.row.client_id,
        client_id=client.row.client_id, scope=granted, org=user.org if user else client.row.org,
        ttl=tokens.MAX_TTL)
    answer: dict[str, Any] = {"token_type": "Bearer", "access_token": tokens.sign(claims, resources().signing_key),
                              "expires_in": tokens.MAX_TTL, "scope": granted}
    if include_refresh_token and user is not None and set(granted.split()) & REFRESH_TTL.keys():
        answer["refresh_token"] = secrets.token_urlsafe(32)
    return answer


def save_token(token: dict[str, Any], req: Any) -> None:
    """Store the refresh token of ``token`` (as a digest); access tokens are not stored."""
    if "refresh_token" not in token:
        return
    ttl = max(REFRESH_TTL[s] for s in token["scope"].split() if s in REFRESH_TTL)
    now = datetime.now(UTC)
    with write_session(resources().sessions) as session:
        session.execute(delete(RefreshToken).where(RefreshToken.expires_at < now))
        session.add(RefreshToken(token_hash=digest(token["refresh_token"]), client_id=req.client.client_id,
                                 user_pk=req.user.pk, scope=token["scope"], expires_at=now + ttl))


def _active_user(user_pk: int | None) -> User | None:
    user = get_session().get(User, user_pk) if user_pk is not None else None
    return user if user is not None and user.active else None


class BackendServicesGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    """``client_credentials`` for backend services: ``system/`` scopes of the client only."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def validate_requested_scope(self) -> None:
        # RFC 6749 §3.3: grant requested ∩ registered; nothing in common is invalid_scope
        granted = narrow_scope(self.request.payload.scope, self.client.row.scope, SYSTEM)
        if not granted:
            raise InvalidScopeError("none of the requested scopes is registered for this client")
        self.request.scope = granted

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class _Code:
    """Authlib's view of a consumed :class:`AuthorizationCode` row."""

    def __init__(self, row: AuthorizationCode) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


class LoginGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    """``authorization_code`` for professionals logging in at ``/oauth/authorize``."""

    TOKEN_ENDPOINT_AUTH_METHODS = [*AUTH_METHODS, PUBLIC]

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        aud = self.request.payload.data.get("aud")
        base = base_url()
        if aud and aud.rstrip("/") not in (base, f"{base}/fhir", f"{base}/dicom-web"):
            # SMART App Launch 2.x: aud names the resource server; an unknown one is refused
            raise InvalidRequestError("'aud' is not a resource server of this node", redirect_uri=redirect_uri)
        return redirect_uri

    def create_authorization_response(self, redirect_uri: str, grant_user: User | None) -> Any:
        if grant_user is not None:
            # The code carries what both the client and the user may have.
            scope = narrow_scope(self.request.scope, grant_user.scope, USER, keep_other=True)
            if not parse_scopes(scope).clinical:
                raise AccessDeniedError("the user holds none of the requested scopes", redirect_uri=redirect_uri)
            self.request.scope = scope
        return super().create_authorization_response(redirect_uri, grant_user)

    def save_authorization_code(self, code: str, req: Any) -> None:
        data = req.payload.data
        now = datetime.now(UTC)
        with write_session(resources().sessions) as session:
            session.execute(delete(AuthorizationCode).where(AuthorizationCode.expires_at < now))
            session.add(AuthorizationCode(
                code_hash=digest(code), client_id=req.client.client_id, user_pk=req.user.pk,
                redirect_uri=req.payload.redirect_uri or "", scope=req.scope,
                code_challenge=data["code_challenge"], code_challenge_method=data["code_challenge_method"],
                auth_time=int(time.time()), expires_at=now + timedelta(seconds=CODE_TTL)))

    def query_authorization_code(self, code: str, client: Client) -> _Code | None:
        """Consume the code: it is deleted at its first presentation, valid or not (RFC 6749 §4.1.2)."""
        with write_session(resources().sessions) as session:
            row = session.scalar(delete(AuthorizationCode).where(
                AuthorizationCode.code_hash == digest(code), AuthorizationCode.client_id == client.client_id,
                AuthorizationCode.expires_at > datetime.now(UTC)).returning(AuthorizationCode))
        return _Code(row) if row else None

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        """Nothing left to do: :meth:`query_authorization_code` consumed it."""

    def authenticate_user(self, authorization_code: _Code) -> User | None:
        return _active_user(authorization_code.row.user_pk)


class PkceS256(CodeChallenge):  # type: ignore[misc]
    """PKCE, required for every client, ``S256`` only (SMART App Launch 2.x; RFC 7636 §4.2).

    A missing ``code_challenge_method`` means ``plain`` (RFC 7636 §4.3), which is refused.
    """

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            # SMART App Launch 2.x: the server SHALL check code_verifier is present and valid
            raise InvalidRequestError("Missing 'code_verifier'")
        super().validate_code_verifier(grant, result)


class RotatingRefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    """``refresh_token``: every use returns a new refresh token and revokes the old one."""

    TOKEN_ENDPOINT_AUTH_METHODS = [*AUTH_METHODS, PUBLIC]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> introspection.RefreshRecord | None:
        record = introspection.find_refresh_token(refresh_token)
        return record if record and not record.is_revoked() and not record.is_expired() else None

    def authenticate_user(self, refresh_token: introspection.RefreshRecord) -> User | None:
        return _active_user(refresh_token.row.user_pk)

    def revoke_old_credential(self, refresh_token: introspection.RefreshRecord) -> None:
        with write_session(resources().sessions) as session:
            session.execute(update(RefreshToken).where(RefreshToken.pk == refresh_token.row.pk).values(revoked=True))


def create_server(app: Flask) -> AuthorizationServer:
    """An authorization server for ``app``, with drimhub's grants, auth methods and endpoints."""
    server = AuthorizationServer()
    server.init_app(app, query_client=query_client, save_token=save_token)
    server.register_token_generator("default", generate_token)
    server.register_client_auth_method(PRIVATE_KEY_JWT, PrivateKeyJWT(lambda: endpoint_audiences(token_url())))
    server.register_grant(BackendServicesGrant)
    server.register_grant(LoginGrant, [PkceS256(required=True)])
    server.register_grant(RotatingRefreshGrant)
    server.register_endpoint(introspection.Introspection(issuer, resources_signing_key))
    server.register_endpoint(introspection.Revocation(issuer, resources_signing_key))
    return server


def resources_signing_key() -> Any:
    """The app's signing key (looked up per request: one server object per app)."""
    return resources().signing_key
