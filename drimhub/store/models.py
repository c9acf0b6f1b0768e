"""SQLAlchemy models of the shared metadata store.

One row per study, series and instance. The columns are the attributes clients match on
(PS3.18 Table 6.7.1-1 plus the extra keys of ARCHITECTURE.md), normalised for matching; the
``attrs`` / ``dicom_json`` columns keep the DICOM JSON (PS3.18 Annex F) the answers are built
from, so that neither QIDO nor WADO metadata re-reads a DICOM file.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String,
                        UniqueConstraint, func)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Longest PN value: 3 component groups of 5 components of 64 characters (PS3.5 Table 6.2-1).
PN_LEN = 324
UID_LEN = 64
#: Owner of data stored before organisations existed (migration 0002) or without a token org.
DEFAULT_ORG = "local"


def utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime; a naive one is taken as UTC.

    Timestamps read back from SQLite are naive (it keeps no offset; every one was written in
    UTC), and a FHIR dateTime without a zone is read as UTC (:mod:`drimhub.fhir.dates`).
    """
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every drimhub table."""


class Study(Base):
    """A study, with the patient attributes DICOM keeps at study level."""

    __tablename__ = "study"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(UID_LEN), unique=True)
    #: Organisation that stored the study and owns it (the ``org`` claim of the storing token).
    org: Mapped[str] = mapped_column(String(64), index=True, server_default=DEFAULT_ORG)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(PN_LEN))
    #: PatientName folded for case- and accent-insensitive matching.
    patient_name_key: Mapped[str | None] = mapped_column(String(PN_LEN), index=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    #: StudyTime as HHMMSS.FFFFFF (padded) so that ranges compare as strings.
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician_key: Mapped[str | None] = mapped_column(String(PN_LEN))
    institution_name: Mapped[str | None] = mapped_column(String(64))
    #: Id of the FHIR Patient (same organisation) this study's patient module was merged into
    #: when the study was first stored (ImagingStudy.subject).
    patient_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    #: Name of the peer this study is a cached copy of (None: stored here), and when the copy
    #: expires (``drimhub purge``).
    origin: Mapped[str | None] = mapped_column(String(64), index=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When a cached copy was found complete: every instance the peer said the study has
    #: (NumberOfStudyRelatedInstances) was retrieved (None: partial, never served as the study).
    cache_complete: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attrs: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    series: Mapped[list[Series]] = relationship(back_populates="study", passive_deletes=True)


class Series(Base):
    """A series of one study.

    The foreign keys of series and instances do not cascade: a DELETE removes the children
    explicitly, so that a parent is removed only when it has none left, never together with a
    child a concurrent STOW has just inserted (migration 0003).
    """

    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.pk"), index=True)
    series_uid: Mapped[str] = mapped_column(String(UID_LEN), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part: Mapped[str | None] = mapped_column(String(16))
    pps_start_date: Mapped[str | None] = mapped_column(String(8))
    pps_start_time: Mapped[str | None] = mapped_column(String(16))
    attrs: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", passive_deletes=True)


class Instance(Base):
    """A stored SOP instance: its blob, its pixel data location and its DICOM JSON."""

    __tablename__ = "instance"
    __table_args__ = (Index("ix_instance_series_number", "series_pk", "instance_number"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.pk"))
    sop_uid: Mapped[str] = mapped_column(String(UID_LEN), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LEN), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax: Mapped[str] = mapped_column(String(UID_LEN))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    samples_per_pixel: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    #: Byte offset and length of the Pixel Data value in the blob; the length is None for
    #: encapsulated (undefined length) pixel data, the offset None when it cannot be located
    #: (deflated data set) or when there is none.
    pixel_offset: Mapped[int | None] = mapped_column(BigInteger)
    pixel_length: Mapped[int | None] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    #: SHA-256 of the stored bytes: re-sending the same bytes is an idempotent success.
    digest: Mapped[str] = mapped_column(String(64))
    dicom_json: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    series: Mapped[Series] = relationship(back_populates="instances")


# --- FHIR resources stored as such (Patient, DiagnosticReport, Binary, Endpoint...) ------------
# ImagingStudy is not among them: it is derived from the study / series / instance rows above.

class FhirResource(Base):
    """The current version of one FHIR resource (a deleted one keeps its row, ``deleted`` set).

    ``content`` is the resource's JSON as served, ``meta.versionId`` and ``meta.lastUpdated``
    included. A Binary's bytes are a blob (``blob_key``); its ``content`` holds the resource
    without ``data``.
    """

    __tablename__ = "fhir_resource"
    __table_args__ = (UniqueConstraint("type", "id"), Index("ix_fhir_resource_type_updated", "type", "last_updated"))

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    #: Organisation owning the resource (the ``org`` claim of the token that created it).
    org: Mapped[str] = mapped_column(String(64), index=True)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted: Mapped[bool] = mapped_column(Boolean, server_default="0")
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    blob_key: Mapped[str | None] = mapped_column(String(64))


class FhirVersion(Base):
    """One version of a resource, for vread and history (``content`` None: the delete)."""

    __tablename__ = "fhir_version"
    __table_args__ = (UniqueConstraint("resource_pk", "version"),
                      Index("ix_fhir_version_type_updated", "type", "last_updated"))

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_pk: Mapped[int] = mapped_column(ForeignKey("fhir_resource.pk"))
    type: Mapped[str] = mapped_column(String(40))
    version: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The interaction that made this version: ``POST``, ``PUT``, ``PATCH`` or ``DELETE``.
    method: Mapped[str] = mapped_column(String(8))
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The Binary's bytes of this version (the blob sweep keeps every blob named here).
    blob_key: Mapped[str | None] = mapped_column(String(64), index=True)


class FhirIndex(Base):
    """One search-parameter value of the current version of a resource.

    See :class:`drimhub.fhir.registry.IndexValue` for what each column holds per parameter type.
    """

    __tablename__ = "fhir_index"
    __table_args__ = (
        Index("ix_fhir_index_value", "type", "param", "value"),
        Index("ix_fhir_index_ref", "param", "ref_type", "ref_id"),
        Index("ix_fhir_index_date", "type", "param", "low"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_pk: Mapped[int] = mapped_column(ForeignKey("fhir_resource.pk", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    param: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(255))
    value: Mapped[str | None] = mapped_column(String(255))
    exact: Mapped[str | None] = mapped_column(String(255))
    low: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    high: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ref_type: Mapped[str | None] = mapped_column(String(40))
    ref_id: Mapped[str | None] = mapped_column(String(64))
