"""The node driven over real HTTP by dicomweb-client (ImagingDataCommons), as a peer or viewer would."""

from __future__ import annotations

import io

import pytest
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

import dicomfactory as f


@pytest.fixture
def dw(live_server: str, bearer: dict[str, str]) -> DICOMwebClient:
    return DICOMwebClient(url=live_server + "/dicom-web", headers=bearer)


@pytest.fixture
def study(dw: DICOMwebClient) -> list[f.Instance]:
    uid, series = f.new_uid(), f.new_uid()
    items = [f.ct(uid, series, instance_number=1, seed=1),
             f.ct(uid, series, instance_number=2, frames=3, seed=2),
             f.ct(uid, series, instance_number=3, frames=2, transfer_syntax=RLELossless, seed=3)]
    answer = dw.store_instances([dcmread(io.BytesIO(i.data)) for i in items])
    assert len(answer.ReferencedSOPSequence) == 3
    return items


def test_retrieve_study(dw: DICOMwebClient, study: list[f.Instance]) -> None:
    got = dw.retrieve_study(study[0].study)
    assert [ds.SOPInstanceUID for ds in got] == [i.sop for i in study]
    assert all(ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian for ds in got)  # PS3.18 §8.7.3.4
    assert got[2].PixelData == study[2].pixels


def test_retrieve_instance_metadata(dw: DICOMwebClient, study: list[f.Instance]) -> None:
    inst = study[1]
    meta = dw.retrieve_instance_metadata(inst.study, inst.series, inst.sop)
    ds = Dataset.from_json(meta, bulk_data_uri_handler=lambda tag, vr, uri: None)
    assert ds.SOPInstanceUID == inst.sop and ds.NumberOfFrames == 3
    assert str(ds.PatientName) == "DUPONT^Jérôme"
    # dicomweb-client 0.61 sends "Host: 127.0.0.1" without the port, so only the path is checked
    assert meta["7FE00010"]["BulkDataURI"].endswith(
        f"/dicom-web/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}/bulkdata/7FE00010")


def test_retrieve_instance_frames(dw: DICOMwebClient, study: list[f.Instance]) -> None:
    native, rle = study[1], study[2]
    assert dw.retrieve_instance_frames(native.study, native.series, native.sop, [3, 1]) == \
        [native.frames[2], native.frames[0]]
    decoded = dw.retrieve_instance_frames(rle.study, rle.series, rle.sop, [2],
                                          media_types=(("application/octet-stream", ExplicitVRLittleEndian),))
    assert decoded == [rle.frames[1]]
    (compressed,) = dw.retrieve_instance_frames(rle.study, rle.series, rle.sop, [2],
                                                media_types=(("image/dicom-rle", RLELossless),))
    assert compressed != rle.frames[1] and len(compressed) > 64  # the RLE segments as stored


def test_search_for_studies(dw: DICOMwebClient, study: list[f.Instance]) -> None:
    found = dw.search_for_studies(search_filters={"StudyInstanceUID": study[0].study})
    assert [s["0020000D"]["Value"][0] for s in found] == [study[0].study]
