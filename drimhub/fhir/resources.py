"""Stored FHIR resources (Patient, DiagnosticReport, Binary...): the service every writer uses.

The REST views, transaction bundles and the DICOM derivation (:mod:`drimhub.fhir.derive`) all
write through these functions, so that validation (fhir.resources R4B), ids, ``meta``,
versions, history and the search index follow one rule. Functions take a SQLAlchemy ``Session``
in an open write transaction (the caller commits: one request or one bundle is one
transaction) and never touch Flask.

INTERFACE CONTRACT (implemented by the resources engine; signatures are fixed, other modules
code against them):
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore


@dataclass(frozen=True)
class Stored:
    """One version of a stored resource, as served (``content`` has ``id`` and ``meta``)."""

    type: str
    id: str
    version: int
    last_updated: datetime
    org: str
    content: dict[str, Any]

    @property
    def etag(self) -> str:
        """``W/"<versionId>"`` (FHIR R4 http.html#versioning)."""
        return f'W/"{self.version}"'


def create(session: Session, blobs: FileBlobStore, resource: dict[str, Any], org: str,
           method: str = "POST") -> Stored:
    """Validate ``resource`` (R4B model), give it a new id and ``meta``, store version 1 and index it.

    Raises
    ------
    Unprocessable
        Not a valid resource of a stored type (422, with the validation error in the message).
    """
    raise NotImplementedError


def conditional_create(session: Session, blobs: FileBlobStore, resource: dict[str, Any], org: str,
                       criteria: str, access: Access) -> tuple[Stored, bool]:
    """``If-None-Exist: criteria`` (a search query string): the one match (False), or a new resource (True).

    Concurrent calls with the same criteria are serialised (:func:`lock`): exactly one creates.

    Raises
    ------
    PreconditionFailed
        More than one resource matches.
    """
    raise NotImplementedError


def find_by_identifier(session: Session, type_: str, system: str | None, value: str, org: str) -> list[Stored]:
    """Current, not deleted resources of ``type_`` of ``org`` with an identifier ``system|value``
    (any system when ``system`` is None)."""
    raise NotImplementedError


def lock(session: Session, key: str) -> None:
    """Serialise the writers of ``key`` until the end of the transaction.

    PostgreSQL: ``pg_advisory_xact_lock`` on a 64-bit hash of ``key``; SQLite: nothing (its
    writers are already serialised by :func:`drimhub.store.engine.write_session`).
    """
    raise NotImplementedError


def read(session: Session, type_: str, id_: str, access: Access) -> Stored:
    """The current version, when ``access`` sees it.

    Raises
    ------
    NotFound
        Unknown, or not visible to ``access`` (another organisation, outside a patient compartment).
    Gone
        Deleted (410).
    """
    raise NotImplementedError


def update(session: Session, blobs: FileBlobStore, type_: str, id_: str, resource: dict[str, Any], org: str,
           access: Access, if_match: str | None = None, method: str = "PUT") -> tuple[Stored, bool]:
    """Store ``resource`` as the next version of ``type_/id_`` (created with that id when unknown: True).

    Raises
    ------
    PreconditionFailed
        ``if_match`` (``W/"n"``) is not the current version.
    Unprocessable
        Invalid resource, or its ``id`` differs from ``id_``.
    """
    raise NotImplementedError


def create_binary(session: Session, blobs: FileBlobStore, content_type: str, chunks: Any, org: str) -> Stored:
    """A Binary whose bytes come from ``chunks`` (an iterable of bytes, streamed to a blob, never
    held whole); ``content`` has ``contentType`` and no ``data``. Served at ``Binary/{id}``."""
    raise NotImplementedError
