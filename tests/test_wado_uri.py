"""WADO-URI (PS3.18 §9) at /wado: DICOM and rendered answers, parameters, protection."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

import dicomfactory as f
from pixelhelpers import other_org, store


def q(inst: f.Instance, **extra: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": inst.study, "seriesUID": inst.series, "objectUID": inst.sop, **extra}


@pytest.fixture
def ct(client: FlaskClient) -> f.Instance:
    inst = f.image("ct", RLELossless, rows=64, cols=48, WindowCenter=2048, WindowWidth=4096)
    store(client, inst)
    return inst


def test_default_is_jpeg_for_an_image(client: FlaskClient, ct: f.Instance) -> None:
    r = client.get("/wado", query_string=q(ct))
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(r.get_data())).size == (48, 64)


def test_default_is_dicom_for_a_document(client: FlaskClient) -> None:
    doc = f.pdf()
    store(client, doc)
    r = client.get("/wado", query_string=q(doc))
    assert r.status_code == 200 and r.mimetype == "application/dicom"
    assert client.get("/wado", query_string=q(doc, contentType="application/pdf")).get_data().startswith(b"%PDF")


@pytest.mark.parametrize("syntax", [None, JPEG2000Lossless, RLELossless])
def test_dicom_in_a_transfer_syntax(client: FlaskClient, ct: f.Instance, syntax: str | None) -> None:
    extra = {"contentType": "application/dicom"} | ({"transferSyntax": syntax} if syntax else {})
    r = client.get("/wado", query_string=q(ct, **extra))
    assert r.status_code == 200
    expected = syntax or ExplicitVRLittleEndian
    assert r.headers["Content-Type"] == f"application/dicom; transfer-syntax={expected}"
    ds = dcmread(io.BytesIO(r.get_data()))
    assert ds.file_meta.TransferSyntaxUID == expected and ds.pixel_array.tobytes() == ct.pixels


def test_rendering_parameters(client: FlaskClient) -> None:
    arr = np.stack([np.full((64, 64), v, dtype=np.uint8) for v in (0, 100)])
    inst = f.image("gray8", arr=arr, frames=2)
    store(client, inst)
    r = client.get("/wado", query_string=q(inst, contentType="image/png", frameNumber="2", windowCenter="100",
                                          windowWidth="1", rows="16"))
    image = Image.open(io.BytesIO(r.get_data()))
    assert r.mimetype == "image/png" and image.size == (16, 16)
    assert np.asarray(image)[0, 0] == 255  # 100 > 100 - 0.5: above a window of width 1
    region = client.get("/wado", query_string=q(inst, contentType="image/png", region="0,0,0.5,0.25"))
    assert Image.open(io.BytesIO(region.get_data())).size == (32, 16)


@pytest.mark.parametrize("extra", [
    {"requestType": "WADO-RS"}, {"studyUID": ""}, {"objectUID": "1.2.abc"}, {"anonymize": "yes"},
    {"windowCenter": "40"}, {"frameNumber": "0"}, {"region": "0.5,0,0.2,1"}, {"transferSyntax": RLELossless},
    {"imageQuality": "500"}, {"presentationUID": "1.2.3"},
], ids=["request-type", "no-study", "bad-uid", "anonymize", "window-half", "frame-0", "region", "syntax-for-jpeg",
        "quality", "presentation"])
def test_bad_requests_are_400(client: FlaskClient, ct: f.Instance, extra: dict[str, str]) -> None:
    r = client.get("/wado", query_string=q(ct) | extra)
    assert r.status_code == 400 and r.mimetype == "application/dicom+json"


def test_protection(client: FlaskClient, anon: FlaskClient, mint, ct: f.Instance) -> None:
    assert anon.get("/wado", query_string=q(ct)).status_code == 401
    assert other_org(client, mint).get("/wado", query_string=q(ct)).status_code == 404
    reader = client.application.test_client()
    reader.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint('system/Patient.r')}"
    assert reader.get("/wado", query_string=q(ct)).status_code == 403
    assert client.get("/wado", query_string=q(ct, frameNumber="2")).status_code == 404
    assert client.get("/wado", query_string=q(ct, contentType="text/html")).status_code == 406
