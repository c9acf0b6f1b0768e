"""Binary: report documents (PDF, HTML) kept as blobs and served raw or as FHIR JSON.

FHIR R4 binary.html §"Binary content": a ``GET`` whose ``Accept`` is the stored content type
(or ``*/*``, or no Accept) returns the raw bytes, streamed from the blob with ``Content-Type``
the stored type and ``Content-Length``; ``Accept: application/fhir+json`` (or ``_format=json``)
returns the Binary resource with base64 ``data``, up to :data:`MAX_JSON_BYTES` (beyond that a
406 pointing to the raw form, so that no answer inlines megabytes of base64). A ``POST`` with
any Content-Type other than FHIR JSON stores the body as it comes, read from the request stream
in chunks and never held whole, up to :data:`MAX_RAW_BYTES` (413 beyond).

Access: the organisation's Binaries; ``patient/`` scopes get none (a Binary is in no patient
compartment: :func:`drimhub.store.fhir.visibility`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any, BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from drimhub.errors import NotAcceptable, PayloadTooLarge
from drimhub.fhir import resources
from drimhub.fhir.resources import Stored
from drimhub.store.blobs import FileBlobStore
from drimhub.store.engine import write_session

#: Largest Binary served as FHIR JSON (base64 ``data``).
MAX_JSON_BYTES = 16 * 1024 * 1024
#: Largest raw Binary body accepted.
MAX_RAW_BYTES = 2 * 1024 * 1024 * 1024
_CHUNK = 1 << 20
FHIR_JSON_TYPES = ("application/fhir+json", "application/json+fhir", "application/json")


def is_fhir_json(mimetype: str) -> bool:
    """True when a request body of this media type is a FHIR resource rather than raw bytes."""
    return mimetype in FHIR_JSON_TYPES


def read_chunks(stream: BinaryIO, limit: int | None = None) -> Iterator[bytes]:
    """The chunks of a request body, refusing it (413) once it exceeds ``limit`` bytes
    (default :data:`MAX_RAW_BYTES`)."""
    limit = MAX_RAW_BYTES if limit is None else limit
    total = 0
    while chunk := stream.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"a Binary is at most {limit} bytes")
        yield chunk


def wants_resource(accepted: list[str], content_type: str, fmt: str | None) -> bool:
    """True when the client asks for the Binary resource (JSON), False for the raw bytes.

    ``accepted`` lists the media types of ``Accept`` in order of preference (empty: no Accept).

    Raises
    ------
    NotAcceptable
        Neither the stored type, nor FHIR JSON, nor ``*/*`` is acceptable.
    """
    if fmt is not None:
        return True  # _format names a FHIR serialisation (the view has refused the others)
    for media in accepted:
        if media in (content_type, "*/*", f"{content_type.split('/')[0]}/*"):
            return False
        if media in FHIR_JSON_TYPES:
            return True
    if not accepted:
        return False
    raise NotAcceptable(f"this Binary is {content_type}: ask for it with Accept: {content_type} "
                        "or application/fhir+json")


def as_resource(blobs: FileBlobStore, stored: Stored) -> dict[str, Any]:
    """The Binary resource with its bytes in base64 ``data``.

    Raises
    ------
    NotAcceptable
        Larger than :data:`MAX_JSON_BYTES`: the raw form must be used.
    """
    content = dict(stored.content)
    if stored.blob_key is None:
        return content
    path = blobs.path(stored.blob_key)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise NotAcceptable(f"Binary/{stored.id} is larger than {MAX_JSON_BYTES} bytes: ask for it with "
                            f"Accept: {content.get('contentType')} to get the raw bytes")
    content["data"] = base64.b64encode(path.read_bytes()).decode()
    return content


def raw(blobs: FileBlobStore, stored: Stored) -> tuple[Iterator[bytes], int]:
    """The bytes of a Binary, as a chunk iterator, and their length."""
    if stored.blob_key is None:
        return iter(()), 0
    return blobs.iter_range(stored.blob_key), blobs.path(stored.blob_key).stat().st_size


def create_raw(sessions: sessionmaker[Session], blobs: FileBlobStore, content_type: str, stream: BinaryIO,
               org: str) -> Stored:
    """Store a raw request body as a new Binary: the body is streamed to a blob first, outside any
    transaction (a slow client must not hold the database's write lock, on SQLite everyone's),
    then one short write transaction inserts the row; the blob is removed if that fails."""
    key = resources.spool_blob(blobs, read_chunks(stream))
    try:
        with write_session(sessions) as session:
            return resources.insert_binary(session, key, content_type, org)
    except BaseException:
        blobs.delete(key)
        raise
