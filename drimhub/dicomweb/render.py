"""Rendering one frame for display (PS3.18 §8.3.5, §8.7.4): query parameters, pixel pipeline, image encoding.

No I/O beyond the open file it is handed, no Flask. The grayscale pipeline is PS3.3 C.11
applied with pydicom's ``pixels`` utilities:

1. Modality LUT (PS3.3 C.11.1): Rescale Slope/Intercept or Modality LUT Sequence
   (:func:`pydicom.pixels.apply_modality_lut`); signed pixels are decoded signed by pydicom.
2. VOI (PS3.3 C.11.2): the ``window`` parameter when given; otherwise the file's VOI LUT
   Sequence, else its first Window Center/Width (with VOI LUT Function); otherwise a window
   spanning the frame's minimum and maximum. Windows are applied by
   :func:`pydicom.pixels.apply_windowing` straight into 0-255 (LINEAR, LINEAR_EXACT, SIGMOID).
3. MONOCHROME1 is inverted (PS3.3 C.7.6.3.1.2: its minimum is white).

Color: RGB as decoded; YBR converted to RGB (:func:`pydicom.pixels.convert_color_space`, when
pydicom has not already done it); PALETTE COLOR through its lookup tables
(:func:`pydicom.pixels.apply_color_lut`); samples deeper than 8 bits are scaled to 8.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, convert_color_space

from drimhub.errors import InvalidRequest

JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
#: Rendered media types for single images, the server's preference first (PS3.18 Table 8.7.4-1;
#: image/gif is offered for rendered and thumbnail alike).
IMAGE_TYPES = (JPEG, PNG, GIF)
#: The ``function`` of the window parameter → VOI LUT Function (PS3.18 §8.3.5.1.4, PS3.3 C.11.2.1.3).
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
#: Values of the annotation parameter (PS3.18 §8.3.5.1.1); accepted and ignored: this node burns
#: no text into images.
ANNOTATIONS = frozenset({"patient", "technique"})
#: Largest side of a thumbnail when no viewport is given (PS3.18 §10.4.1.1.4 leaves the size to the server).
THUMBNAIL_SIZE = 128
DEFAULT_QUALITY = 90


@dataclass(frozen=True)
class RenderParams:
    """The rendering query parameters of one request (PS3.18 §8.3.5.1), validated."""

    quality: int = DEFAULT_QUALITY
    viewport: tuple[int, int] | None = None
    #: Source region sx, sy, sw, sh in pixels of the image (negative sw/sh flip it).
    region: tuple[int, int, int | None, int | None] | None = None
    window: tuple[float, float, str] | None = None
    thumbnail: bool = False


def _ints(name: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InvalidRequest(f"{name} takes integers separated by commas, not {text[:60]!r}") from None


def parse_quality(text: str | None) -> int:
    """The ``quality`` parameter, 1-100 (PS3.18 §8.3.5.1.2)."""
    if text is None:
        return DEFAULT_QUALITY
    value = _ints("quality", text)
    if len(value) != 1 or not 1 <= value[0] <= 100:
        raise InvalidRequest(f"quality is an integer from 1 to 100, not {text[:60]!r}")
    return value[0]


def parse_viewport(text: str) -> tuple[tuple[int, int], tuple[int, int, int | None, int | None] | None]:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (PS3.18 §8.3.5.1.3); sx..sh may be left empty."""
    values = text.split(",")
    if len(values) not in (2, 6):
        raise InvalidRequest(f"viewport is vw,vh or vw,vh,sx,sy,sw,sh, not {text[:60]!r}")
    vw, vh = _ints("viewport", ",".join(values[:2]))
    if vw < 1 or vh < 1:
        raise InvalidRequest("viewport width and height must be positive")
    if len(values) == 2:
        return (vw, vh), None
    sx, sy, sw, sh = (_ints("viewport", v)[0] if v.strip() else None for v in values[2:])
    if (sx or 0) < 0 or (sy or 0) < 0 or sw == 0 or sh == 0:
        raise InvalidRequest("viewport source offsets must be non-negative and its extent non-zero")
    return (vw, vh), (sx or 0, sy or 0, sw, sh)


def parse_window(text: str) -> tuple[float, float, str]:
    """``center,width,function`` (PS3.18 §8.3.5.1.4)."""
    values = [v.strip() for v in text.split(",")]
    if len(values) != 3 or values[2].lower() not in WINDOW_FUNCTIONS:
        raise InvalidRequest(f"window is center,width,function (linear, linear-exact or sigmoid), not {text[:60]!r}")
    try:
        center, width = float(values[0]), float(values[1])
    except ValueError:
        raise InvalidRequest(f"window center and width are numbers, not {text[:60]!r}") from None
    return center, _checked_width(width, values[2].lower()), WINDOW_FUNCTIONS[values[2].lower()]


def _checked_width(width: float, function: str) -> float:
    # PS3.3 C.11.2.1.2: Window Width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID
    if width < 1 and function == "linear" or width <= 0:
        raise InvalidRequest(f"window width {width} is out of range for {function}")
    return width


def parse_params(args: Mapping[str, str], *, thumbnail: bool = False) -> RenderParams:
    """The rendering parameters of a request; unknown parameters are ignored (PS3.18 §8.3).

    Raises
    ------
    InvalidRequest
        A parameter this node knows has a malformed value.
    """
    viewport, region = parse_viewport(args["viewport"]) if "viewport" in args else (None, None)
    window = parse_window(args["window"]) if "window" in args else None
    for value in filter(None, args.get("annotation", "").split(",")):
        if value.strip().lower() not in ANNOTATIONS:
            raise InvalidRequest(f"annotation takes patient and/or technique, not {value[:40]!r}")
    return RenderParams(parse_quality(args.get("quality")), viewport, region, window, thumbnail)


