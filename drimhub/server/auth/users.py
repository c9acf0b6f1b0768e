"""Professionals who log in at ``/oauth/authorize``: registration and password checks.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 "second recommended"
parameters); a hash made with older parameters is upgraded at the next successful login.
"""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from drimhub.server.auth.clients import DEFAULT_ORG, check_organisation
from drimhub.errors import Conflict, InvalidRequest
from drimhub.store.engine import write_session
from drimhub.store.security import User

#: Shortest password accepted at registration.
MIN_PASSWORD_LENGTH = 10
_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so timing does not tell."""
    return _HASHER.hash("no such user: constant-time answer")


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (PHC string format)."""
    return _HASHER.hash(password)


def add_user(session: Session, username: str, password: str, *, scope: str, org: str = DEFAULT_ORG,
             display_name: str = "") -> User:
    """Register a professional; the caller commits.

    Parameters
    ----------
    session : Session
        A write session.
    username, password : str
        Login name and password (at least :data:`MIN_PASSWORD_LENGTH` characters).
    scope : str
        The scopes the user may be granted, e.g. ``"user/*.rs"``.
    org : str
        The organisation the user acts for (claim ``org`` of their tokens).
    display_name : str
        Human-readable name.

    Raises
    ------
    InvalidRequest
        Empty username, too short a password, or an organisation reserved for cached copies.
    Conflict
        The username is taken.
    """
    check_organisation(org)
    username = username.strip()
    if not username:
        raise InvalidRequest("empty username")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    user = User(username=username, org=org or DEFAULT_ORG, display_name=display_name,
                password_hash=hash_password(password), scope=" ".join(scope.split()), active=True)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:
        raise Conflict(f"user {username!r} exists") from exc
    return user


def authenticate(sessions: sessionmaker[Session], username: str, password: str) -> User | None:
    """The active user with these credentials, or None.

    The hash is verified even when the user is unknown (same time either way).
    """
    with sessions() as session:
        user = session.scalar(select(User).where(User.username == username))
    try:
        _HASHER.verify(user.password_hash if user else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        with write_session(sessions) as session:
            stored = session.get(User, user.pk)
            if stored is not None:
                stored.password_hash = hash_password(password)
    return user

