"""Share grants (``/api/shares``): one study of an organisation, for another organisation, a user,
or anyone holding a link, with an expiry.

Grantees: ``{"org": O}`` (every token acting for organisation ``O``); ``{"user": SUB}`` or
``{"user": SUB, "issuer": ISS}`` (the tokens with that ``sub`` **from that issuer**, this node's
own when none is given: a ``sub`` is unique within its issuer only, so a user grant matches the
pair (issuer, sub), kept in ``share.grantee_user`` and ``share.grantee_issuer``); ``{"link": true}``.

Rules:

- only the organisation owning a study grants it (a study of another organisation, or unknown,
  is a 404; a cached copy of a peer's study is a 403: share it at its origin); never a study
  whose patient opposed sharing (:mod:`drimhub.sharing.consent`, 403 with the reason);
- ``expires`` is mandatory, an ISO-8601 date and time with a zone, in the future, at most
  ``SHARE_MAX_DAYS`` days ahead; kept to the second below (a grant never lasts longer than asked);
- ``permissions`` is ``["read"]`` (search, metadata, frames, rendered, thumbnail, FHIR
  ImagingStudy) or ``["read", "download"]`` (plus the DICOM instances themselves: WADO-RS
  retrieve and bulk data, WADO-URI ``application/dicom``);
- a grant is **active** while not revoked and not expired; revocation (``DELETE``) and expiry
  take effect at the next request: every request of a grantee looks the grants up again.

A link's **capability** is an access token of this node (:mod:`drimhub.server.auth.tokens`:
RFC 9068 ``at+jwt``, signed with the node key) with ``sub`` ``share:<id>``, the claim ``share``
naming the grant, ``org`` the grant's organisation, scope ``system/ImagingStudy.rs``, ``exp`` the
grant's expiry and a ``jti`` kept in ``share.token_jti``. It is shown once, in the answer to the
``POST``; :mod:`drimhub.server.auth.policy` confines it to its one study.

Decision: a link's ``exp`` is the grant's expiry (up to ``SHARE_MAX_DAYS``, 7 days as the issue
asks), so it may outlive the token that created it, although security.md G5 says a token's lifetime
is at most the issuing token's. The grant, not the creating token, is what the organisation decided
(a user with ``drimhub/share`` shares a study for a week, not for the minutes their own token has
left); revocation is immediate (``DELETE`` marks the grant and adds the link's ``jti`` to the revoked
tokens); and every request with the link, and every introspection of it, re-checks the grant
(:func:`capability_grant`), so the link is never worth more than the grant is now.

Visibility is applied in SQL by :class:`drimhub.store.access.Grantee` (an ``EXISTS`` over the active
grants, no list of studies); a study seen through read-only grants is a 403 on the download URLs
(:func:`download_refusal`), not a 404.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from drimhub.dicomweb.uids import is_valid_uid
from drimhub.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from drimhub.server.auth import tokens
from drimhub.sharing import consent
from drimhub.store.access import DOWNLOAD_PERMISSIONS, Grantee
from drimhub.store.engine import with_retries
from drimhub.store.models import Study, utc
from drimhub.store.network import Share
from drimhub.store.security import RevokedToken

#: The permission sets a grant may give, as the API lists them and as ``share.permissions`` keeps them.
PERMISSIONS = {("read",): "read", ("read", "download"): DOWNLOAD_PERMISSIONS}
#: Scope of a link's capability token: ImagingStudy read and search (SMART v2), nothing else.
CAPABILITY_SCOPE = "system/ImagingStudy.rs"
#: ``client_id`` of capability tokens (RFC 9068 §2.2 requires one; no OAuth2 client issued them).
CAPABILITY_CLIENT = "drimhub-share-link"
_FIELDS = frozenset({"study", "grantee", "permissions", "expires", "note"})
_NOTE_MAX, _ORG_MAX, _USER_MAX, _ISSUER_MAX = 1024, 64, 255, 512


def invalid(message: str) -> InvalidRequest:
    """A 400 whose JSON ``error`` is ``invalid_request`` (RFC 6749 §5.2), as under ``/api``."""
    return InvalidRequest(message, oauth_error="invalid_request")


@dataclass(frozen=True)
class GrantRequest:
    """A validated ``POST /api/shares`` body."""

    study: str
    grantee_org: str | None
    grantee_user: str | None
    #: Issuer of the grantee user's tokens, as given (None: this node's, filled in by :func:`create`).
    grantee_issuer: str | None
    link: bool
    permissions: str
    expires: datetime
    note: str | None


def parse_request(body: Any, now: datetime, max_days: int) -> GrantRequest:
    """Validate a ``POST /api/shares`` body.

    Raises
    ------
    InvalidRequest
        Not an object; an unknown field; a malformed study UID, grantee or permission list; an
        expiry missing, without a zone, past, or more than ``max_days`` days ahead; a note too long.
    """
    if not isinstance(body, dict):
        raise invalid("send a JSON object: study, grantee, permissions, expires and optionally note")
    if unknown := sorted(set(body) - _FIELDS):
        raise invalid(f"unknown field(s): {', '.join(unknown)[:200]}")
    study = body.get("study")
    if not isinstance(study, str) or not is_valid_uid(study):
        raise invalid("study is a Study Instance UID")
    org, user, issuer, link = _grantee(body.get("grantee"))
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > _NOTE_MAX):
        raise invalid(f"note is a string of at most {_NOTE_MAX} characters")
    return GrantRequest(study, org, user, issuer, link, _permissions(body.get("permissions")),
                        _expiry(body.get("expires"), now, max_days), note)


def _grantee(value: Any) -> tuple[str | None, str | None, str | None, bool]:
    """(org, user, user's issuer, link) of a ``grantee``; the issuer None when not given."""
    usage = 'grantee is one of {"org": O}, {"user": U} or {"user": U, "issuer": ISS} (non-empty strings), {"link": true}'
    if not isinstance(value, dict) or not value:
        raise invalid(usage)
    if value == {"link": True}:
        return None, None, None, True
    issuer = value.get("issuer") if set(value) == {"user", "issuer"} else None
    if set(value) == {"user", "issuer"} and (not isinstance(issuer, str) or not issuer.strip()
                                             or len(issuer) > _ISSUER_MAX):
        raise invalid(usage)
    kinds = set(value) - {"issuer"} if issuer is not None else set(value)
    if len(kinds) != 1:
        raise invalid(usage)
    [kind] = kinds
    name = value[kind]
    limit = {"org": _ORG_MAX, "user": _USER_MAX}.get(kind)
    if limit is None or not isinstance(name, str) or not name.strip() or len(name) > limit:
        raise invalid(usage)
    if kind == "user" and name.startswith("share:"):
        raise invalid("a share link is not a user")
    return (name, None, None, False) if kind == "org" else (None, name, issuer, False)


def _permissions(value: Any) -> str:
    listed = tuple(sorted(value, key=lambda p: p != "read")) if isinstance(value, list) else None
    if listed is None or listed not in PERMISSIONS:
        raise invalid('permissions is ["read"] or ["read", "download"]')
    return PERMISSIONS[listed]


def _expiry(value: Any, now: datetime, max_days: int) -> datetime:
    if not isinstance(value, str):
        raise invalid("expires is mandatory: an ISO-8601 date and time with a time zone")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(f"expires is not an ISO-8601 date and time: {value[:64]!r}") from None
    if moment.tzinfo is None:
        raise invalid("expires needs a time zone (Z or ±hh:mm)")
    moment = moment.astimezone(timezone.utc).replace(microsecond=0)
    if moment <= now:
        raise invalid("expires is in the past")
    if moment > now + timedelta(days=max_days):
        raise invalid(f"expires is at most {max_days} days ahead (DRIMHUB_SHARE_MAX_DAYS)")
    return moment


# --- writing, reading, revoking ---------------------------------------------------------------

def create(sessions: sessionmaker[Session], req: GrantRequest, *, org: str, created_by: str,
           node_issuer: str) -> Share:
    """Record the grant of ``req`` by ``org`` (``created_by``: the caller's ``sub``).

    A user grantee is an issuer and a ``sub`` (a ``sub`` is unique within its issuer only): the
    one the request gives, else ``node_issuer`` (this node's users).

    Raises
    ------
    NotFound
        ``org`` owns no such study.
    Forbidden
        The study is a cached copy of a peer's, or its patient opposed sharing (the reason says so).
    InvalidRequest
        The grantee is ``org`` itself.
    """
    if req.grantee_org == org:
        raise invalid("the study's own organisation already sees it")

    def work(session: Session) -> Share:
        study = session.execute(select(Study.origin).where(Study.study_uid == req.study, Study.org == org)).first()
        if study is None:
            raise NotFound(f"no study {req.study} of organisation {org}")
        if study.origin is not None:
            raise Forbidden(f"this study is a cached copy of peer {study.origin}'s: share it there")
        consent.check_shareable(session, req.study)
        share = Share(id=uuid.uuid4().hex, study_uid=req.study, org=org, grantee_org=req.grantee_org,
                      grantee_user=req.grantee_user,
                      grantee_issuer=(req.grantee_issuer or node_issuer) if req.grantee_user else None, link=req.link, permissions=req.permissions,
                      expires_at=req.expires, note=req.note, created_by=created_by,
                      created_at=datetime.now(timezone.utc).replace(microsecond=0),
                      token_jti=uuid.uuid4().hex if req.link else None)
        session.add(share)
        session.flush()
        session.expunge(share)
        return share

    return with_retries(sessions, work, "share grant")


def list_grants(session: Session, org: str, study: str | None = None) -> list[Share]:
    """The grants of ``org`` (of one study, when given), oldest first, revoked and expired ones included."""
    stmt = select(Share).where(Share.org == org)
    if study is not None:
        stmt = stmt.where(Share.study_uid == study)
    return list(session.scalars(stmt.order_by(Share.pk)))


def get_grant(session: Session, org: str, share_id: str) -> Share:
    """The grant ``share_id`` of ``org``; :class:`~drimhub.errors.NotFound` otherwise."""
    share = session.scalar(select(Share).where(Share.id == share_id, Share.org == org))
    if share is None:
        raise NotFound(f"no share {share_id} of organisation {org}")
    return share


def revoke(sessions: sessionmaker[Session], org: str, share_id: str) -> Share:
    """Revoke the grant ``share_id`` of ``org`` at once (again: no change); NotFound when none.

    A link's capability is also added to the revoked tokens (``oauth_revoked_token``, by its
    ``jti``, until the grant's expiry): every check of a token of this node refuses it, not only
    the grant's. Returns the grant (detached).
    """
    def work(session: Session) -> Share:
        share = get_grant(session, org, share_id)
        if share.revoked_at is None:
            share.revoked_at = datetime.now(timezone.utc)
            if share.token_jti is not None and not session.scalar(
                    select(RevokedToken.pk).where(RevokedToken.jti == share.token_jti)):
                session.add(RevokedToken(jti=share.token_jti, expires_at=utc(share.expires_at)))
        session.flush()
        session.expunge(share)
        return share

    return with_retries(sessions, work, "share revocation")


def grant_json(share: Share, token: str | None = None) -> dict[str, Any]:
    """The API form of a grant (and, right after a link's creation only, its capability ``token``)."""
    grantee: dict[str, Any] = ({"link": True} if share.link else {"org": share.grantee_org} if share.grantee_org
                               else {"user": share.grantee_user, "issuer": share.grantee_issuer})
    out: dict[str, Any] = {
        "id": share.id, "study": share.study_uid, "grantee": grantee, "permissions": share.permissions.split(),
        "expires": utc(share.expires_at).isoformat(), "note": share.note,
        "created": utc(share.created_at).isoformat(), "createdBy": share.created_by,
    }
    if share.revoked_at is not None:
        out["revoked"] = utc(share.revoked_at).isoformat()
    if token is not None:
        out["token"] = token
    return out


# --- capability tokens ------------------------------------------------------------------------

def capability_claims(share: Share, *, issuer: str, audience: str, now: int | None = None) -> dict[str, Any]:
    """The claims of a link's capability token: ``exp`` is the grant's expiry, never later."""
    assert share.link and share.token_jti is not None
    expires = int(utc(share.expires_at).timestamp())
    claims = tokens.access_token_claims(issuer=issuer, audience=audience, subject=f"share:{share.id}",
                                        client_id=CAPABILITY_CLIENT, scope=CAPABILITY_SCOPE, org=share.org, now=now,
                                        extra={"share": share.id, "jti": share.token_jti})
    claims["exp"] = expires
    return claims


#: The lookup of a capability's grant, built once (``share.id`` is unique).
_BY_ID = select(Share).where(Share.id == bindparam("share_id"))


def capability_grant(session: Session, share_id: str, jti: str) -> Share:
    """The active link grant a capability token (``share`` and ``jti`` claims) stands for.

    Raises
    ------
    Unauthorized
        No such link grant, another token than the grant's, or the grant was revoked or expired
        (the message says which).
    """
    share = session.scalars(_BY_ID, {"share_id": share_id}).first()
    if share is None or not share.link or share.token_jti != jti:
        raise Unauthorized("the share link does not exist")
    if share.revoked_at is not None:
        raise Unauthorized("the share was revoked")
    if utc(share.expires_at) <= datetime.now(timezone.utc):
        raise Unauthorized("the share has expired")
    return share


_SHARE = Share.__table__.c
#: Is any grant active for this organisation or this user? Built once (the common answer is no,
#: and then a request's queries carry no share condition at all).
_ANY_ACTIVE = (select(_SHARE.pk).where(
    _SHARE.revoked_at.is_(None), _SHARE.expires_at > bindparam("now"),
    (_SHARE.grantee_org == bindparam("org"))
    | ((_SHARE.grantee_user == bindparam("sub")) & (_SHARE.grantee_issuer == bindparam("issuer")))).limit(1))


def has_active_grants(session: Session, grantee: Grantee) -> bool:
    """True when some active grant names ``grantee``'s organisation or ``grantee`` (one indexed query)."""
    params = {"now": datetime.now(timezone.utc), "org": grantee.org, "sub": grantee.sub, "issuer": grantee.issuer}
    return session.connection().execute(_ANY_ACTIVE, params).first() is not None


def download_refusal(session: Session, grantee: Grantee, study_uid: str) -> str | None:
    """Why ``grantee`` may not download ``study_uid``, a study it sees through read-only grants only.

    None when no active grant of another organisation's study names it (then the study is the
    caller's own, or not visible: the ordinary 404), or when one permits downloading.
    """
    now = datetime.now(timezone.utc)
    reading = Grantee(grantee.org, grantee.issuer, grantee.sub)
    downloading = Grantee(grantee.org, grantee.issuer, grantee.sub, download=True)
    stmt = (select(Study.study_uid).where(Study.study_uid == study_uid, Study.org != grantee.org,
                                          reading.grants(Study.study_uid, Study.org, now)))
    if session.scalar(stmt) is None:
        return None
    if session.scalar(stmt.where(downloading.grants(Study.study_uid, Study.org, now))) is not None:
        return None
    return "this study is shared for reading only: its DICOM instances may not be downloaded"
