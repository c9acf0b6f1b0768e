"""Stored FHIR resources (Patient, DiagnosticReport, Binary...): the service every writer uses.

The REST views, transaction bundles and the DICOM derivation (:mod:`drimhub.fhir.derive`) all
write through these functions, so that validation (fhir.resources R4B), ids, ``meta``,
versions, history and the search index follow one rule. Functions take a SQLAlchemy ``Session``
in an open write transaction (the caller commits: one request or one bundle is one
transaction) and never touch Flask.

Rules (FHIR R4 http.html, resource.html#Meta):

- ids the server assigns are UUID 4 strings; ``PUT Type/id`` of an unknown id creates it with
  that id (``updateCreate``). The id space is global: an id held by another organisation's
  resource cannot be taken, and that update is a 409 (the only thing it reveals is that the id
  is taken, never the resource);
- ``meta.versionId`` is the version number as a string, ``meta.lastUpdated`` an instant in UTC
  (``Z``); other ``meta`` elements (profile, tag, security) are kept as sent;
- a Binary's bytes are a blob, its stored JSON has no ``data``; a DiagnosticReport's inline
  ``presentedForm[].data`` is moved to a Binary at write time (``url`` ``Binary/{id}``,
  ``size``, ``hash`` SHA-1 base64, R4 Attachment), so that no search result carries base64;
- DiagnosticReport business rules: :mod:`drimhub.fhir.report_rules`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from drimhub.errors import Conflict, Gone, InvalidRequest, NotFound, PreconditionFailed, Unprocessable
from drimhub.fhir import indexing, locks, report_rules
from drimhub.fhir.registry import resource_type
from drimhub.sharing import consent
from drimhub.store import fhir as rows
from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore
from drimhub.store.models import FhirIndex, FhirResource, utc

#: Largest inline base64 ``data`` accepted in a Binary or a presentedForm (decoded bytes); larger
#: documents go as a raw ``POST /fhir/Binary``.
MAX_INLINE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Stored:
    """One version of a stored resource, as served (``content`` has ``id`` and ``meta``)."""

    type: str
    id: str
    version: int
    last_updated: datetime
    org: str
    content: dict[str, Any]
    #: Blob of a Binary's bytes (None for other types).
    blob_key: str | None = None

    @property
    def etag(self) -> str:
        """``W/"<versionId>"`` (FHIR R4 http.html#versioning)."""
        return f'W/"{self.version}"'

    @classmethod
    def of(cls, row: FhirResource, content: bytes | None = None, version: int | None = None,
           last_updated: datetime | None = None, blob_key: str | None = None) -> Stored:
        """The current version of ``row``, or another one given by its content and number."""
        data = content if content is not None else row.content
        return cls(row.type, row.id, version or row.version, utc(last_updated or row.last_updated), row.org,
                   orjson.loads(data) if data else {}, blob_key if version else row.blob_key)


def instant(moment: datetime) -> str:
    """A FHIR instant in UTC with ``Z`` (``meta.lastUpdated``)."""
    return utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_etag(value: str) -> int | None:
    """The version number of an ETag (``W/"3"``, ``"3"`` or ``3``), None when it is not one."""
    text = value.strip().removeprefix("W/").strip('"')
    return int(text) if text.isdigit() else None


# --- validation and storage -------------------------------------------------------------------

def validate(resource: dict[str, Any], type_: str | None = None) -> str:
    """Check ``resource`` against the R4B model of a stored type; return its type.

    Raises
    ------
    InvalidRequest
        Not a resource, or of another type than ``type_`` (FHIR R4 http.html#create: 400).
    Unprocessable
        Not a stored type, or invalid (422, the validation errors in the message).
    """
    name = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest("the body is not a FHIR resource (no resourceType)")
    if type_ is not None and name != type_:
        raise InvalidRequest(f"the body is a {name}, the URL names {type_}")
    rtype = resource_type(name)
    if rtype is None or rtype.derived:
        raise Unprocessable(f"{name} resources are not stored by this server")
    try:
        get_fhir_model_class(name).model_validate(resource)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or name}: {e['msg']}" for e in exc.errors()[:10])
        raise Unprocessable(f"invalid {name}: {details}") from None
    return name


