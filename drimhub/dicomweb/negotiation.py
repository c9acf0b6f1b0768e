"""Content negotiation of WADO-RS answers: Accept header → media type and transfer syntax.

Pure functions over strings: no Flask, no I/O. :func:`parse_accept` turns an Accept header into
media ranges; :func:`select_dicom` and :func:`select_bulk` pick, for one stored transfer syntax,
the representation of highest quality that this node can produce (PS3.18 §8.7.8 "Selected Media
Type" and §8.7.8.2 "Selected Transfer Syntax"). ``None`` means nothing acceptable can be produced
(the caller answers 406).

What the node produces: the stored bytes (``transfer-syntax=*`` or the stored syntax named
explicitly), Explicit VR Little Endian from anything pydicom can decode, and the compressed
syntaxes the caller says it can encode for that instance (``encodable``, from
:mod:`drimhub.dicomweb.transcode`). Among the ranges the client accepts, the first by q-value
(then specificity, then order) that can be produced wins (PS3.18 §8.7.8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache

from drimhub.errors import NotAcceptable

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
#: The value of the transfer-syntax parameter meaning "as stored" (PS3.18 §8.7.3.5.1).
AS_STORED = "*"

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"

#: Default transfer syntax of application/dicom (PS3.18 Table 8.7.3-2, §8.7.3.4).
DICOM_DEFAULT_SYNTAX = EXPLICIT_VR_LE
#: Default transfer syntax of uncompressed bulk data, application/octet-stream
#: (PS3.18 Table 8.7.3-4): native little-endian bytes.
BULK_DEFAULT_SYNTAX = EXPLICIT_VR_LE

#: Media type of each compressed transfer syntax in bulk data and frames
#: (PS3.18 Table 8.7.3-5, "Media Types and Transfer Syntax UIDs for Compressed Data in Bulkdata").
COMPRESSED_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",   # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",   # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",   # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",   # JPEG Lossless, First-Order Prediction (D)
    "1.2.840.10008.1.2.4.80": "image/jls",    # JPEG-LS Lossless (D)
    "1.2.840.10008.1.2.4.81": "image/jls",    # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",    # JPEG 2000 Lossless Only (D)
    "1.2.840.10008.1.2.4.91": "image/jp2",    # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",    # JPEG 2000 Part 2 Multi-component Lossless (D)
    "1.2.840.10008.1.2.4.93": "image/jpx",    # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless (D)
}

#: Earlier names still sent by some clients for the same media types (dicomweb-client sends both).
MEDIA_TYPE_ALIASES: dict[str, str] = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}

#: Native (uncompressed) transfer syntaxes whose pixel bytes are little endian, so that the
#: stored Pixel Data value is already application/octet-stream (PS3.18 Table 8.7.3-4).
NATIVE_LITTLE_ENDIAN = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE})

_TOKEN = re.compile(r'\s*([^\s;,=]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s;,]*))?\s*')


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header (RFC 9110 §12.5.1), with the part type of multipart.

    ``part`` is the media type of the parts: the ``type`` parameter of ``multipart/related``
    (PS3.18 §8.7.5), or the range itself for a single-part media type.
    """

    type: str
    params: dict[str, str] = field(default_factory=dict, hash=False)
    q: float = 1.0
    order: int = 0

    @property
    def multipart(self) -> bool:
        return self.type in (MULTIPART, "multipart/*", "*/*")

    @property
    def part(self) -> str:
        if self.type == MULTIPART:
            return _canonical(self.params.get("type", "*/*"))
        if self.type in ("multipart/*", "*/*"):
            return "*/*"
        return self.type

    @property
    def syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    @property
    def specificity(self) -> int:
        part = self.part
        score = 0 if part == "*/*" else 1 if part.endswith("/*") else 2
        return score * 2 + (1 if self.syntax else 0)


def _canonical(media_type: str) -> str:
    media_type = media_type.strip().lower()
    return MEDIA_TYPE_ALIASES.get(media_type, media_type)


