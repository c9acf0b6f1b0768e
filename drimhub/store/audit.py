"""The audit trail: one row per FHIR AuditEvent, append-only for the application.

The event itself is kept as FHIR R4 JSON; the columns are what an auditor searches on
(IHE ITI-81: date, patient, agent, type/subtype, outcome).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, DateTime, Integer, LargeBinary, String, delete, func, insert, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from drimhub.store.engine import write_session
from drimhub.store.models import Base, utc


class AuditRecord(Base):
    """One AuditEvent."""

    __tablename__ = "audit_event"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The AuditEvent's logical id (a UUID).
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    #: AuditEvent.action: C, R, U, D or E.
    action: Mapped[str] = mapped_column(String(1))
    #: AuditEvent.subtype code (e.g. "search-type", "read", "create") and DICOM event (e.g. "110112").
    subtype: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    #: AuditEvent.outcome: 0, 4, 8 or 12.
    outcome: Mapped[str] = mapped_column(String(2))
    #: Patient identifier involved ("system|value" or value), or None.
    patient: Mapped[str | None] = mapped_column(String(200), index=True)
    #: The user (token ``sub``) and the client (token ``client_id``).
    agent: Mapped[str | None] = mapped_column(String(256), index=True)
    client_id: Mapped[str | None] = mapped_column(String(128))
    org: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    resource: Mapped[bytes] = mapped_column(LargeBinary)


_INSERT = insert(AuditRecord.__table__)


# --- the only ways in and out: append, search, read, and the retention purge -----------------

@dataclass(frozen=True)
class TokenMatch:
    """A FHIR token search value: ``value`` alone matches any system, ``system|value`` one system."""

    system: str | None
    value: str

    @classmethod
    def parse(cls, text: str) -> TokenMatch:
        """Split ``system|value`` (a bare value has no system)."""
        system, sep, value = text.partition("|")
        return cls(system or None, value) if sep else cls(None, text)


@dataclass(frozen=True)
class AuditQuery:
    """An ITI-81 search, already validated; every bound is a bound SQL parameter."""

    since: datetime | None = None      # recorded >= since (UTC)
    until: datetime | None = None      # recorded < until (UTC)
    patient: TokenMatch | None = None
    agent: TokenMatch | None = None
    subtype: str | None = None         # one code: a restful-interaction code or a DICOM event ID
    outcome: str | None = None
    org: str | None = None             # only this organisation's events
    count: int = 100
    offset: int = 0


def append(sessions: sessionmaker[Session], events: Sequence[tuple[dict[str, Any], bytes]]) -> None:
    """Append events in one write transaction.

    Parameters
    ----------
    sessions : sessionmaker
        The session factory.
    events : sequence of (columns, resource)
        The search column values (``drimhub.mappings.audit.search_columns``) and the FHIR JSON.
    """
    if not events:
        return
    with write_session(sessions) as session:
        add(session, events)


def add(session: Session, events: Sequence[tuple[dict[str, Any], bytes]]) -> None:
    """Append events in the caller's write transaction (recorded only if it commits: an event
    and the change it records go together)."""
    if events:
        # a Core INSERT (executemany): no unit of work, no ORM objects, one statement per request
        session.connection().execute(_INSERT, [{**columns, "resource": resource} for columns, resource in events])


def _token_clause(column: Any, match: TokenMatch) -> ColumnElement[bool]:
    if match.system:
        return column == f"{match.system}|{match.value}"  # type: ignore[no-any-return]
    return or_(column == match.value, column.endswith(f"|{match.value}", autoescape=True))


def _conditions(query: AuditQuery) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if query.since is not None:
        conds.append(AuditRecord.recorded >= utc(query.since))
    if query.until is not None:
        conds.append(AuditRecord.recorded < utc(query.until))
    if query.patient:
        conds.append(_token_clause(AuditRecord.patient, query.patient))
    if query.agent:
        agent = _token_clause(AuditRecord.agent, query.agent)
        conds.append(or_(agent, AuditRecord.client_id == query.agent.value) if not query.agent.system else agent)
    if query.subtype:
        code = query.subtype
        conds.append(or_(AuditRecord.subtype == code, AuditRecord.subtype.startswith(f"{code} ", autoescape=True),
                         AuditRecord.subtype.endswith(f" {code}", autoescape=True)))
    if query.outcome is not None:
        conds.append(AuditRecord.outcome == query.outcome)
    if query.org is not None:
        conds.append(AuditRecord.org == query.org)
    return conds


def search(session: Session, query: AuditQuery) -> tuple[list[tuple[str, bytes]], int]:
    """Events matching ``query``, oldest first (stable pages while events are appended).

    Returns
    -------
    (list of (str, bytes), int)
        The page as (event id, FHIR JSON) pairs, and the total number of matches.
    """
    conds = _conditions(query)
    total = session.scalar(select(func.count()).select_from(AuditRecord).where(*conds)) or 0
    rows = session.execute(select(AuditRecord.event_id, AuditRecord.resource).where(*conds)
                           .order_by(AuditRecord.recorded, AuditRecord.pk).limit(query.count).offset(query.offset))
    return [(event_id, resource) for event_id, resource in rows], total


def get(session: Session, event_id: str, org: str | None = None) -> bytes | None:
    """The FHIR JSON of one event (of organisation ``org`` when given), or None."""
    stmt = select(AuditRecord.resource).where(AuditRecord.event_id == event_id)
    if org is not None:
        stmt = stmt.where(AuditRecord.org == org)
    return session.scalar(stmt)


def purge(sessions: sessionmaker[Session], older_than_days: int, now: datetime | None = None) -> int:
    """Delete the events recorded more than ``older_than_days`` days ago; return how many.

    This is the retention policy (``DRIMHUB_AUDIT_RETENTION_DAYS``), the only code path that
    deletes audit events; nothing updates them.
    """
    if older_than_days < 0:
        raise ValueError("the retention period cannot be negative")
    cutoff = utc(now or datetime.now(timezone.utc)) - timedelta(days=older_than_days)
    with write_session(sessions) as session:
        result = session.execute(delete(AuditRecord).where(AuditRecord.recorded < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)

