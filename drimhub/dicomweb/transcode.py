"""Transcoding on retrieve (PS3.18 §8.7.3.5): which syntaxes this node can produce, and producing them.

Decoding is pydicom's, with the installed plugins (pylibjpeg-libjpeg, -openjpeg, -rle, pyjpegls):
every syntax :func:`negotiation.can_decode` accepts. Encoding:

==========================  ===============================  ==================================
target                      library                          when
==========================  ===============================  ==================================
Explicit VR Little Endian   pydicom                          always
RLE Lossless (1.2.5)        pydicom's RLE encoder            any pixel data
JPEG 2000 Lossless (4.90)   pylibjpeg-openjpeg               any pixel data
JPEG-LS Lossless (4.80)     pyjpegls                         any pixel data
JPEG Baseline (4.50)        Pillow (ISO/IEC 10918-1)         8-bit unsigned, 1 or 3 samples; lossy
==========================  ===============================  ==================================

JPEG Lossless (4.57/4.70) and HTJ2K are decoded but not produced: no installed library encodes
them. Lossless targets keep every pixel bit-exact. A lossy target sets Lossy Image Compression
(0028,2110) to ``01`` and appends to Lossy Image Compression Ratio (0028,2112) and Method
(0028,2114), and the result is a new, derived image (PS3.3 C.7.6.1.1.5: "if the predecessor was
a DICOM image, then the Image shall receive a new SOP Instance UID"): Image Type value 1 becomes
DERIVED, the SOP Instance UID a new one (the same for every retrieval of the same derivation,
see :func:`derived_uid`), and Source Image Sequence and Derivation Description name the original.

An instance without Pixel Data asked in a compressed syntax is written with that syntax's
non-pixel encoding, Explicit VR Little Endian (PS3.5 §A.4), and labelled with it.
"""

from __future__ import annotations

import functools
import io
import uuid
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.pixels import get_encoder, iter_pixels

from drimhub.dicomweb.negotiation import EXPLICIT_VR_LE

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

#: Lossless compressed syntaxes this node encodes with pydicom's encoders.
LOSSLESS_TARGETS = (RLE_LOSSLESS, JPEG2000_LOSSLESS, JPEGLS_LOSSLESS)
#: Lossy syntaxes, produced only when the client names them (PS3.18 §8.7.3.5.2), with their
#: Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1, Defined Terms).
LOSSY_METHODS = {JPEG_BASELINE: "ISO_10918_1"}
#: Quality of a lossy JPEG produced for a transfer syntax (Pillow's 1-95 scale).
JPEG_QUALITY = 90


@functools.cache  # the installed plugins do not change while the process runs
def _available(syntax: str) -> bool:
    try:
        return bool(get_encoder(syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def encodable(syntax: str, bits_allocated: int | None, samples_per_pixel: int | None) -> bool:
    """True when pixel data of this geometry can be encoded in ``syntax``.

    Parameters
    ----------
    syntax : str
        A target transfer syntax.
    bits_allocated, samples_per_pixel : int or None
        The instance's geometry (None: no pixel data).

    Returns
    -------
    bool
    """
    if syntax == JPEG_BASELINE:  # PS3.5 §A.4.1: process 1 is 8-bit samples, 1 or 3 components
        return bits_allocated == 8 and samples_per_pixel in (1, 3)
    if bits_allocated == 1:
        return False  # the encoders take whole bytes
    return syntax in LOSSLESS_TARGETS and _available(syntax)


def targets(bits_allocated: int | None, samples_per_pixel: int | None, has_pixels: bool) -> tuple[str, ...]:
    """Compressed syntaxes an instance can be transcoded to, on top of Explicit VR Little Endian.

    An instance without pixel data can be labelled with any of them (PS3.5 §A.4).
    """
    candidates = (*LOSSLESS_TARGETS, *LOSSY_METHODS)
    if not has_pixels:
        return candidates
    return tuple(s for s in candidates if encodable(s, bits_allocated, samples_per_pixel))


def is_lossy(syntax: str) -> bool:
    """True for a target this node encodes lossily."""
    return syntax in LOSSY_METHODS


# --- whole instances -----------------------------------------------------------------------

def without_group_lengths(ds: Dataset) -> None:
    """Group lengths (gggg,0000) change with the encoding; they are retired (PS3.5 §7.2)."""
    for tag in [elem.tag for elem in ds if elem.tag.element == 0]:
        del ds[tag]


def transcode_instance(fp: Any, target: str) -> bytes:
    """The Part 10 bytes of the instance read from ``fp``, in ``target`` (one instance in memory).

    Parameters
    ----------
    fp : file-like
        The stored instance, at its start.
    target : str
        Explicit VR Little Endian or one of :func:`targets`.

    Returns
    -------
    bytes
    """
    ds = dcmread(fp)
    has_pixels = "PixelData" in ds
    if has_pixels and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # pixels now native, Explicit VR Little Endian
    without_group_lengths(ds)
    if not has_pixels or target == EXPLICIT_VR_LE:
        ds.file_meta.TransferSyntaxUID = target
    elif target in LOSSY_METHODS:
        _compress_jpeg_baseline(ds)
    else:
        ds.compress(target, generate_instance_uid=False)  # lossless: bit-exact by definition
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray[Any, Any], quality: int = JPEG_QUALITY) -> bytes:
    """One 8-bit frame (rows x columns, or rows x columns x 3 RGB) as a baseline JPEG.

    Color is written YCbCr without subsampling (4:4:4), so that the DICOM Photometric
    Interpretation is YBR_FULL (PS3.5 §8.2.1).
    """
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    image.save(buf, format="JPEG", quality=quality, subsampling=0, optimize=False)
    return buf.getvalue()


def _compress_jpeg_baseline(ds: Dataset) -> None:
    """Replace native 8-bit Pixel Data by baseline JPEG frames: a derived, lossy image (PS3.3 C.7.6.1.1.5)."""
    if ds.get("PixelRepresentation", 0) != 0:
        raise ValueError("JPEG baseline takes unsigned samples only (PS3.5 §8.2.1)")
    native = len(ds.PixelData)
    frames = [jpeg_bytes(arr) for arr in iter_pixels(ds)]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    if ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL"
        ds.PlanarConfiguration = 0
    ratio = native / max(1, sum(len(f) for f in frames))
    mark_lossy(ds, ratio, LOSSY_METHODS[JPEG_BASELINE])
    mark_derived(ds, derived_uid(str(ds.SOPInstanceUID), JPEG_BASELINE, JPEG_QUALITY),
                 f"lossy compressed ({LOSSY_METHODS[JPEG_BASELINE]}, ratio {ratio:.1f}:1)")
    ds.file_meta.TransferSyntaxUID = JPEG_BASELINE


def derived_uid(original: str, syntax: str, quality: int) -> str:
    """The SOP Instance UID of ``original`` lossy compressed in ``syntax`` at ``quality``.

    Derived from those three, so that every retrieval of the same lossy version carries the same
    UID and different versions different ones: a UUID-derived UID (PS3.5 §B.2, ``2.25.`` and the
    integer of a name-based UUID, RFC 9562 version 5).
    """
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'drimhub lossy {original} {syntax} {quality}').int}"


