"""Tables of the sharing node: peers, push rules, share grants, background jobs, published manifests,
leases on the filling of cached copies.

The study rows themselves say whether a study is a cached copy of a peer's
(:attr:`drimhub.store.models.Study.origin`, :attr:`~drimhub.store.models.Study.expires_at`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, LargeBinary, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from drimhub.store.models import UID_LEN, Base


class Peer(Base):
    """A node this node trusts and talks to (``drimhub peer add``, ``/api/peers``).

    ``auth`` is ``smart-backend`` (this node is a registered client of the peer, ``client_id``,
    and signs its client assertions with its own key; ``token_url`` is discovered from the peer's
    SMART configuration when not set) or ``relay`` (the caller's own bearer token is forwarded:
    both nodes trust the same identity provider). ``allow_private``: the peer may live on a
    loopback, link-local or private address, and over plain http (set only explicitly).
    """

    __tablename__ = "peer"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    dicomweb_url: Mapped[str] = mapped_column(String(512))
    fhir_url: Mapped[str | None] = mapped_column(String(512))
    auth: Mapped[str] = mapped_column(String(16), server_default="smart-backend")
    client_id: Mapped[str | None] = mapped_column(String(255))
    scope: Mapped[str] = mapped_column(String(1024), server_default="")
    token_url: Mapped[str | None] = mapped_column(String(512))
    allow_private: Mapped[bool] = mapped_column(Boolean, server_default="0")
    #: Seconds a federated request waits for this peer (None: ``DRIMHUB_PEER_TIMEOUT``).
    timeout: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PushRule(Base):
    """"Every study of organisation ``org`` with modality ``modality`` goes to ``peer``" (None: any)."""

    __tablename__ = "push_rule"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    peer: Mapped[str] = mapped_column(String(64), index=True)
    org: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Share(Base):
    """A time-limited grant of access to one study (``/api/shares``).

    Exactly one grantee: ``grantee_org``, ``grantee_user`` (a token ``sub``), or ``link`` (anyone
    holding the capability token, whose ``jti`` is ``token_jti``). ``permissions`` is ``read`` or
    ``read download``. ``org`` owns the study and the grant.
    """

    __tablename__ = "share"
    __table_args__ = (Index("ix_share_grantee_org", "grantee_org"), Index("ix_share_grantee_user", "grantee_user"))

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    study_uid: Mapped[str] = mapped_column(String(UID_LEN), index=True)
    org: Mapped[str] = mapped_column(String(64), index=True)
    grantee_org: Mapped[str | None] = mapped_column(String(64))
    grantee_user: Mapped[str | None] = mapped_column(String(255))
    #: Issuer of the grantee user's tokens (a ``sub`` is unique within its issuer only).
    grantee_issuer: Mapped[str | None] = mapped_column(String(512))
    link: Mapped[bool] = mapped_column(Boolean, server_default="0")
    permissions: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(String(1024))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    token_jti: Mapped[str | None] = mapped_column(String(64), unique=True)


class Job(Base):
    """A durable background job (a push to a peer, a purge): its state for ``GET /api/jobs/{id}``.

    ``state``: ``queued``, ``running``, ``retrying``, ``succeeded``, ``failed``. A running job
    holds a lease (``lease_until``) its worker renews; a job whose lease ran out (its worker died)
    is queued again. ``done``/``total``: instances the peer holds of the study's.
    """

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_state_lease", "state", "lease_until"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    org: Mapped[str] = mapped_column(String(64), index=True)
    created_by: Mapped[str] = mapped_column(String(255))
    peer: Mapped[str | None] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(String(UID_LEN))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    total: Mapped[int | None] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Fencing token of the current lease: every write of the running worker names it, so a worker
    #: whose lease was taken over writes nothing.
    lease_id: Mapped[str | None] = mapped_column(String(32))
    next_attempt: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Manifest(Base):
    """A KOS manifest (113030) this node published for a study: the DICOM bytes, as served."""

    __tablename__ = "manifest"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(UID_LEN), unique=True)
    study_uid: Mapped[str] = mapped_column(String(UID_LEN), index=True)
    org: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CacheLease(Base):
    """Who fills the cached copy of peer ``origin``'s study ``study_uid`` (one request at a time).

    Taken by inserting the row (the unique key refuses a second one) or by taking over a row whose
    ``until`` has passed; renewed while the copy is filled, deleted once the filling ends.
    """

    __tablename__ = "cache_lease"
    __table_args__ = (UniqueConstraint("origin", "study_uid", name="uq_cache_lease_origin_study"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    origin: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(UID_LEN))
    holder: Mapped[str] = mapped_column(String(32))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