def _write(session: Session, blobs: FileBlobStore, row: FhirResource | None, type_: str, id_: str,
           resource: dict[str, Any], org: str, method: str) -> Stored:
    """Validate and complete ``resource``, then store it as the next version of ``row`` (or version 1)."""
    validate({**resource, "id": id_})
    resource = {**resource, "id": id_}
    previous = orjson.loads(row.content) if row is not None and row.content else None
    blob_key = None
    if type_ == "Binary":
        blob_key = _binary_data(blobs, resource, row)
    elif type_ == "DiagnosticReport":
        report_rules.apply(session, resource, org, previous)
        _move_presented_forms(session, blobs, resource, org)
    elif type_ == "Consent":
        consent.check_resolvable(session, resource)  # an opposition must name its patient (422)
    version = (row.version + 1) if row is not None else 1
    moment = datetime.now(timezone.utc)
    meta = {**(resource.get("meta") or {}), "versionId": str(version), "lastUpdated": instant(moment)}
    resource = {"resourceType": type_, "id": id_, "meta": meta,
                **{k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}}
    row = rows.write_version(session, row, type_=type_, id_=id_, org=org, version=version, last_updated=moment,
                             method=method, content=orjson.dumps(resource), blob_key=blob_key)
    rows.replace_index(session, row, [*indexing.index_values(resource), *consent.opposition_index(session, resource)])
    if type_ == "Patient":
        consent.refresh_for_patient(session, id_)  # its identifiers oppose with the Consents naming it
    return Stored.of(row)


def create(session: Session, blobs: FileBlobStore, resource: dict[str, Any], org: str,
           method: str = "POST", *, id_: str | None = None) -> Stored:
    """Validate ``resource`` (R4B model), give it a new id and ``meta``, store version 1 and index it.

    ``id_`` is an id assigned beforehand (a transaction resolving ``urn:uuid`` references); a
    new UUID otherwise.

    Raises
    ------
    Unprocessable
        Not a valid resource of a stored type (422, with the validation error in the message).
    """
    type_ = validate(resource)
    return _write(session, blobs, None, type_, id_ or new_id(), resource, org, method)


def new_id() -> str:
    """A server-assigned logical id (UUID 4)."""
    return str(uuid.uuid4())


def conditional_create(session: Session, blobs: FileBlobStore, resource: dict[str, Any], org: str,
                       criteria: str, access: Access) -> tuple[Stored, bool]:
    """``If-None-Exist: criteria`` (a search query string): the one match (False), or a new resource (True).

    Concurrent calls with the same criteria (or naming the same identifier) are serialised
    (:func:`~drimhub.fhir.locks.criteria_lock_keys`): exactly one creates. The match is returned
    whole: the caller decides whether the token may see it (:func:`drimhub.fhir.rest._create`).

    Raises
    ------
    PreconditionFailed
        More than one resource matches (FHIR R4 http.html#ccreate).
    InvalidQuery
        No search criteria, or result parameters (:func:`drimhub.fhir.search.match_ids`).
    """
    from drimhub.fhir.search import match_ids

    type_ = validate(resource)
    criteria = criteria.removeprefix(f"{type_}?")
    locks.lock_all(session, locks.criteria_lock_keys(type_, org, criteria))
    ids = match_ids(session, type_, criteria, access)
    if len(ids) > 1:
        raise PreconditionFailed(f"If-None-Exist: several {type_} resources match {criteria!r}")
    if ids:
        return read(session, type_, ids[0], access), False
    return create(session, blobs, resource, org), True


def find_by_identifier(session: Session, type_: str, system: str | None, value: str, org: str) -> list[Stored]:
    """Current, not deleted resources of ``type_`` of ``org`` with an identifier ``system|value``
    (any system when ``system`` is None)."""
    matching = select(FhirIndex.resource_pk).where(FhirIndex.type == type_, FhirIndex.param == "identifier",
                                                   FhirIndex.value == value)
    if system is not None:
        matching = matching.where(FhirIndex.system == system)
    found = session.scalars(select(FhirResource).where(
        FhirResource.type == type_, FhirResource.org == org, FhirResource.deleted.is_(False),
        FhirResource.pk.in_(matching)).order_by(FhirResource.pk))
    return [Stored.of(row) for row in found]


