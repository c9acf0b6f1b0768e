"""WADO-RS (PS3.18 §10.4): instances, metadata, bulk data and frames of stored studies.

Each function takes a read session and the blob store, and returns a :class:`WadoAnswer`
(status, headers, body) that the view wraps in a response. Bodies are generators of part
headers and file chunks: every row is fetched before the answer is returned, so streaming needs
no session, and no more than one instance (when it is transcoded) or one frame is ever held in
memory.

Every function takes the caller's :class:`~drimhub.store.access.Access`: a study of an
organisation the caller may not see is answered as if it did not exist (404), and
:func:`check_patient` refuses another patient's study to a ``patient/`` scope (403, never a
partial answer: Argonaut SMART Imaging Access).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import orjson
from pydicom import dcmread
from sqlalchemy.orm import Session
from werkzeug.wsgi import ClosingIterator

from drimhub.dicomweb.attributes import PIXEL_DATA
from drimhub.dicomweb import frames as fr
from drimhub.dicomweb import negotiation as neg
from drimhub.dicomweb import transcode
from drimhub.dicomweb import xml as dicom_xml
from drimhub.dicomweb.ranges import content_range, parse_range
from drimhub.dicomweb.ingest import BULK_PREFIX
from drimhub.dicomweb.multipart import new_boundary, write_parts
from drimhub.errors import Forbidden, NotAcceptable, NotFound
from drimhub.store import retrieve
from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore
from drimhub.store.retrieve import StoredInstance, StudyRef

DICOM_JSON = "application/dicom+json"
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_CHUNK = 1 << 20
#: (content type, body chunks, length when known) of one part.
Part = tuple[str, Iterable[bytes], int | None]


@dataclass
class WadoAnswer:
    """What a view turns into a response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Iterable[bytes] | bytes = b""


@dataclass(frozen=True)
class Scope:
    """The study, series or instance a request is about (PS3.18 §10.4.1.1)."""

    study: str
    series: str | None = None
    sop: str | None = None

    def describe(self) -> str:
        if self.sop:
            return f"instance {self.sop} of series {self.series} in study {self.study}"
        if self.series:
            return f"series {self.series} in study {self.study}"
        return f"study {self.study}"


def locate(session: Session, study: str, access: Access) -> StudyRef:
    """The study a WADO-RS or DELETE request names, when the caller's organisations see it.

    Raises
    ------
    NotFound
        No such study, or a study of an organisation the caller may not see (the same answer:
        nothing tells another organisation that the UID exists here).
    """
    ref = retrieve.locate_study(session, study, access)
    if ref is None:
        raise NotFound(f"no study {study}")
    return ref


def check_patient(ref: StudyRef, access: Access) -> None:
    """Refuse a study of another patient than the one of a ``patient/`` scope.

    Raises
    ------
    Forbidden
        The study is not of the patient in the token's context.
    """
    if not access.sees_patient(ref.patient_id, ref.issuer_of_patient_id):
        raise Forbidden(f"study {ref.study_uid} is not of the patient in the access token's context")


def locate_instance(session: Session, scope: Scope, access: Access) -> tuple[StudyRef, StoredInstance] | None:
    """The instance ``scope`` names and its study, in one query, when the caller sees both; else None."""
    assert scope.series is not None and scope.sop is not None
    return retrieve.instance_in_study(session, access, scope.study, scope.series, scope.sop)


def find_instances(session: Session, scope: Scope, access: Access) -> list[StoredInstance]:
    """The visible instances in scope, in retrieval order; :class:`NotFound` when there are none."""
    found = retrieve.instances(session, access, scope.study, scope.series, scope.sop)
    if not found:
        raise NotFound(f"no {scope.describe()}")
    return found


