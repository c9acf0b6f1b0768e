"""Transcoding on retrieve (PS3.18 §8.7.3.5): every common syntax decoded, lossless ones encoded bit-exact."""

from __future__ import annotations

import io

import jpeg_ls
import numpy as np
import openjpeg
import pytest
from flask.testing import FlaskClient
from pydicom import dcmread
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000, JPEG2000Lossless,
                         JPEGBaseline8Bit, JPEGLSLossless, JPEGLSNearLossless, RLELossless)

from drimhub.dicomweb.uids import is_valid_uid

import dicomfactory as f
from pixelhelpers import MP_DICOM, parts, pixels, store, syntax_of, url

LOSSLESS = [RLELossless, JPEG2000Lossless, JPEGLSLossless]


def ask(syntax: str) -> dict[str, str]:
    return {"Accept": f"{MP_DICOM}; transfer-syntax={syntax}"}


# Stored syntax × kind of image: each one decoded to Explicit VR Little Endian, bit-exact when lossless.
DECODE = [
    pytest.param(RLELossless, "ct", id="PS3.5-A.4.2-rle-16bit"),
    pytest.param(JPEG2000Lossless, "signed", id="PS3.5-A.4.4-j2k-lossless-signed"),
    pytest.param(JPEGLSLossless, "rgb", id="PS3.5-A.4.3-jpegls-rgb"),
    pytest.param(DeflatedExplicitVRLittleEndian, "ct", id="PS3.5-A.5-deflated"),
]


@pytest.mark.parametrize("stored, kind", DECODE)
def test_stored_compressed_decoded_bit_exact(client: FlaskClient, stored: str, kind: str) -> None:
    inst = f.image(kind, stored, frames=2)
    store(client, inst)
    r = client.get(url(inst), headers=ask(ExplicitVRLittleEndian))
    assert r.status_code == 200
    [(ctype, body)] = parts(r)
    assert syntax_of(ctype) == ExplicitVRLittleEndian
    assert dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert pixels(body).tobytes() == inst.pixels


@pytest.mark.parametrize("target", LOSSLESS, ids=["rle", "j2k-lossless", "jpegls-lossless"])
@pytest.mark.parametrize("kind", ["ct", "signed", "rgb"])
def test_lossless_encode_is_bit_exact(client: FlaskClient, target: str, kind: str) -> None:
    inst = f.image(kind, frames=2)
    store(client, inst)
    r = client.get(url(inst), headers=ask(target))
    assert r.status_code == 200
    [(ctype, body)] = parts(r)
    assert syntax_of(ctype) == target
    ds = dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == target and ds.SOPInstanceUID == inst.sop
    assert "LossyImageCompression" not in ds
    assert ds.pixel_array.tobytes() == inst.pixels


def test_compressed_to_other_compressed(client: FlaskClient) -> None:
    inst = f.image("ct", JPEGLSLossless)
    store(client, inst)
    [(ctype, body)] = parts(client.get(url(inst), headers=ask(JPEG2000Lossless)))
    assert syntax_of(ctype) == JPEG2000Lossless and pixels(body).tobytes() == inst.pixels


def test_lossy_jpeg_only_when_named_and_marked(client: FlaskClient) -> None:
    inst = f.image("gray8", frames=2)
    store(client, inst)
    [(ctype, body)] = parts(client.get(url(inst), headers=ask(JPEGBaseline8Bit)))
    assert syntax_of(ctype) == JPEGBaseline8Bit
    ds = dcmread(io.BytesIO(body))
    # PS3.3 C.7.6.1.1.5: lossy compression recorded
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(ds.LossyImageCompressionRatio) > 1
    original = np.frombuffer(inst.pixels, np.uint8).reshape(2, 64, 64).astype(int)
    assert np.abs(ds.pixel_array.astype(int) - original).mean() < 20  # noise compresses badly; still close


def test_lossy_jpeg_is_a_derived_image_with_a_new_uid(client: FlaskClient) -> None:
    """PS3.3 C.7.6.1.1.5: a lossy compressed version of a DICOM image is DERIVED and "shall receive a new
    SOP Instance UID"; the same one at every retrieval, and the original is referenced."""
    inst = f.image("gray8", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], LossyImageCompression="01",
                   LossyImageCompressionRatio=8, LossyImageCompressionMethod="ISO_10918_1")
    store(client, inst)
    first, again = (dcmread(io.BytesIO(parts(client.get(url(inst), headers=ask(JPEGBaseline8Bit)))[0][1]))
                    for _ in range(2))
    assert first.SOPInstanceUID != inst.sop and first.SOPInstanceUID == again.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert is_valid_uid(first.SOPInstanceUID)
    assert list(first.ImageType) == ["DERIVED", "PRIMARY", "AXIAL"]
    [source] = first.SourceImageSequence
    assert (source.ReferencedSOPInstanceUID, source.ReferencedSOPClassUID) == (inst.sop, first.SOPClassUID)
    assert "ISO_10918_1" in first.DerivationDescription
    assert list(first.LossyImageCompressionMethod) == ["ISO_10918_1"] * 2  # the earlier compression kept
    assert float(first.LossyImageCompressionRatio[0]) == 8
    [(_, lossless)] = parts(client.get(url(inst), headers=ask(JPEGLSLossless)))
    assert dcmread(io.BytesIO(lossless)).SOPInstanceUID == inst.sop  # lossless: the same image


