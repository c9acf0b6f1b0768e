"""Rendered and thumbnail resources (PS3.18 §10.4.1.1.3-4, §8.3.5): known pixel values, every level."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from drimhub.dicomweb import render

import dicomfactory as f
from pixelhelpers import other_org, parts, store, url

PNG = {"Accept": "image/png"}


def linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) into 0-255, written out independently of the server."""
    x = x.astype(float)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y[x <= center - 0.5 - (width - 1) / 2] = 0
    y[x > center - 0.5 + (width - 1) / 2] = 255
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.get_data()[:300]
    assert response.mimetype == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.get_data())))


RAMP = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)  # 0..4095, one frame


def test_ct_window_parameter_gives_known_values(client: FlaskClient) -> None:
    inst = f.image("ct", arr=RAMP, RescaleSlope=1, RescaleIntercept=-1024)
    store(client, inst)
    got = png(client.get(url(inst) + "/rendered", query_string={"window": "40,400,linear"}, headers=PNG))
    assert np.array_equal(got, linear(RAMP[0].astype(int) - 1024, 40, 400))  # Modality LUT, then VOI


def test_window_from_the_file_when_no_parameter(client: FlaskClient) -> None:
    inst = f.image("ct", arr=RAMP, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=[3000, 50],
                   WindowWidth=[2000, 350])
    store(client, inst)
    got = png(client.get(url(inst) + "/rendered", headers=PNG))
    assert np.array_equal(got, linear(RAMP[0].astype(int) * 2 - 1000, 3000, 2000))  # the first window


def test_signed_pixels(client: FlaskClient) -> None:
    arr = np.linspace(-3000, 3000, 64 * 64).astype(np.int16).reshape(1, 64, 64)
    inst = f.image("signed", arr=arr)
    store(client, inst)
    got = png(client.get(url(inst) + "/rendered", query_string={"window": "0,1000,linear"}, headers=PNG))
    assert np.array_equal(got, linear(arr[0], 0, 1000))


def test_monochrome1_is_inverted(client: FlaskClient) -> None:
    arr = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(1, 64, 64)
    inst = f.image("mono1", arr=arr)
    store(client, inst)
    got = png(client.get(url(inst) + "/rendered", query_string={"window": "128,256,linear"}, headers=PNG))
    assert np.array_equal(got, 255 - linear(arr[0], 128, 256))
    assert got[0, 0] == 255  # the smallest value is white


def test_palette_color_through_its_lookup_tables(client: FlaskClient) -> None:
    arr = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(1, 64, 64)
    inst = f.image("palette", arr=arr)
    store(client, inst)
    got = png(client.get(url(inst) + "/rendered", headers=PNG))
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got[..., 0], arr[0]) and np.array_equal(got[..., 1], 255 - arr[0])
    assert (got[..., 2] == 128).all()


