"""Rendered and thumbnail resources (PS3.18 §10.4.1.1.3-4) at study, series, instance and frame level.

Which instance: the one named; for a series or a study, the representative instance is the
middle image, in retrieval order (series number, instance number), of the images in scope
(instances with pixel data); a scope without images falls back to its first instance (a
document). Which frames: those named (frame level); otherwise the first frame, or every frame
for an animated ``image/gif``. Several frames in JPEG or PNG come as ``multipart/related``, one
part per frame.

What: an image as ``image/jpeg`` (the default), ``image/png`` or ``image/gif`` (see
:mod:`render`); an Encapsulated Document as its own MIME type (``application/pdf``), rendered
only, not as a thumbnail; video (MPEG-2, MPEG-4 AVC, HEVC transfer syntaxes) passed through as
stored, streamed fragment by fragment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.pixels import pixel_array
from sqlalchemy.orm import Session

from drimhub.dicomweb import frames as fr
from drimhub.dicomweb import negotiation as neg
from drimhub.dicomweb import render
from drimhub.dicomweb.wado import Part, Scope, WadoAnswer, closing_files, find_instances, multipart_answer
from drimhub.errors import NotAcceptable
from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore
from drimhub.store.retrieve import StoredInstance

#: Video transfer syntaxes and their media types (PS3.18 Table 8.7.3-5), passed through as stored.
VIDEO_TYPES = {
    "1.2.840.10008.1.2.4.100": "video/mpeg", "1.2.840.10008.1.2.4.101": "video/mpeg",
    **{f"1.2.840.10008.1.2.4.{n}": "video/mp4" for n in range(102, 107)},
    "1.2.840.10008.1.2.4.107": "video/H265", "1.2.840.10008.1.2.4.108": "video/H265",
}
MIME_TYPE_OF_DOCUMENT = 0x00420012
ENCAPSULATED_DOCUMENT = "00420011"
ENCAPSULATED_DOCUMENT_LENGTH = 0x00420015
FRAME_TIME = 0x00181063


def representative(found: list[StoredInstance]) -> StoredInstance:
    """The instance a series or study is rendered with (module docstring)."""
    images = [inst for inst in found if inst.rows is not None]
    return images[(len(images) - 1) // 2] if images else found[0]


def retrieve_rendered(session: Session, blobs: FileBlobStore, scope: Scope, numbers: list[int] | None,
                      args: Mapping[str, str], accept: str | None, *, access: Access,
                      thumbnail: bool = False) -> WadoAnswer:
    """A rendered (or thumbnail) representation of a study, series, instance or frames.

    Parameters
    ----------
    numbers : list of int or None
        The frames named by a frame-level URL.
    args : mapping
        The query parameters (quality, viewport, window, annotation; PS3.18 §8.3.5.1).

    Raises
    ------
    NotFound
        Nothing in scope, or a frame past the end.
    InvalidRequest
        A malformed rendering parameter.
    NotAcceptable
        Nothing acceptable can be rendered (a document as a thumbnail, a video as an image).
    """
    params = render.parse_params(args, thumbnail=thumbnail)
    found = find_instances(session, scope, access)
    inst = found[0] if scope.sop else representative(found)
    ranges = neg.parse_accept(accept)
    files = fr.BlobFiles(blobs, [inst.blob_key])
    try:
        return closing_files(_rendered(files, inst, numbers, params, ranges), files)
    except BaseException:
        files.close()
        raise


def _choose(ranges: list[neg.MediaRange], offers: tuple[str, ...], what: str) -> str:
    chosen = neg.select_media_type(ranges, offers)
    if chosen is None:
        raise NotAcceptable(f"{what} can be rendered as {', '.join(offers) or 'nothing'}")
    return chosen


def _rendered(files: fr.BlobFiles, inst: StoredInstance, numbers: list[int] | None, params: render.RenderParams,
              ranges: list[neg.MediaRange]) -> WadoAnswer:
    if inst.rows is None:
        return _document(files, inst, ranges, params.thumbnail)
    if inst.transfer_syntax in VIDEO_TYPES:
        offers = () if params.thumbnail else (VIDEO_TYPES[inst.transfer_syntax],)
        media_type = _choose(ranges, offers, f"the video {inst.sop_uid}")
        return WadoAnswer(200, {"Content-Type": media_type}, _video_stream(files, inst))
    media_type = _choose(ranges, render.IMAGE_TYPES, f"instance {inst.sop_uid}")
    if numbers is not None:
        fr.check_frames(inst, numbers)
    fr.check_decodable(inst, whole=False)
    animated = numbers is None and media_type == render.GIF and not params.thumbnail
    wanted = numbers or (list(range(1, (inst.number_of_frames or 1) + 1)) if animated else [1])
    if len(wanted) > 1 and media_type != render.GIF:
        parts: list[Part] = [(media_type, _lazy(files, inst, [n], params, media_type), None) for n in wanted]
        return multipart_answer(parts, media_type)
    image = _frame_image(files, inst, wanted, params, media_type)  # now: a failure is an error answer, not a cut stream
    return WadoAnswer(200, {"Content-Type": media_type, "Content-Length": str(len(image))}, iter([image]))


def _lazy(files: fr.BlobFiles, inst: StoredInstance, numbers: list[int], params: render.RenderParams,
          media_type: str) -> Iterator[bytes]:
    yield _frame_image(files, inst, numbers, params, media_type)


def _frame_image(files: fr.BlobFiles, inst: StoredInstance, numbers: list[int], params: render.RenderParams,
                 media_type: str) -> bytes:
    """The frames rendered into one image file.

    Each frame is read with its header in one pass over the file (pydicom reads up to Pixel
    Data, then only that frame): the group 0028 elements (LUTs, windows, palettes) and Frame Time.
    """
    header = Dataset()
    images = []
    for number in numbers:
        # as stored (YBR kept): render.color converts with pydicom's convert_color_space
        arr = pixel_array(files.file(inst.blob_key), index=number - 1, as_rgb=False,
                          ds_out=header if not images else None, specific_tags=[FRAME_TIME])
        images.append(render.to_image(arr, header, params))
    frame_time = header.get("FrameTime")
    return render.encode(images, media_type, params.quality, float(frame_time) if frame_time else None)


def _video_stream(files: fr.BlobFiles, inst: StoredInstance) -> Iterator[bytes]:
    """The stored video stream: every fragment of the encapsulated Pixel Data, in order (PS3.5 §A.4)."""
    fp = files.file(inst.blob_key)
    if inst.pixel_offset is None:
        value = dcmread(fp).PixelData
        yield from generate_fragments(value[8 + int.from_bytes(value[4:8], "little"):])
        return
    fp.seek(inst.pixel_offset)
    parse_basic_offsets(fp)  # skips the Basic Offset Table item
    yield from generate_fragments(fp)


def _document(files: fr.BlobFiles, inst: StoredInstance, ranges: list[neg.MediaRange], thumbnail: bool) -> WadoAnswer:
    """An Encapsulated Document in its own MIME type (PS3.18 §10.4.1.1.3; PS3.3 C.24.2)."""
    header = dcmread(files.file(inst.blob_key), specific_tags=[MIME_TYPE_OF_DOCUMENT, ENCAPSULATED_DOCUMENT_LENGTH])
    mime = str(header.get("MIMETypeOfEncapsulatedDocument", "") or "")
    offers = (mime,) if mime and not thumbnail else ()
    media_type = _choose(ranges, offers, f"instance {inst.sop_uid}")
    value = fr.read_element(files, inst, ENCAPSULATED_DOCUMENT)
    length = header.get("EncapsulatedDocumentLength")
    if length is not None and 0 <= int(length) <= len(value):
        value = value[:int(length)]  # without the padding to an even length
    return WadoAnswer(200, {"Content-Type": media_type, "Content-Length": str(len(value))}, iter([value]))
