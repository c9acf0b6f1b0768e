"""Tables of the authorization server: clients, users, codes, refresh tokens, replay and revocation.

Secrets are never stored: client secrets, refresh tokens and codes are kept as SHA-256 digests
(they are random 256-bit values, so a plain digest is enough), passwords as argon2 hashes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from drimhub.store.models import Base


class OAuthClient(Base):
    """A registered OAuth2 client: a RIS/PACS (backend services), an app, or a peer node."""

    __tablename__ = "oauth_client"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    org: Mapped[str] = mapped_column(String(64))
    #: Space-separated scopes the client may ask for.
    scope: Mapped[str] = mapped_column(Text)
    #: "private_key_jwt", "client_secret_basic", "client_secret_post" or "none" (public app).
    auth_method: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    #: The client's public keys, as a JWKS document (JSON text), or where to fetch them.
    jwks: Mapped[str | None] = mapped_column(Text)
    jwks_url: Mapped[str | None] = mapped_column(Text)
    #: Space-separated redirect URIs (authorization code grant).
    redirect_uris: Mapped[str] = mapped_column(Text, server_default="")
    #: Space-separated grant types.
    grant_types: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class User(Base):
    """A professional who logs in (authorization code grant)."""

    __tablename__ = "app_user"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    org: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(256), server_default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    #: Scopes this user may be granted (space-separated), e.g. "user/*.rs".
    scope: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuthorizationCode(Base):
    """A pending authorization code (PKCE S256 only)."""

    __tablename__ = "oauth_code"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(128))
    user_pk: Mapped[int] = mapped_column(ForeignKey("app_user.pk", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(16))
    nonce: Mapped[str | None] = mapped_column(String(256))
    auth_time: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RefreshToken(Base):
    """A refresh token (stored as a digest), revocable."""

    __tablename__ = "oauth_refresh_token"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(128))
    user_pk: Mapped[int | None] = mapped_column(ForeignKey("app_user.pk", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, server_default="0")


class SeenAssertion(Base):
    """A client assertion ``jti`` already used: a replay is refused (SMART Backend Services)."""

    __tablename__ = "oauth_seen_jti"
    __table_args__ = (UniqueConstraint("issuer", "jti"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(256))
    jti: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class RevokedToken(Base):
    """An access token revoked before its expiry (RFC 7009), by ``jti``."""

    __tablename__ = "oauth_revoked_token"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