def multipart_answer(parts: list[Part], part_type: str) -> WadoAnswer:
    """A multipart/related answer (PS3.18 §8.6.1.2); Content-Length when every part's is known."""
    boundary = new_boundary()
    headers = {"Content-Type": f'multipart/related; type="{part_type}"; boundary={boundary}'}
    lengths = [length for _, _, length in parts if length is not None]
    if len(lengths) == len(parts):  # framing as written by multipart.write_parts
        framing = sum(len(f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n\r\n") for ctype, _, _ in parts)
        headers["Content-Length"] = str(framing + sum(lengths) + len(f"--{boundary}--\r\n"))
    return WadoAnswer(200, headers, write_parts(((ctype, chunks) for ctype, chunks, _ in parts), boundary))


# --- PS3.18 §10.4.1.1.1-3 Study, Series, Instance resources -------------------------------

def encodable(inst: StoredInstance) -> tuple[str, ...]:
    """Compressed syntaxes ``inst`` can be transcoded to (none when its pixels cannot be decoded)."""
    if not neg.can_decode(inst.transfer_syntax):
        return ()
    return transcode.targets(inst.bits_allocated, inst.samples_per_pixel, inst.rows is not None)


def retrieve_instances(session: Session, blobs: FileBlobStore, scope: Scope, accept: str | None, *,
                       access: Access, range_header: str | None = None) -> WadoAnswer:
    """The instances of a study, series or one instance as ``multipart/related; type="application/dicom"``.

    The transfer syntax is chosen per instance (PS3.18 §8.7.8.2 note 1): the first range of
    the Accept header, by q-value, whose syntax this node can produce for it: as stored,
    Explicit VR Little Endian, or transcoded (:mod:`transcode`), instance by instance while the
    answer streams. A single instance asked as a bare ``application/dicom`` and sent as stored
    honours ``range_header`` (:mod:`ranges`).

    Raises
    ------
    NotFound
        Nothing in scope.
    NotAcceptable
        Some instance cannot be produced in any representation the client accepts.
    RangeNotSatisfiable
        The range starts past the end of the instance.
    """
    found = find_instances(session, scope, access)
    ranges = neg.parse_accept(accept)
    chosen: dict[tuple[str, tuple[str, ...]], neg.Selection] = {}
    for inst in found:
        key = (inst.transfer_syntax, encodable(inst))
        if key not in chosen:
            selection = neg.select_dicom(ranges, key[0], single_part=scope.sop is not None, encodable=key[1])
            if selection is None:
                raise NotAcceptable(f"instance {inst.sop_uid} stored in {key[0]} cannot be sent in any acceptable "
                                    f"representation; this node can send it in {', '.join(neg.dicom_syntaxes(*key))}")
            chosen[key] = selection
    files = fr.BlobFiles(blobs, [inst.blob_key for inst in found])
    parts: list[Part] = []
    for inst in found:
        selection = chosen[(inst.transfer_syntax, encodable(inst))]
        length = inst.size if selection.transfer_syntax == inst.transfer_syntax else None
        if length is None and inst.transfer_syntax not in neg.NATIVE_LITTLE_ENDIAN:
            fr.check_decodable(inst, whole=True)
        parts.append((selection.content_type(), _instance_chunks(files, inst, selection.transfer_syntax), length))
    if not next(iter(chosen.values())).multipart:  # a bare application/dicom for one instance
        return closing_files(_single_part(files, found[0], parts[0], range_header), files)
    return closing_files(multipart_answer(parts, neg.DICOM), files)


def _single_part(files: fr.BlobFiles, inst: StoredInstance, part: Part, range_header: str | None) -> WadoAnswer:
    """One instance as a bare ``application/dicom``; a byte range of it when sent as stored."""
    ctype, chunks, length = part
    if length is None:
        return WadoAnswer(200, {"Content-Type": ctype}, chunks)
    return _ranged(ctype, length, chunks, lambda first, size: _released(files, inst, files.iter_range(
        inst.blob_key, first, size)), range_header)


def _ranged(ctype: str, length: int, whole: Iterable[bytes], read: Callable[[int, int], Iterable[bytes]],
            range_header: str | None) -> WadoAnswer:
    """A single-part answer of known ``length``: ``whole``, or the range ``read(first, size)`` (206)."""
    headers = {"Content-Type": ctype, "Accept-Ranges": "bytes"}
    wanted = parse_range(range_header, length)
    if wanted is None:
        return WadoAnswer(200, headers | {"Content-Length": str(length)}, whole)
    first, last = wanted
    headers |= {"Content-Range": content_range(first, last, length), "Content-Length": str(last - first + 1)}
    return WadoAnswer(206, headers, read(first, last - first + 1))


def _released(files: fr.BlobFiles, inst: StoredInstance, chunks: Iterable[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        files.release(inst.blob_key)


def closing_files(answer: WadoAnswer, files: fr.BlobFiles) -> WadoAnswer:
    """``answer`` whose body closes ``files`` when the response is closed (WSGI ``close()``, PEP 3333)."""
    assert not isinstance(answer.body, bytes)
    answer.body = ClosingIterator(answer.body, [files.close])
    return answer


def _instance_chunks(blobs: fr.BlobFiles, inst: StoredInstance, syntax: str) -> Iterator[bytes]:
    """The Part 10 bytes of ``inst`` in ``syntax`` (a generator: work starts on first ``next()``).

    The instance's file is closed once its bytes are out.
    """
    try:
        if syntax == inst.transfer_syntax:
            yield from blobs.iter_range(inst.blob_key)
        elif (syntax == neg.EXPLICIT_VR_LE and inst.transfer_syntax == neg.IMPLICIT_VR_LE
              and _pixel_data_is_last(inst)):
            yield from _implicit_to_explicit(blobs, inst)
        else:
            yield from _chunked(transcode.transcode_instance(blobs.file(inst.blob_key), syntax))
    finally:
        blobs.release(inst.blob_key)


def _pixel_data_is_last(inst: StoredInstance) -> bool:
    if inst.pixel_offset is None or inst.pixel_length is None:
        return inst.rows is None and inst.number_of_frames is None  # no pixel data at all
    return inst.pixel_offset + inst.pixel_length == inst.size


def _implicit_to_explicit(blobs: fr.BlobFiles, inst: StoredInstance) -> Iterator[bytes]:
    """Implicit VR LE → Explicit VR LE without touching pixels: the header re-encoded by pydicom,
    then the stored Pixel Data value streamed from the blob behind an explicit OW header."""
    ds = dcmread(blobs.file(inst.blob_key), stop_before_pixels=True)
    transcode.without_group_lengths(ds)
    ds.file_meta.TransferSyntaxUID = neg.EXPLICIT_VR_LE
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    yield buf.getvalue()
    if inst.pixel_offset is not None and inst.pixel_length is not None:
        # (7FE0,0010) OW, 2 reserved bytes, 32-bit length (PS3.5 §7.1.2, Table 7.1-1)
        yield b"\xe0\x7f\x10\x00OW\x00\x00" + inst.pixel_length.to_bytes(4, "little")
        yield from blobs.iter_range(inst.blob_key, inst.pixel_offset, inst.pixel_length)


def _chunked(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        yield bytes(view[start:start + _CHUNK])


# --- PS3.18 §10.4.1.1.2 Metadata resources ----------------------------------------------

def retrieve_metadata(session: Session, scope: Scope, base: str, accept: str | None,
                      if_none_match: str | None = None, gzip_ok: bool = False, *, access: Access) -> WadoAnswer:
    """DICOM JSON (PS3.18 §F.2) of every instance in scope, from the stored JSON; or DICOM XML.

    ``multipart/related; type="application/dicom+xml"`` preferred to JSON in the Accept header
    gets one Native DICOM Model document per instance (:mod:`xml`, PS3.19 §A.1), without ETag.

    The stored objects are concatenated as they are, the ``drimhub-base:`` prefix of their
    BulkDataURIs replaced by ``base``; no JSON is parsed. The ETag hashes the base URL and the
    (pk, digest) of each instance, so any change of the answer changes it.

    Raises
    ------
    NotFound
        Nothing in scope.
    NotAcceptable
        The client accepts neither JSON nor multipart XML.
    """
    as_xml = neg.metadata_format(neg.parse_accept(accept))
    rows = retrieve.metadata(session, access, scope.study, scope.series, scope.sop)
    if not rows:
        raise NotFound(f"no {scope.describe()}")
    old = b'"BulkDataURI":"' + BULK_PREFIX.encode()
    if as_xml:  # PS3.18 §10.4.1.1.2: one Native DICOM Model part per instance
        datasets = (orjson.loads(row[2].replace(old, b'"BulkDataURI":"' + base.encode())) for row in rows)
        return multipart_answer(dicom_xml.parts(datasets), dicom_xml.DICOM_XML)
    digest = hashlib.blake2b(base.encode(), digest_size=16)
    for pk, sha, _ in rows:
        digest.update(f"{pk}:{sha};".encode())
    etag = f'"{digest.hexdigest()}{"-gz" if gzip_ok else ""}"'
    headers = {"ETag": etag, "Vary": "Accept, Accept-Encoding", "Cache-Control": "private, no-cache"}
    if if_none_match and (if_none_match.strip() == "*" or etag in _etags(if_none_match)):
        return WadoAnswer(304, headers)  # RFC 9110 §13.1.2
    body = (b"[" + b",".join(row[2] for row in rows) + b"]").replace(old, b'"BulkDataURI":"' + base.encode())
    headers["Content-Type"] = DICOM_JSON
    if gzip_ok and len(body) > 1024:
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return WadoAnswer(200, headers, body)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


# --- PS3.18 §10.4.1.1.5-6 Bulkdata and Frames resources ------------------------------------

def retrieve_frames(session: Session, blobs: FileBlobStore, scope: Scope, numbers: list[int],
                    accept: str | None, *, access: Access, instance: StoredInstance | None = None) -> WadoAnswer:
    """Frames of one instance, in the order asked, one part each (PS3.18 §10.4.1.1.6, §8.6.1.2).

    Raises
    ------
    NotFound
        No such instance, no pixel data, or a frame number past NumberOfFrames.
    NotAcceptable
        The frames cannot be produced in any acceptable media type.

    ``instance``: the instance in scope when the caller has already found it (:func:`locate_instance`).
    """
    inst = instance or find_instances(session, scope, access)[0]
    fr.check_frames(inst, numbers)
    selection = _select_pixels(inst, accept)
    if selection.transfer_syntax != inst.transfer_syntax:
        fr.check_decodable(inst, whole=False)
    files = fr.BlobFiles(blobs, [inst.blob_key])
    parts: list[Part] = [(selection.content_type(), fr.frame_chunks(files, inst, n, selection),
                          fr.frame_length(inst, n, selection)) for n in numbers]
    return closing_files(multipart_answer(parts, selection.media_type), files)


def _select_pixels(inst: StoredInstance, accept: str | None) -> neg.Selection:
    selection = neg.select_bulk(neg.parse_accept(accept), inst.transfer_syntax, encodable=encodable(inst))
    if selection is None:
        offers = ", ".join(o.content_type() for o in neg.bulk_offers(inst.transfer_syntax, encodable(inst))) or "nothing"
        raise NotAcceptable(f"pixel data stored in {inst.transfer_syntax} can be sent as: {offers}")
    return selection


def retrieve_bulkdata(session: Session, blobs: FileBlobStore, scope: Scope, tag: str,
                      accept: str | None, *, access: Access, range_header: str | None = None,
                      instance: StoredInstance | None = None) -> WadoAnswer:
    """The value of one top-level bulk data element, as the BulkDataURIs of the metadata name it.

    Pixel Data comes from the blob range as one native part, or as one part per compressed
    frame when the client takes the stored media type (PS3.18 §8.6.1.2); other elements are read
    with pydicom. A bare ``application/octet-stream`` (no multipart) gets a single-part answer
    where its length is known, and honours ``range_header`` (:mod:`ranges`).

    Raises
    ------
    NotFound
        No such instance or element.
    NotAcceptable
        The client accepts no representation this node can produce.

    ``instance``: the instance in scope when the caller has already found it (:func:`locate_instance`).
    """
    if not _TAG.match(tag):
        raise NotFound(f"not a bulk data tag: {tag[:16]!r}")
    tag = tag.upper()
    inst = instance or find_instances(session, scope, access)[0]
    files = fr.BlobFiles(blobs, [inst.blob_key])
    try:
        return closing_files(_bulkdata(files, inst, tag, accept, range_header), files)
    except BaseException:
        files.close()
        raise


def _bulkdata(files: fr.BlobFiles, inst: StoredInstance, tag: str, accept: str | None,
              range_header: str | None) -> WadoAnswer:
    """The answer of :func:`retrieve_bulkdata` for a found instance, read from ``files``."""
    if tag == PIXEL_DATA and inst.number_of_frames is not None:
        selection = _select_pixels(inst, accept)
        if selection.media_type == neg.OCTET_STREAM:
            if inst.transfer_syntax not in neg.NATIVE_LITTLE_ENDIAN:
                fr.check_decodable(inst, whole=True)
            length = fr.pixel_data_length(inst, selection)
            if not selection.multipart and length is not None and inst.pixel_offset is not None:
                start = inst.pixel_offset
                return _ranged(selection.content_type(), length, fr.pixel_data_chunks(files, inst, selection),
                               lambda first, size: files.iter_range(inst.blob_key, start + first, size), range_header)
            return multipart_answer([(selection.content_type(), fr.pixel_data_chunks(files, inst, selection),
                                fr.pixel_data_length(inst, selection))], neg.OCTET_STREAM)
        return multipart_answer([(selection.content_type(), fr.frame_chunks(files, inst, n, selection), None)
                           for n in range(1, inst.number_of_frames + 1)], selection.media_type)
    octet = neg.select_bulk(neg.parse_accept(accept), inst.transfer_syntax, pixel_data=False)
    if octet is None:
        raise NotAcceptable("bulk data is available as application/octet-stream only")
    value = fr.read_element(files, inst, tag)  # read now: a missing element is a 404, not a broken stream
    if not octet.multipart:
        return _ranged(octet.content_type(), len(value), [value],
                       lambda first, size: [value[first:first + size]], range_header)
    return multipart_answer([(octet.content_type(), [value], len(value))], neg.OCTET_STREAM)
