"""The audit trail: one row per FHIR AuditEvent, append-only for the application.

The event itself is kept as FHIR R4 JSON; the columns are what an auditor searches on
(IHE ITI-81: date, patient, agent, type/subtype, outcome).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from drimhub.store.models import Base


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
