"""Share grants (``/api/shares``): one study of an organisation, for another organisation, a user,
or anyone holding a link, with an expiry.

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
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session, sessionmaker

from drimhub.dicomweb.uids import is_valid_uid
from drimhub.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from drimhub.server.auth import tokens
from drimhub.sharing import consent
from drimhub.store.engine import with_retries
from drimhub.store.models import Study, utc
from drimhub.store.network import Share
from drimhub.store.security import RevokedToken

#: The permission sets a grant may give, as the API lists them and as ``share.permissions`` keeps them.
PERMISSIONS = {("read",): "read", ("read", "download"): "read download"}
#: Scope of a link's capability token: ImagingStudy read and search (SMART v2), nothing else.
CAPABILITY_SCOPE = "system/ImagingStudy.rs"
#: ``client_id`` of capability tokens (RFC 9068 §2.2 requires one; no OAuth2 client issued them).
CAPABILITY_CLIENT = "drimhub-share-link"
_FIELDS = frozenset({"study", "grantee", "permissions", "expires", "note"})
_NOTE_MAX, _ORG_MAX, _USER_MAX = 1024, 64, 255


def invalid(message: str) -> InvalidRequest:
    """A 400 whose JSON ``error`` is ``invalid_request`` (RFC 6749 §5.2), as under ``/api``."""
    return InvalidRequest(message, oauth_error="invalid_request")


@dataclass(frozen=True)
class GrantRequest:
    """A validated ``POST /api/shares`` body."""

    study: str
    grantee_org: str | None
    grantee_user: str | None
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
    org, user, link = _grantee(body.get("grantee"))
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > _NOTE_MAX):
        raise invalid(f"note is a string of at most {_NOTE_MAX} characters")
    return GrantRequest(study, org, user, link, _permissions(body.get("permissions")),
                        _expiry(body.get("expires"), now, max_days), note)


def _grantee(value: Any) -> tuple[str | None, str | None, bool]:
    if not isinstance(value, dict) or len(value) != 1:
        raise invalid('grantee is one of {"org": O}, {"user": U}, {"link": true}')
    [(kind, name)] = value.items()
    if kind == "link" and name is True:
        return None, None, True
    limit = {"org": _ORG_MAX, "user": _USER_MAX}.get(kind)
    if limit is None or not isinstance(name, str) or not name.strip() or len(name) > limit:
        raise invalid('grantee is one of {"org": O}, {"user": U} (non-empty strings), {"link": true}')
    if kind == "user" and name.startswith("share:"):
        raise invalid("a share link is not a user")
    return (name, None, False) if kind == "org" else (None, name, False)


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

def create(sessions: sessionmaker[Session], req: GrantRequest, *, org: str, created_by: str) -> Share:
    """Record the grant of ``req`` by ``org`` (``created_by``: the caller's ``sub``).

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
                      grantee_user=req.grantee_user, link=req.link, permissions=req.permissions,
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
                               else {"user": share.grantee_user})
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


def shared_studies(session: Session, org: str, sub: str, *, download: bool = False) -> frozenset[str]:
    """Studies of other organisations that ``org`` (as grantee organisation) or ``sub`` (as grantee
    user) may use now: active grants, with ``download`` when asked, of patients who did not oppose.

    One query on the indexed grantee columns; the consents are read only when a grant is found.
    """
    now = datetime.now(timezone.utc)
    stmt = (select(Share.study_uid, Study.patient_ref).join(Study, Study.study_uid == Share.study_uid)
            .where(or_(Share.grantee_org == org, Share.grantee_user == sub), Share.revoked_at.is_(None),
                   Share.expires_at > now, Share.org == Study.org))
    if download:
        stmt = stmt.where(Share.permissions == PERMISSIONS[("read", "download")])
    found = session.execute(stmt).all()
    if not found:
        return frozenset()
    opposed = consent.opposed_patients(session)
    return frozenset(uid for uid, patient in found if patient is None or patient not in opposed)
