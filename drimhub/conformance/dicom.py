"""The DICOMweb conformance statement: what drimhub supports, section by section of PS3.18.

Kept as data (one row per service and section) and rendered as Markdown or JSON, so that the
statement served at ``/conformance/dicomweb`` and the README say the same thing.
"""

from __future__ import annotations

from typing import NamedTuple


class Row(NamedTuple):
    section: str
    feature: str
    status: str  # "supported", "partial" or "not supported"
    notes: str


#: PS3.18 edition this statement was written against.
EDITION = "DICOM PS3.18 2024 and later"

STATEMENT: tuple[Row, ...] = (
    Row("10.5", "Store Instances (STOW-RS): POST /studies and /studies/{study}", "supported",
        'multipart/related; type="application/dicom" only (a transfer-syntax parameter is accepted); other '
        "media types: 415; no boundary or malformed body: 400. The body is streamed: each part is spooled "
        "to disk, its header parsed without the pixel data."),
    Row("10.5.3", "Store response: 200 / 202 / 409 / 400 (Table 10.5.3-1)", "supported",
        "ReferencedSOPSequence with a RetrieveURL per instance, FailedSOPSequence with FailureReason, the "
        "study's RetrieveURL. 0xC000 cannot understand; 0xA900 Study Instance UID differs from the target "
        "URL's, or the series already belongs to another study; 0x0111 same SOP Instance UID with other "
        "content (policy 'reject', DRIMHUB_STOW_DUPLICATE_POLICY=overwrite replaces it); 0x0110 processing "
        "failure. The same bytes sent again: success, nothing written."),
    Row("10.6", "Search (QIDO-RS): the six search URLs", "supported",
        "/studies, /series, /instances, /studies/{s}/series, /studies/{s}/instances, "
        "/studies/{s}/series/{se}/instances; application/dicom+json (application/json accepted), or "
        'multipart/related; type="application/dicom+xml" (PS3.19 Native DICOM Model, one part per match) by '
        "Accept or the accept= parameter; no match: 200 with []."),
    Row("8.3.4", "Query parameters: attributes by keyword or tag, includefield, limit, offset", "supported",
        "Single value, wildcard * and ?, date/time ranges (open ranges too), UID lists, universal matching. "
        "PatientName and ReferringPhysicianName match case- and accent-insensitively; other strings exactly. "
        "Unknown or malformed parameters: 400. Answers larger than DRIMHUB_QIDO_MAX_RESULTS are truncated "
        "with a Warning: 299 header."),
    Row("8.3.4.2", "fuzzymatching", "supported",
        "fuzzymatching=true on PatientName and ReferringPhysicianName: each word of the value must start a "
        "word of the name, in any order, ignoring case and accents (anne dur finds DURAND^Anne); a value "
        "with wildcards stays a wildcard match."),
    Row("10.4.1.1.1", "Retrieve study, series, instance (WADO-RS)", "supported",
        'multipart/related; type="application/dicom", streamed instance by instance; a single instance also '
        "as a bare application/dicom, with byte ranges (206/416) when sent as stored. transfer-syntax=* "
        "serves as stored; the default is Explicit VR Little Endian. Decoded: Implicit/Explicit VR LE, "
        "Deflated, JPEG 4.50/4.51/4.57/4.70, JPEG-LS 4.80/4.81, JPEG 2000 4.90/4.91, HTJ2K 4.201-4.203, "
        "RLE 1.2.5. Encoded: Explicit VR LE, RLE Lossless, JPEG 2000 Lossless, JPEG-LS Lossless (bit-exact), "
        "and JPEG Baseline 4.50 (8-bit only, when named; a derived image: Lossy Image Compression attributes "
        "set, Image Type DERIVED, a new SOP Instance UID, PS3.3 C.7.6.1.1.5). The first syntax by q-value that "
        "can be produced wins; otherwise 406."),
    Row("10.4.1.1.2", "Retrieve metadata (study, series, instance)", "supported",
        "application/dicom+json with bulk data as BulkDataURI, served from the stored JSON without reading "
        "the files; ETag, and 304 on If-None-Match. Also multipart/related; type=\"application/dicom+xml\" "
        "(PS3.19), one part per instance."),
    Row("10.4.1.1.5", "Retrieve bulk data", "supported",
        "Every BulkDataURI the metadata hands out answers; a bare application/octet-stream gets one part "
        "with byte ranges (Range: bytes=a-b, a-, -n; 206, 416)."),
    Row("10.4.1.1.6", "Retrieve frames", "supported",
        "application/octet-stream for native pixel data; compressed frames as stored when accepted, "
        "decoded otherwise, or transcoded to image/jp2, image/jls, image/dicom-rle and (8-bit) image/jpeg. "
        "A frame past the end: 404."),
    Row("10.4.1.1.3-4", "Rendered and thumbnail resources (study, series, instance, frames)", "supported",
        "image/jpeg (default), image/png, image/gif (animated for a multi-frame instance); quality, viewport "
        "(with source region), window=center,width,linear|linear-exact|sigmoid; annotation accepted and "
        "ignored. Modality LUT, VOI LUT or the file's first window, MONOCHROME1 inverted; RGB, YBR, palette. "
        "Series and study: the middle image. Thumbnails fit 128x128. Encapsulated PDF as application/pdf; "
        "MPEG-2/MPEG-4/HEVC video passed through."),
    Row("8.9", "Retrieve capabilities (OPTIONS)", "partial", "OPTIONS answers with an Allow header; no WADL."),
    Row("9", "WADO-URI (/wado)", "supported",
        "requestType=WADO, studyUID, seriesUID, objectUID; contentType application/dicom (transferSyntax), "
        "image/jpeg (default for images), image/png, image/gif, a document's MIME type; frameNumber, "
        "windowCenter/windowWidth, rows/columns, region, imageQuality. anonymize=yes and presentationUID: "
        "400 (not supported)."),
    Row("11", "Worklist (UPS-RS)", "not supported", ""),
    Row("-", "DELETE /studies/{s}[/series/{se}[/instances/{i}]] (vendor extension)", "supported",
        "204; removes the rows, then the blobs; an emptied series or study goes too."),
    Row("-", "Security (vendor profile of SMART on FHIR for DICOMweb)", "supported",
        "Every URL needs a bearer token: QIDO ImagingStudy s, WADO r, STOW c, DELETE d (SMART v1 and v2 "
        "scopes); 401 / 403 with WWW-Authenticate. A study belongs to the organisation that stored it; "
        "other organisations neither find, read, write into nor delete it. Every access is audited."),
)


def to_markdown() -> str:
    """The statement as a Markdown document."""
    lines = [f"# drimhub DICOMweb conformance statement\n\nWritten against {EDITION}.\n",
             "| PS3.18 | feature | status | notes |", "|---|---|---|---|"]
    lines += [f"| §{r.section} | {r.feature} | {r.status} | {r.notes} |" for r in STATEMENT]
    return "\n".join(lines) + "\n"


def to_json() -> dict[str, object]:
    """The statement as JSON-ready data."""
    return {"edition": EDITION, "rows": [r._asdict() for r in STATEMENT]}