def _split_ranges(header: str) -> list[str]:
    """Split on commas that are not inside a quoted string."""
    out, buf, quoted, escaped = [], [], False, False
    for ch in header:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    out.append("".join(buf))
    return [part for part in out if part.strip()]  # empty elements are legal (RFC 9110 §5.6.1)


def _parse_range(text: str, order: int) -> MediaRange | None:
    pieces = text.split(";", 1)
    media_type = _canonical(pieces[0])
    if media_type.count("/") != 1:
        return None
    params: dict[str, str] = {}
    q = 1.0
    for match in _TOKEN.finditer(pieces[1] if len(pieces) > 1 else ""):
        name, value = match.group(1).lower(), (match.group(2) or "")
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name == "q":
            try:
                q = min(max(float(value), 0.0), 1.0)
            except ValueError:
                return None
        else:
            params[name] = value.strip()
    return MediaRange(media_type, params, q, order)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges of an Accept header, best first.

    Ranges are ordered by q-value, then by specificity, then by their order in the header
    (RFC 9110 §12.5.1). A missing or empty header is ``*/*``. Malformed elements are ignored;
    ranges with ``q=0`` are dropped (not acceptable).

    Parameters
    ----------
    header : str or None
        The Accept header field value.

    Returns
    -------
    list of MediaRange
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges = [r for i, text in enumerate(_split_ranges(header)) if (r := _parse_range(text, i)) is not None]
    return sorted((r for r in ranges if r.q > 0), key=lambda r: (-r.q, -r.specificity, r.order))


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return pattern == media_type


@lru_cache(maxsize=64)
def can_decode(syntax: str) -> bool:
    """True when pydicom, with the installed plugins, can turn ``syntax`` into native pixels."""
    if syntax in NATIVE_LITTLE_ENDIAN:
        return True
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError, ImportError):
        return False


def dicom_syntaxes(stored: str, encodable: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Transfer syntaxes an application/dicom part can be sent in, for an instance stored in ``stored``.

    ``encodable`` lists the compressed syntaxes the instance's pixels can be encoded in.
    """
    if stored == EXPLICIT_VR_BE or not can_decode(stored):
        return (stored,)  # big endian is served as stored only (retired, PS3.5 A.3)
    # PS3.18 §8.7.3.4 note 2: every server converts to EVRLE
    return tuple(dict.fromkeys((stored, EXPLICIT_VR_LE, *encodable)))


@dataclass(frozen=True)
class Selection:
    """A chosen representation: the part media type and the transfer syntax of its content."""

    media_type: str
    transfer_syntax: str
    multipart: bool = True

    def content_type(self) -> str:
        """The part Content-Type, naming the transfer syntax (PS3.18 §8.7.3.5)."""
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def select_dicom(ranges: list[MediaRange], stored: str, *, single_part: bool = False,
                 encodable: tuple[str, ...] = ()) -> Selection | None:
    """Representation of one instance stored in ``stored`` as ``application/dicom``.

    Parameters
    ----------
    ranges : list of MediaRange
        The parsed Accept header, best first (:func:`parse_accept`).
    stored : str
        The transfer syntax the instance is stored in.
    single_part : bool
        Whether a bare ``application/dicom`` (one instance, no multipart) is an acceptable answer.
    encodable : tuple of str
        Compressed syntaxes this instance can be transcoded to.

    Returns
    -------
    Selection or None
        None when no acceptable range can be produced.
    """
    producible = dicom_syntaxes(stored, encodable)
    for rng in ranges:
        if not _type_matches(rng.part, DICOM) or (not rng.multipart and not single_part):
            continue
        wanted = rng.syntax or DICOM_DEFAULT_SYNTAX  # PS3.18 §8.7.3.5.2, Table 8.7.3-2
        if wanted == AS_STORED:
            return Selection(DICOM, stored, rng.multipart)
        if wanted in producible:
            return Selection(DICOM, wanted, rng.multipart)
    return None


def bulk_offers(stored: str, encodable: tuple[str, ...] = ()) -> list[Selection]:
    """What pixel data stored in ``stored`` can be sent as, the server's preference first.

    The stored frames, then native bytes, then the frames transcoded to each of ``encodable``
    (in its order) when the stored ones can be decoded.
    """
    offers: list[Selection] = []
    compressed = COMPRESSED_MEDIA_TYPES.get(stored)
    if compressed:
        offers.append(Selection(compressed, stored))  # the stored frames, as is (Table 8.7.3-5)
    if stored in NATIVE_LITTLE_ENDIAN or can_decode(stored):
        offers.append(Selection(OCTET_STREAM, BULK_DEFAULT_SYNTAX))  # Table 8.7.3-4
        offers.extend(Selection(COMPRESSED_MEDIA_TYPES[s], s) for s in encodable if s != stored)
    return offers


def select_bulk(ranges: list[MediaRange], stored: str, *, pixel_data: bool = True,
                encodable: tuple[str, ...] = ()) -> Selection | None:
    """Representation of pixel data (frames, bulk data) stored in ``stored``.

    ``transfer-syntax=*`` with ``application/octet-stream`` sends the stored bytes labelled with
    their syntax (what OHIF asks for). A compressed media type without a ``transfer-syntax``
    parameter accepts any syntax of that media type (lenient: Table 8.7.3-5 names a default,
    but clients such as dicomweb-client send the media type alone). Non-pixel bulk data is only
    ``application/octet-stream``.

    Returns
    -------
    Selection or None
        None when no acceptable range can be produced.
    """
    offers = bulk_offers(stored, encodable) if pixel_data else [Selection(OCTET_STREAM, BULK_DEFAULT_SYNTAX)]
    for rng in ranges:
        for offer in offers:
            if not _type_matches(rng.part, offer.media_type):
                continue
            wanted = rng.syntax
            if wanted == AS_STORED:
                return Selection(offer.media_type, stored if pixel_data else offer.transfer_syntax, rng.multipart)
            if wanted is None or wanted == offer.transfer_syntax:
                return replace(offer, multipart=rng.multipart)
    return None


def select_media_type(ranges: list[MediaRange], offers: tuple[str, ...]) -> str | None:
    """The first of ``offers`` (media types without parameters) the best acceptable range takes.

    A ``multipart/related`` range takes its ``type``; used for rendered resources (PS3.18 §8.7.4).
    """
    for rng in ranges:
        for offer in offers:
            if _type_matches(rng.part, offer):
                return offer
    return None


def is_decoded(selection: Selection, stored: str) -> bool:
    """True when producing ``selection`` from ``stored`` needs a pixel decode."""
    return stored not in NATIVE_LITTLE_ENDIAN and selection.transfer_syntax != stored


#: Media types of metadata answers (PS3.18 §10.4.1.1.2, Table 8.7.3-1): DICOM JSON; plain JSON
#: is accepted as a request for the same representation.
JSON_TYPES = ("application/dicom+json", "application/json")


def accepts_json(ranges: list[MediaRange]) -> bool:
    """True when some range accepts DICOM JSON (``multipart/related`` ranges do not)."""
    return any(not rng.type.startswith("multipart/") and any(_type_matches(rng.type, t) for t in JSON_TYPES) for rng in ranges)


def metadata_format(ranges: list[MediaRange]) -> bool:
    """Whether metadata goes out as multipart DICOM XML (True) rather than DICOM JSON (False).

    The first range, best first, that takes either decides (PS3.18 §10.4.1.1.2, Table 8.7.3-1).

    Raises
    ------
    NotAcceptable
        No range takes DICOM JSON or ``multipart/related; type="application/dicom+xml"``.
    """
    for rng in ranges:
        if rng.type == MULTIPART and rng.part == "application/dicom+xml":
            return True
        if accepts_json([rng]):
            return False
    raise NotAcceptable('metadata is available as application/dicom+json or multipart/related; '
                        'type="application/dicom+xml"')