def mark_derived(ds: Dataset, uid: str, description: str) -> None:
    """Make ``ds`` a new image derived from itself (PS3.3 C.7.6.1.1.2, C.7.6.1.1.5, C.12.4.1.2).

    Image Type value 1 becomes DERIVED; the original is referenced in Source Image Sequence and
    the derivation noted in Derivation Description; ``uid`` becomes the SOP Instance UID.
    """
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    image_type = [str(v) for v in _values(ds.get("ImageType"))] or ["DERIVED", "SECONDARY"]
    ds.ImageType = ["DERIVED", *image_type[1:]]
    ds.SourceImageSequence = [*ds.get("SourceImageSequence", []), source]
    earlier = str(ds.get("DerivationDescription", "") or "")
    ds.DerivationDescription = f"{earlier}; {description}"[-1024:] if earlier else description
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid


def mark_lossy(ds: Dataset, ratio: float, method: str) -> None:
    """Record one more lossy compression (PS3.3 C.7.6.1.1.5): ratio and method appended, in order."""
    ratios = [str(v) for v in _values(ds.get("LossyImageCompressionRatio"))]
    methods = [str(v) for v in _values(ds.get("LossyImageCompressionMethod"))]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"[:16]]
    ds.LossyImageCompressionMethod = [*methods, method]


def _values(value: Any) -> list[Any]:
    """The values of an attribute as ``Dataset.get`` returns it (None, one value or a MultiValue)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue) else [value]


# --- single frames (bulk data, PS3.18 Table 8.7.3-5) ----------------------------------------

def encode_frame(arr: np.ndarray[Any, Any], header: Dataset, target: str) -> bytes:
    """One decoded frame as the bytes of ``target``'s media type (a codestream, or RLE segments).

    Parameters
    ----------
    arr : numpy.ndarray
        The frame as pydicom decodes it (color as RGB).
    header : Dataset
        The instance's Image Pixel module (Rows, Bits Stored, Pixel Representation…).
    target : str
        One of :func:`targets`.
    """
    if target in LOSSY_METHODS:
        return jpeg_bytes(arr)
    samples = int(header.get("SamplesPerPixel", 1))
    photometric = str(header.PhotometricInterpretation)
    if samples == 3:
        photometric = "RGB"  # pydicom decodes color to RGB (YBR converted)
    return bytes(get_encoder(target).encode(
        arr, rows=int(header.Rows), columns=int(header.Columns), samples_per_pixel=samples,
        bits_allocated=int(header.BitsAllocated), bits_stored=int(header.BitsStored),
        pixel_representation=int(header.get("PixelRepresentation", 0)), photometric_interpretation=photometric,
        number_of_frames=1, planar_configuration=0))