def read(session: Session, type_: str, id_: str, access: Access) -> Stored:
    """The current version, when ``access`` sees it.

    Raises
    ------
    NotFound
        Unknown, or not visible to ``access`` (another organisation, outside a patient compartment).
    Gone
        Deleted (410).
    """
    row = rows.get_visible(session, type_, id_, access)
    if row is None:
        raise NotFound(f"{type_}/{id_} is not known")
    if row.deleted:
        raise Gone(f"{type_}/{id_} was deleted", version=row.version, last_updated=row.last_updated)
    return Stored.of(row)


def vread(session: Session, type_: str, id_: str, version: int, access: Access) -> Stored:
    """Version ``version`` of a resource ``access`` sees (FHIR R4 http.html#vread).

    Raises
    ------
    NotFound
        Unknown resource or version.
    Gone
        That version is the record of a delete.
    """
    row = rows.get_visible(session, type_, id_, access)
    found = rows.version_of(session, row, version) if row is not None else None
    if found is None:
        raise NotFound(f"{type_}/{id_}/_history/{version} is not known")
    if found.content is None:
        raise Gone(f"{type_}/{id_}/_history/{version} is a delete", version=version,
                   last_updated=found.last_updated)
    return Stored.of(row, found.content, found.version, found.last_updated, found.blob_key)  # type: ignore[arg-type]


def _writable_row(session: Session, type_: str, id_: str, org: str, access: Access) -> FhirResource | None:
    """The row to write ``type_/id_`` over (locked), None when unknown; 409 when another org holds the id."""
    row = locks.lock_resource(session, type_, id_)
    if row is not None and (row.org != org or rows.get_visible(session, type_, id_, access) is None):
        raise Conflict(f"the id {type_}/{id_} is not available")
    return row


def _identifier_values(content: bytes | None) -> list[str]:
    resource = orjson.loads(content) if content else {}
    return [str(i.get("value")) for i in resource.get("identifier") or [] if isinstance(i, dict) and i.get("value")]


def check_version(row: FhirResource | None, if_match: str | None, label: str) -> None:
    """``If-Match`` against the current version (FHIR R4 http.html#concurrency): 412 when stale."""
    if if_match is None:
        return
    if row is None or row.deleted or parse_etag(if_match) != row.version:
        current = f'W/"{row.version}"' if row is not None and not row.deleted else "none"
        raise PreconditionFailed(f"If-Match {if_match} is not the current version of {label} ({current})")


def update(session: Session, blobs: FileBlobStore, type_: str, id_: str, resource: dict[str, Any], org: str,
           access: Access, if_match: str | None = None, method: str = "PUT") -> tuple[Stored, bool]:
    """Store ``resource`` as the next version of ``type_/id_`` (created with that id when unknown: True).

    A deleted resource is brought back by an update (a new version; True).

    Raises
    ------
    InvalidRequest
        The body's ``id`` is missing or differs from ``id_`` (FHIR R4 http.html#update: 400).
    Conflict
        The id belongs to a resource this caller does not see (409).
    PreconditionFailed
        ``if_match`` (``W/"n"``) is not the current version.
    Unprocessable
        Invalid resource.
    """
    validate(resource, type_)
    if resource.get("id") != id_:
        raise InvalidRequest(f"the body's id ({resource.get('id')!r}) must be the id of the URL ({id_!r})")
    row = _writable_row(session, type_, id_, org, access)
    check_version(row, if_match, f"{type_}/{id_}")
    created = row is None or row.deleted
    return _write(session, blobs, row, type_, id_, resource, org, method), created


def delete(session: Session, type_: str, id_: str, access: Access, if_match: str | None = None) -> Stored | None:
    """Delete ``type_/id_`` (a new version recording the delete); None when there was nothing to delete.

    Raises
    ------
    Conflict
        A Patient still referenced by a study or by a resource of its organisation.
    PreconditionFailed
        Stale ``if_match``.
    """
    row = rows.get_visible(session, type_, id_, access)
    if row is None:
        return None
    if type_ == "Patient":
        # the identifier locks of derive._merge_patient: a STOW linking a study to this Patient
        # and this delete run one after the other, so the check below sees the link (409) or the
        # STOW sees the Patient deleted (and makes another)
        held = locks.identifier_lock_keys(type_, row.org, _identifier_values(row.content))
        locks.lock_all(session, held)
    row = locks.lock_resource(session, type_, id_)
    if row is None or (row.deleted and if_match is None):
        return None
    if type_ == "Patient":
        locks.lock_all(session, set(locks.identifier_lock_keys(type_, row.org, _identifier_values(row.content))) - set(held))
    check_version(row, if_match, f"{type_}/{id_}")
    if type_ == "Patient":
        _check_unreferenced(session, row)
    moment = datetime.now(timezone.utc)
    row = rows.write_version(session, row, type_=type_, id_=id_, org=row.org, version=row.version + 1,
                             last_updated=moment, method="DELETE", content=None, blob_key=None)
    rows.replace_index(session, row, [])
    return Stored(type_, id_, row.version, moment, row.org, {})