def _gray_dataset(photometric: str = "MONOCHROME2", signed: bool = False, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated = photometric, 1, 16
    ds.BitsStored, ds.PixelRepresentation = 12, int(signed)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor, item.LUTData = descriptor, data
    item["LUTDescriptor"].VR, item["LUTData"].VR = "US", "US"
    return item


def _by_pydicom(arr: np.ndarray, ds: Dataset, window: tuple[float, float, str] | None) -> np.ndarray:
    """The PS3.3 C.11 pipeline over every pixel with pydicom's functions, no lookup table."""
    values = apply_modality_lut(arr, ds)
    if window is None and "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi_lut(values, ds, prefer_lut=True).astype(float) * 255.0 / (2 ** bits - 1)
    else:
        if window is None and "WindowCenter" in ds:
            window = float(ds.WindowCenter), float(ds.WindowWidth), "LINEAR"
        elif window is None:
            low, high = float(values.min()), float(values.max())
            window = (low + high + 1) / 2, max(1.0, high - low + 1), "LINEAR"
        wds = Dataset()
        wds.BitsStored, wds.PixelRepresentation, wds.PhotometricInterpretation = 8, 0, "MONOCHROME2"
        wds.WindowCenter, wds.WindowWidth, wds.VOILUTFunction = window
        out = apply_windowing(values.astype(float), wds)
    display = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return 255 - display if ds.PhotometricInterpretation == "MONOCHROME1" else display


_CT = np.random.default_rng(6).integers(0, 1800, (64, 64)).astype(np.uint16)
_SIGNED = np.random.default_rng(7).integers(-900, 900, (64, 64)).astype(np.int16)
_NO_2 = np.array([0, 1, 3], np.uint16)[_CT[:8, :8] % 3]  # stored value 2 (4000 through the LUT below) absent


@pytest.mark.parametrize("arr, ds, window", [
    pytest.param(_CT, _gray_dataset(RescaleSlope=1, RescaleIntercept=-1024), (40.0, 400.0, "SIGMOID"),
                 id="rescale-sigmoid"),
    pytest.param(_SIGNED, _gray_dataset("MONOCHROME1", signed=True, RescaleSlope=-0.5, RescaleIntercept=3),
                 (10.0, 300.0, "LINEAR_EXACT"), id="signed-negative-slope-monochrome1"),
    pytest.param(_CT, _gray_dataset(VOILUTSequence=[_lut_item([256, 1000, 10], list(range(0, 1024, 4)))]), None,
                 id="voi-lut-sequence"),
    pytest.param(_NO_2, _gray_dataset(ModalityLUTSequence=[_lut_item([4, 0, 16], [900, 10, 4000, 20])]), None,
                 id="non-monotonic-modality-lut-auto-window-over-the-frame-values"),
    pytest.param(_CT, _gray_dataset(WindowCenter=600, WindowWidth=1), None, id="width-1-from-file"),
])
def test_grayscale_lookup_table_equals_the_pixel_by_pixel_pipeline(arr: np.ndarray, ds: Dataset,
                                                                  window: tuple[float, float, str] | None) -> None:
    """render.grayscale maps each distinct stored value once: the same display values as every pixel through pydicom."""
    assert np.array_equal(render.grayscale(arr, ds, window), _by_pydicom(arr, ds, window))


def test_rgb_as_is_and_ybr_jpeg_converted(client: FlaskClient) -> None:
    rgb = f.image("rgb", RLELossless)
    ybr = f.image("rgb", JPEGBaseline8Bit, study=rgb.study, arr=np.frombuffer(rgb.pixels, np.uint8).reshape(1, 64, 64, 3))
    store(client, rgb, ybr)
    original = np.frombuffer(rgb.pixels, np.uint8).reshape(64, 64, 3)
    assert np.array_equal(png(client.get(url(rgb) + "/rendered", headers=PNG)), original)
    from_jpeg = png(client.get(url(ybr) + "/rendered", headers=PNG)).astype(int)
    assert np.abs(from_jpeg - original).mean() < 12  # YBR_FULL decoded back to RGB, not shown as YCbCr


def test_frames_and_multiframe(client: FlaskClient) -> None:
    arr = np.stack([np.full((64, 64), v, dtype=np.uint8) for v in (10, 128, 250)])
    inst = f.image("gray8", arr=arr, frames=3, WindowCenter=128, WindowWidth=256)
    store(client, inst)
    assert (png(client.get(url(inst) + "/frames/2/rendered", headers=PNG)) == linear(arr[1], 128, 256)).all()
    both = client.get(url(inst) + "/frames/3,1/rendered", headers={"Accept": 'multipart/related; type="image/png"'})
    values = [np.asarray(Image.open(io.BytesIO(body)))[0, 0] for _, body in parts(both)]
    assert values == [linear(arr[2], 128, 256)[0, 0], linear(arr[0], 128, 256)[0, 0]]
    gif = Image.open(io.BytesIO(client.get(url(inst) + "/rendered", headers={"Accept": "image/gif"}).get_data()))
    assert gif.format == "GIF" and gif.n_frames == 3  # a multi-frame instance as an animated GIF
    assert client.get(url(inst) + "/frames/4/rendered").status_code == 404


def test_series_and_study_use_the_middle_image(client: FlaskClient) -> None:
    study, series = f.new_uid(), f.new_uid()
    items = [f.image("gray8", study=study, series=series, instance_number=n, WindowCenter=128, WindowWidth=256,
                     arr=np.full((1, 64, 64), 40 * n, dtype=np.uint8)) for n in (1, 2, 3)]
    store(client, f.pdf(study, series_number=9), *items)
    expected = linear(np.array([[80]]), 128, 256)[0, 0]
    assert png(client.get(url(items[0], "series") + "/rendered", headers=PNG))[0, 0] == expected
    assert png(client.get(url(items[0], "study") + "/thumbnail", headers=PNG))[0, 0] == expected


@pytest.mark.parametrize("kind, query, accept, size", [
    pytest.param("rendered", {}, "*/*", ("JPEG", (64, 64)), id="PS3.18-8.7.4-jpeg-default"),
    pytest.param("rendered", {"viewport": "32,32", "quality": "50"}, "image/jpeg", ("JPEG", (32, 32)),
                 id="PS3.18-8.3.5.1.3-viewport"),
    pytest.param("rendered", {"viewport": "40,20,0,0,32,64"}, "image/png", ("PNG", (10, 20)),
                 id="PS3.18-8.3.5.1.3-viewport-source-region"),
    pytest.param("thumbnail", {}, "image/gif", ("GIF", (64, 64)), id="PS3.18-10.4.1.1.4-gif-thumbnail"),
    pytest.param("thumbnail", {"viewport": "16,16", "annotation": "patient"}, "image/png", ("PNG", (16, 16)),
                 id="PS3.18-8.3.5.1.1-annotation-ignored"),
])
def test_media_types_and_sizes(client: FlaskClient, kind: str, query: dict[str, str], accept: str,
                               size: tuple[str, tuple[int, int]]) -> None:
    inst = f.image("ct", rows=64, cols=64)
    store(client, inst)
    r = client.get(f"{url(inst)}/{kind}", query_string=query, headers={"Accept": accept})
    assert r.status_code == 200
    image = Image.open(io.BytesIO(r.get_data()))
    assert (image.format, image.size) == size and r.mimetype == Image.MIME[image.format]


def test_large_image_thumbnail_is_small(client: FlaskClient) -> None:
    inst = f.image("gray8", rows=300, cols=200)
    store(client, inst)
    image = Image.open(io.BytesIO(client.get(url(inst) + "/thumbnail").get_data()))
    assert image.size == (85, 128)


def test_pdf_rendered_as_itself_and_video_passed_through(client: FlaskClient) -> None:
    doc, movie = f.pdf(), f.video()
    store(client, doc)
    store(client, movie)
    r = client.get(url(doc) + "/rendered", headers={"Accept": "application/pdf"})
    assert r.status_code == 200 and r.mimetype == "application/pdf" and r.get_data().startswith(b"%PDF")
    assert r.get_data().rstrip(b"\0").endswith(b"%%EOF\n")
    assert client.get(url(doc) + "/thumbnail").status_code == 406
    r = client.get(url(movie) + "/rendered", headers={"Accept": "video/*"})
    assert r.status_code == 200 and r.mimetype == "video/mp4" and r.get_data() == movie.frames[0]
    assert client.get(url(movie) + "/rendered", headers={"Accept": "image/jpeg"}).status_code == 406


@pytest.mark.parametrize("query, accept", [
    ({"window": "40,400,cubic"}, "image/jpeg"), ({"window": "40,abc,linear"}, "image/jpeg"),
    ({"window": "40,0,linear"}, "image/jpeg"), ({"quality": "0"}, "image/jpeg"),
    ({"viewport": "0,10"}, "image/jpeg"), ({"viewport": "10,10,70,70,5,5"}, "image/jpeg"),
    ({"annotation": "everything"}, "image/jpeg"),
], ids=["window-function", "window-width-nan", "window-width-0", "quality-0", "viewport-0", "region-outside",
        "annotation-unknown"])
def test_bad_parameters_are_400(client: FlaskClient, query: dict[str, str], accept: str) -> None:
    inst = f.image("ct")
    store(client, inst)
    r = client.get(url(inst) + "/rendered", query_string=query, headers={"Accept": accept})
    assert r.status_code == 400 and r.mimetype == "application/dicom+json"


def test_not_acceptable_and_other_organisation(client: FlaskClient, mint) -> None:
    inst = f.image("ct")
    store(client, inst)
    assert client.get(url(inst) + "/rendered", headers={"Accept": "text/html"}).status_code == 406
    other = other_org(client, mint)
    for level in ("study", "series", "instance"):
        for kind in ("rendered", "thumbnail"):
            assert other.get(f"{url(inst, level)}/{kind}").status_code == 404
    assert other.get(url(inst) + "/frames/1/rendered").status_code == 404