# --- pixels → 8-bit display values -----------------------------------------------------------

def _window_dataset(center: float, width: float, function: str) -> Dataset:
    """A dataset pydicom's windowing reads: output straight into 0-255 (8 unsigned bits, no rescale)."""
    ds = Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.PhotometricInterpretation = 8, 0, "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    return ds


def _file_window(ds: Dataset) -> tuple[float, float, str] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    first = lambda elem: float(elem.value[0] if elem.VM > 1 else elem.value)  # noqa: E731
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return first(ds["WindowCenter"]), first(ds["WindowWidth"]), function


def grayscale(arr: np.ndarray[Any, Any], ds: Dataset, window: tuple[float, float, str] | None) -> np.ndarray[Any, Any]:
    """A grayscale frame as 8-bit display values (PS3.3 C.11: Modality LUT, VOI, MONOCHROME1).

    Every step maps each stored value on its own, so an integer frame is rendered through a
    lookup table over the values it spans, when that table is smaller than the frame: the
    pipeline runs once per distinct value instead of once per pixel, with the same result.
    """
    if arr.dtype.kind in "iu" and arr.size:
        low, high = int(arr.min()), int(arr.max())
        if high - low < arr.size:
            index = arr.astype(np.intp)
            index -= low
            values = apply_modality_lut(np.arange(low, high + 1).astype(arr.dtype), ds)
            return np.take(_display(values, ds, window, lambda: np.take(values, index)), index)
    values = apply_modality_lut(arr, ds)
    return _display(values, ds, window, lambda: values)


def _display(values: np.ndarray[Any, Any], ds: Dataset, window: tuple[float, float, str] | None,
             frame_values: Callable[[], np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """Modality values as 8-bit display values: VOI (``window``, else the file's), MONOCHROME1 inverted.

    ``frame_values`` gives the frame's own modality values, for a window spanning them when
    neither the request nor the file names one.
    """
    if window is None and ds.get("VOILUTSequence"):
        lut = ds.VOILUTSequence[0]
        out = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        out *= 255.0 / (2 ** int(lut.LUTDescriptor[2]) - 1)
    else:
        if window is None:
            window = _file_window(ds) or _auto_window(frame_values())
        out = apply_windowing(values.astype(np.float64), _window_dataset(*window))
    display = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        display = 255 - display
    return display


def _auto_window(values: np.ndarray[Any, Any]) -> tuple[float, float, str]:
    low, high = float(values.min()), float(values.max())
    return (low + high + 1) / 2, max(1.0, high - low + 1), "LINEAR"


def color(arr: np.ndarray[Any, Any], ds: Dataset) -> np.ndarray[Any, Any]:
    """A color frame (RGB, YBR, PALETTE COLOR) as 8-bit RGB."""
    photometric = str(ds.PhotometricInterpretation)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        rgb = convert_color_space(arr, photometric, "RGB") if photometric.startswith("YBR") else arr
        bits = int(ds.BitsStored)
    if bits > 8:
        rgb = rgb.astype(np.uint32) >> (bits - 8)
    return np.asarray(rgb, dtype=np.uint8)


def to_image(arr: np.ndarray[Any, Any], ds: Dataset, params: RenderParams) -> Image.Image:
    """One decoded frame as a display image, cropped and scaled as ``params`` ask."""
    if int(ds.get("SamplesPerPixel", 1)) == 1 and ds.PhotometricInterpretation != "PALETTE COLOR":
        image = Image.fromarray(grayscale(arr, ds, params.window), mode="L")
    else:
        image = Image.fromarray(color(arr, ds), mode="RGB")
    if params.region is not None:
        image = _crop(image, params.region)
    if params.viewport is not None:
        return _fit(image, params.viewport)
    if params.thumbnail:
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return image


def _crop(image: Image.Image, region: tuple[int, int, int | None, int | None]) -> Image.Image:
    """The source region (PS3.18 §8.3.5.1.3): negative extents flip it (the image goes right to left)."""
    sx, sy, sw, sh = region
    sw = image.width - sx if sw is None else sw
    sh = image.height - sy if sh is None else sh
    left, right = sorted((sx, sx + sw))
    top, bottom = sorted((sy, sy + sh))
    box = (max(0, left), max(0, top), min(image.width, right), min(image.height, bottom))
    if box[0] >= box[2] or box[1] >= box[3]:
        raise InvalidRequest("the viewport's source region lies outside the image")
    cropped = image.crop(box)
    if sw < 0:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        cropped = cropped.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return cropped


def _fit(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    """Scaled to fit the viewport, aspect ratio kept (PS3.18 §8.3.5.1.3)."""
    scale = min(viewport[0] / image.width, viewport[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def encode(images: list[Image.Image], media_type: str, quality: int = DEFAULT_QUALITY,
           frame_time_ms: float | None = None) -> bytes:
    """The images as one ``media_type`` file: several frames only as an animated GIF."""
    buf = io.BytesIO()
    if media_type == JPEG:
        images[0].save(buf, format="JPEG", quality=min(quality, 95))
    elif media_type == PNG:
        images[0].save(buf, format="PNG")
    else:
        frames = [image.convert("P", palette=Image.Palette.ADAPTIVE) if image.mode == "RGB" else image
                  for image in images]
        extra: dict[str, Any] = {"save_all": True, "append_images": frames[1:], "loop": 0,
                                 "duration": int(frame_time_ms or 100)} if len(frames) > 1 else {}
        frames[0].save(buf, format="GIF", **extra)
    return buf.getvalue()