def _check_unreferenced(session: Session, row: FhirResource) -> None:
    from drimhub.store.models import Study

    study = session.scalars(select(Study.study_uid).where(Study.patient_ref == row.id, Study.org == row.org)
                            .limit(1)).first()
    if study is not None:
        raise Conflict(f"Patient/{row.id} is the subject of ImagingStudy/{study}: delete the study first")
    referrers = rows.referrers(session, "Patient", row.id, row.org)
    if referrers:
        names = ", ".join(f"{t}/{i}" for t, i in referrers)
        raise Conflict(f"Patient/{row.id} is still referenced by {names}")


# --- Binary -----------------------------------------------------------------------------------

def _spool(blobs: FileBlobStore, chunks: Iterable[bytes]) -> tuple[str, int, str]:
    """Write ``chunks`` to a new blob: (key, size, SHA-1 base64)."""
    spooled = blobs.spool()
    sha1 = hashlib.sha1()
    try:
        for chunk in chunks:
            spooled.write(chunk)
            sha1.update(chunk)
    except BaseException:
        spooled.discard()
        raise
    key = blobs.commit(spooled)
    blobs.flush([key])  # durable before the row that points to it commits
    return key, spooled.size, base64.b64encode(sha1.digest()).decode()


def _decode(data: Any, label: str) -> bytes:
    try:
        raw = base64.b64decode(str(data), validate=True)
    except (binascii.Error, ValueError):
        raise Unprocessable(f"{label}: not base64") from None
    if len(raw) > MAX_INLINE_BYTES:
        raise Unprocessable(f"{label}: {len(raw)} bytes inline is more than {MAX_INLINE_BYTES}; "
                            "POST the document to /fhir/Binary with its own Content-Type")
    return raw


def _binary_data(blobs: FileBlobStore, resource: dict[str, Any], row: FhirResource | None) -> str | None:
    """Move a Binary's ``data`` to a blob (its key); without ``data`` the stored bytes are kept."""
    data = resource.pop("data", None)
    if data is None:
        return row.blob_key if row is not None else None
    return _spool(blobs, [_decode(data, "Binary.data")])[0]


def _move_presented_forms(session: Session, blobs: FileBlobStore, resource: dict[str, Any], org: str) -> None:
    for form in resource.get("presentedForm") or []:
        if "data" not in form:
            continue
        raw = _decode(form.pop("data"), "DiagnosticReport.presentedForm.data")
        binary = create_binary(session, blobs, form.get("contentType") or "application/octet-stream", [raw], org)
        form.update(url=f"Binary/{binary.id}", size=len(raw),
                    hash=base64.b64encode(hashlib.sha1(raw).digest()).decode())


def create_binary(session: Session, blobs: FileBlobStore, content_type: str, chunks: Any, org: str) -> Stored:
    """A Binary whose bytes come from ``chunks`` (an iterable of bytes, streamed to a blob, never
    held whole); ``content`` has ``contentType`` and no ``data``. Served at ``Binary/{id}``."""
    return insert_binary(session, spool_blob(blobs, chunks), content_type, org)


def spool_blob(blobs: FileBlobStore, chunks: Iterable[bytes]) -> str:
    """Write ``chunks`` to a new, durable blob (no transaction needed): its key."""
    return _spool(blobs, chunks)[0]


def insert_binary(session: Session, key: str, content_type: str, org: str) -> Stored:
    """A new Binary over the blob ``key`` (written beforehand with :func:`spool_blob`)."""
    id_ = new_id()
    moment = datetime.now(timezone.utc)
    content = {"resourceType": "Binary", "id": id_, "meta": {"versionId": "1", "lastUpdated": instant(moment)},
               "contentType": content_type}
    validate(content)
    row = rows.write_version(session, None, type_="Binary", id_=id_, org=org, version=1, last_updated=moment,
                             method="POST", content=orjson.dumps(content), blob_key=key)
    return Stored.of(row)