def test_lossy_jpeg_of_16_bit_is_not_acceptable(client: FlaskClient) -> None:
    inst = f.image("ct")
    store(client, inst)
    r = client.get(url(inst), headers=ask(JPEGBaseline8Bit))
    assert r.status_code == 406


DRIMBOX = ", ".join(f"{MP_DICOM}; transfer-syntax={ts}; q={q}" for ts, q in [
    ("1.2.840.10008.1.2.4.70", "1"), (JPEGLSLossless, "0.9"), (JPEG2000Lossless, "0.8"),
    (JPEGBaseline8Bit, "0.7"), (ExplicitVRLittleEndian, "0.5")])


@pytest.mark.parametrize("accept, expected", [
    pytest.param(DRIMBOX, JPEGLSLossless, id="PS3.18-8.7.8-drimbox-first-producible"),
    pytest.param(f"{MP_DICOM}; transfer-syntax={JPEG2000}; q=0.9, {MP_DICOM}; transfer-syntax={RLELossless}; q=0.4",
                 RLELossless, id="PS3.18-8.7.8-lossy-j2k-not-produced"),
    pytest.param(f"{MP_DICOM}; transfer-syntax={RLELossless}; q=0.2, {MP_DICOM}; q=0.8",
                 ExplicitVRLittleEndian, id="PS3.18-8.7.8-q-value-wins"),
    pytest.param(f"{MP_DICOM}; transfer-syntax={JPEGLSNearLossless}, {MP_DICOM}; transfer-syntax=*; q=0.1",
                 ExplicitVRLittleEndian, id="PS3.18-8.7.3.5.1-as-stored-last"),
])
def test_accept_picks_first_producible(client: FlaskClient, accept: str, expected: str) -> None:
    inst = f.image("ct")
    store(client, inst)
    r = client.get(url(inst, "study"), headers={"Accept": accept})
    assert r.status_code == 200
    assert [syntax_of(ctype) for ctype, _ in parts(r)] == [expected]


def test_study_transcoded_instance_by_instance_with_documents(client: FlaskClient) -> None:
    ct = f.image("ct", frames=1)
    rgb = f.image("rgb", RLELossless, study=ct.study)
    doc = f.pdf(ct.study)
    store(client, ct, rgb, doc)
    got = parts(client.get(url(ct, "study"), headers=ask(JPEG2000Lossless)))
    assert [syntax_of(ctype) for ctype, _ in got] == [JPEG2000Lossless] * 3
    by_sop = {dcmread(io.BytesIO(body)).SOPInstanceUID: body for _, body in got}
    assert pixels(by_sop[ct.sop]).tobytes() == ct.pixels and pixels(by_sop[rgb.sop]).tobytes() == rgb.pixels
    # no Pixel Data: the document is carried in the syntax's Explicit VR Little Endian encoding (PS3.5 A.4)
    assert dcmread(io.BytesIO(by_sop[doc.sop])).EncapsulatedDocument.startswith(b"%PDF")


# --- frames (PS3.18 Table 8.7.3-5) -----------------------------------------------------------

FRAME_DECODERS = {"image/jp2": lambda b: openjpeg.decode(b), "image/jls": lambda b: jpeg_ls.decode(np.frombuffer(b, np.uint8))}


@pytest.mark.parametrize("media_type, syntax", [("image/jp2", JPEG2000Lossless), ("image/jls", JPEGLSLossless)])
@pytest.mark.parametrize("stored", [ExplicitVRLittleEndian, RLELossless])
def test_frames_transcoded_bit_exact(client: FlaskClient, media_type: str, syntax: str, stored: str) -> None:
    inst = f.image("ct", stored, frames=3)
    store(client, inst)
    r = client.get(url(inst) + "/frames/3,1", headers={"Accept": f'multipart/related; type="{media_type}"'})
    assert r.status_code == 200
    got = parts(r)
    assert [ctype for ctype, _ in got] == [f"{media_type}; transfer-syntax={syntax}"] * 2
    for (_, body), number in zip(got, (3, 1)):
        assert FRAME_DECODERS[media_type](body).astype(np.uint16).tobytes() == inst.frames[number - 1]


def test_frames_as_rle_and_jpeg(client: FlaskClient) -> None:
    inst = f.image("gray8", frames=2)
    store(client, inst)
    rle = parts(client.get(url(inst) + "/frames/2", headers={"Accept": 'multipart/related; type="image/dicom-rle"'}))
    assert syntax_of(rle[0][0]) == RLELossless and rle[0][1][:4] == (1).to_bytes(4, "little")  # 1 segment
    jpeg = parts(client.get(url(inst) + "/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'}))
    assert syntax_of(jpeg[0][0]) == JPEGBaseline8Bit and jpeg[0][1][:2] == b"\xff\xd8"
