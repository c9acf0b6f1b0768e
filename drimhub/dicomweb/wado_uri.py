"""WADO-URI (PS3.18 §9, the URI Service): one instance, as DICOM or rendered, from query parameters.

``GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…`` with, optionally:

``contentType``
    A comma-separated list, the client's preference first (PS3.18 §9.1.2.1):
    ``application/dicom`` (then ``transferSyntax``, default Explicit VR Little Endian, any
    syntax WADO-RS produces), ``image/jpeg``, ``image/png``, ``image/gif``, or an Encapsulated
    Document's own type (``application/pdf``). Without it: ``image/jpeg`` for an instance with
    pixel data, ``application/dicom`` otherwise.
``frameNumber``, ``windowCenter``/``windowWidth`` (both or neither), ``rows``/``columns``
(the image fits in them, aspect ratio kept), ``region`` (x1,y1,x2,y2 as fractions of the
image), ``imageQuality`` (1-100)
    For rendered images, as the WADO-RS rendering parameters (:mod:`render`).
``anonymize=yes``
    Refused (400): this node does not de-identify; sending identified data to a client that
    asked for none would be worse than an error. ``presentationUID`` likewise (no presentation
    states are applied). ``charset`` is ignored (answers are binary).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from drimhub.dicomweb import negotiation as neg
from drimhub.dicomweb import render, rendered
from drimhub.dicomweb.uids import is_valid_uid
from drimhub.dicomweb.wado import Scope, WadoAnswer, find_instances, retrieve_instances
from drimhub.errors import InvalidRequest, NotAcceptable
from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore

#: Sides of the image when only one of rows/columns is given: no constraint on the other.
UNBOUNDED = 1 << 16


@dataclass(frozen=True)
class UriRequest:
    """A validated WADO-URI request."""

    scope: Scope
    content_types: tuple[str, ...]
    transfer_syntax: str | None
    frame: int | None
    render_args: dict[str, str]
    region: tuple[float, float, float, float] | None


def _uid(args: Mapping[str, str], name: str) -> str:
    value = args.get(name)
    if not value:
        raise InvalidRequest(f"{name} is required (PS3.18 §9.1.2.1)")
    if not is_valid_uid(value):
        raise InvalidRequest(f"{name} is not a valid UID: {value[:80]!r}")
    return value


def _positive(args: Mapping[str, str], name: str) -> int | None:
    text = args.get(name)
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InvalidRequest(f"{name} is a positive integer, not {text[:40]!r}")
    return int(text)


def _region(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidRequest(f"region is x1,y1,x2,y2 (fractions of the image), not {text[:60]!r}") from None
    if not 0 <= x1 < x2 <= 1 or not 0 <= y1 < y2 <= 1:
        raise InvalidRequest("region corners are fractions from 0 to 1, top left before bottom right")
    return x1, y1, x2, y2


def _render_args(args: Mapping[str, str]) -> dict[str, str]:
    """The WADO-URI rendering parameters as WADO-RS ones (PS3.18 §9.1.2.3 to §8.3.5.1)."""
    out: dict[str, str] = {}
    center, width = args.get("windowCenter"), args.get("windowWidth")
    if (center is None) != (width is None):
        raise InvalidRequest("windowCenter and windowWidth go together")
    if center is not None:
        out["window"] = f"{center},{width},linear"
    rows, columns = _positive(args, "rows"), _positive(args, "columns")
    if rows or columns:
        out["viewport"] = f"{columns or UNBOUNDED},{rows or UNBOUNDED}"
    if "imageQuality" in args:
        out["quality"] = args["imageQuality"]
    return out


def parse(args: Mapping[str, str]) -> UriRequest:
    """Validate the query parameters of a WADO-URI request.

    Raises
    ------
    InvalidRequest
        requestType is not WADO, a UID is missing or malformed, a parameter is malformed, or
        one this node refuses (anonymize, presentationUID) is present.
    """
    if args.get("requestType") != "WADO":
        raise InvalidRequest("requestType=WADO is required (PS3.18 §9.1.2.1)")
    if args.get("anonymize", "").lower() == "yes":
        raise InvalidRequest("anonymize=yes is not supported: this node does not de-identify instances")
    if "presentationUID" in args or "presentationSeriesUID" in args:
        raise InvalidRequest("presentation states are not applied by this node")
    scope = Scope(_uid(args, "studyUID"), _uid(args, "seriesUID"), _uid(args, "objectUID"))
    content_types = tuple(t.split(";")[0].strip().lower() for t in args.get("contentType", "").split(",") if t.strip())
    syntax = args.get("transferSyntax")
    if syntax is not None and neg.DICOM not in content_types:
        raise InvalidRequest("transferSyntax applies to contentType=application/dicom only")
    if syntax is not None and not is_valid_uid(syntax):
        raise InvalidRequest(f"transferSyntax is not a UID: {syntax[:80]!r}")
    render_args = _render_args(args)
    render.parse_params(render_args)  # the values are checked now, whatever is sent in the end
    return UriRequest(scope, content_types, syntax, _positive(args, "frameNumber"), render_args,
                      _region(args.get("region")))


def retrieve(session: Session, blobs: FileBlobStore, req: UriRequest, *, access: Access) -> WadoAnswer:
    """The answer of a WADO-URI request (PS3.18 §9.1.3).

    Raises
    ------
    NotFound
        No such instance (or not visible to the caller), or a frame past the end.
    NotAcceptable
        No content type asked for can be produced for this instance.
    """
    inst = find_instances(session, req.scope, access)[0]
    wanted = req.content_types or ((render.JPEG,) if inst.rows is not None else (neg.DICOM,))
    if wanted[0] == neg.DICOM:
        accept = f"{neg.DICOM}; transfer-syntax={req.transfer_syntax or neg.EXPLICIT_VR_LE}"
        return retrieve_instances(session, blobs, req.scope, accept, access=access)
    if neg.DICOM in wanted:
        raise NotAcceptable("contentType lists application/dicom after another type; put it first or alone")
    args = dict(req.render_args)
    if req.region is not None and inst.rows and inst.columns:
        x1, y1, x2, y2 = req.region
        sx, sy = round(x1 * inst.columns), round(y1 * inst.rows)
        sw, sh = max(1, round((x2 - x1) * inst.columns)), max(1, round((y2 - y1) * inst.rows))
        vw, vh = args["viewport"].split(",")[:2] if "viewport" in args else (sw, sh)
        args["viewport"] = f"{vw},{vh},{sx},{sy},{sw},{sh}"
    frames = [req.frame] if req.frame is not None else None
    return rendered.retrieve_rendered(session, blobs, req.scope, frames, args, ", ".join(wanted), access=access)
