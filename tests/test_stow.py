"""STOW-RS (PS3.18 §10.5): statuses, failure reasons, idempotence, duplicates."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from flask import Flask
from flask.testing import FlaskClient

import dicomfactory as f

REFERENCED, FAILED, RETRIEVE_URL, FAILURE_REASON = "00081199", "00081198", "00081190", "00081197"


def post(client: FlaskClient, parts: list[bytes], url: str = "/dicom-web/studies"):
    body, ctype = f.multipart(parts)
    return client.post(url, data=body, headers={"Content-Type": ctype, "Accept": "application/dicom+json"})


def sops(seq: dict, key: str) -> list[str]:
    return [item["00081155"]["Value"][0] for item in seq.get(key, {}).get("Value", [])]


def reasons(body: dict) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in body.get(FAILED, {}).get("Value", [])]


def blob_count(tmp_path: Path) -> int:
    return sum(1 for p in (tmp_path / "blobs" / "objects").rglob("*") if p.is_file())


def test_store_mixed_objects_all_referenced(client: FlaskClient) -> None:
    study = f.new_uid()
    items = [f.ct(study), f.ct(study, frames=3), f.ct(study, transfer_syntax=f.RLELossless), f.pdf(study), f.sr(study)]
    r = post(client, [i.data for i in items])
    assert r.status_code == 200, r.json
    assert r.mimetype == "application/dicom+json"
    assert sorted(sops(r.json, REFERENCED)) == sorted(i.sop for i in items)
    assert FAILED not in r.json
    assert r.json[RETRIEVE_URL]["Value"][0].endswith(f"/dicom-web/studies/{study}")
    for item in r.json[REFERENCED]["Value"]:
        sop = item["00081155"]["Value"][0]
        want = next(i for i in items if i.sop == sop)
        assert item["00081150"]["Value"] == [want.sop_class]
        assert item[RETRIEVE_URL]["Value"][0].endswith(f"/studies/{study}/series/{want.series}/instances/{sop}")


# (what is sent, expected HTTP status, expected failure reasons) -- PS3.18 Table 10.5.3-1
STATUS_CASES = [
    pytest.param("garbage", 400, [0xC000], id="PS3.18-10.5.3-not-dicom-400"),
    pytest.param("good+garbage", 202, [0xC000], id="PS3.18-10.5.3-partial-202"),
    pytest.param("other-study", 409, [0xA900], id="PS3.18-10.5.3-study-mismatch-409"),
]


@pytest.mark.parametrize("case, status, expected", STATUS_CASES)
def test_store_statuses(client: FlaskClient, case: str, status: int, expected: list[int]) -> None:
    study = f.new_uid()
    good = f.ct(study)
    parts = {"garbage": [b"not a dicom file" * 20],
             "good+garbage": [good.data, b"\x00" * 300],
             "other-study": [f.ct().data]}[case]
    r = post(client, parts, f"/dicom-web/studies/{study}")
    assert r.status_code == status, r.json
    assert reasons(r.json) == expected
    if case == "good+garbage":
        assert sops(r.json, REFERENCED) == [good.sop]
    else:
        assert REFERENCED not in r.json


def test_same_bytes_twice_is_idempotent(client: FlaskClient, tmp_path: Path) -> None:
    inst = f.ct()
    assert post(client, [inst.data]).status_code == 200
    before = blob_count(tmp_path)
    r = post(client, [inst.data])
    assert r.status_code == 200
    assert sops(r.json, REFERENCED) == [inst.sop]
    assert blob_count(tmp_path) == before == 1


def test_same_uid_other_bytes_rejected_by_default(client: FlaskClient, tmp_path: Path) -> None:
    inst = f.ct(seed=1)
    other = f.ct(inst.study, inst.series, inst.sop, seed=2)
    assert post(client, [inst.data]).status_code == 200
    r = post(client, [other.data])
    assert r.status_code == 409
    assert reasons(r.json) == [0x0111]
    assert blob_count(tmp_path) == 1


@pytest.mark.parametrize("ctype, status", [
    pytest.param("application/json", 415, id="PS3.18-10.5.1-json-415"),
    pytest.param('multipart/related; type="application/dicom+xml"; boundary=x', 415, id="PS3.18-10.5.1-xml-parts-415"),
    pytest.param('multipart/related; type="application/dicom"', 400, id="PS3.18-10.5.1-no-boundary-400"),
])
def test_store_bad_content_type(client: FlaskClient, ctype: str, status: int) -> None:
    r = client.post("/dicom-web/studies", data=b"{}", headers={"Content-Type": ctype})
    assert r.status_code == status
    assert r.mimetype == "application/dicom+json"


def test_truncated_multipart_is_400_and_stores_nothing_partial(client: FlaskClient, tmp_path: Path) -> None:
    body, ctype = f.multipart([f.ct().data])
    r = client.post("/dicom-web/studies", data=body[: len(body) // 2], headers={"Content-Type": ctype})
    assert r.status_code == 400
    assert blob_count(tmp_path) == 0
    assert not any((tmp_path / "blobs" / "tmp").iterdir())


def test_same_instance_twice_in_one_request(client: FlaskClient, tmp_path: Path) -> None:
    inst = f.ct()
    other = f.ct(inst.study, inst.series, inst.sop, seed=9)
    r = post(client, [inst.data, inst.data, other.data])
    assert r.status_code == 202, r.json
    assert sops(r.json, REFERENCED) == [inst.sop, inst.sop]
    assert reasons(r.json) == [0x0111]
    assert blob_count(tmp_path) == 1


def test_overwrite_policy_replaces_the_stored_instance(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    app.config["STOW_DUPLICATE_POLICY"] = "overwrite"
    inst = f.ct(seed=1)
    other = f.ct(inst.study, inst.series, inst.sop, seed=2)
    assert post(client, [inst.data]).status_code == 200
    r = post(client, [other.data])
    assert r.status_code == 200, r.json
    assert blob_count(tmp_path) == 1
    blobs = [p for p in (tmp_path / "blobs" / "objects").rglob("*") if p.is_file()]
    assert blobs[0].read_bytes() == other.data


def _deeply_nested(depth: int) -> bytes:
    """An SR whose ContentSequence nests ``depth`` levels (raw bytes: pydicom cannot write it)."""
    ds = dcmread(io.BytesIO(f.sr().data))
    del ds.ContentSequence  # the last element of the data set: the raw one goes at the end
    buf = io.BytesIO()
    ds.save_as(buf)
    undefined = b"\xff\xff\xff\xff"
    opening = b"\x40\x00\x30\xa7SQ\x00\x00" + undefined + b"\xfe\xff\x00\xe0" + undefined
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return buf.getvalue() + opening * depth + closing * depth


# Hostile or non-conformant parts: each is this part's failure or a clamped index value, never a
# 500, and the other parts of the request are stored (reviewer findings M3, M5).
def test_hostile_part_is_a_failure_not_a_500(client: FlaskClient, tmp_path: Path) -> None:
    good = f.ct()
    r = post(client, [good.data, _deeply_nested(3000)])
    assert r.status_code == 202, r.json
    assert sops(r.json, REFERENCED) == [good.sop]
    assert reasons(r.json) == [0xC000]
    assert not any((tmp_path / "blobs" / "tmp").iterdir())


def test_out_of_range_values_are_stored_and_kept_whole(client: FlaskClient) -> None:
    study = f.new_uid()
    odd = f.ct(study, accession="A" * 40, instance_number=99999999999)
    plain = f.ct()
    r = post(client, [odd.data, plain.data])
    assert r.status_code == 200, r.json
    meta = client.get(f"/dicom-web/studies/{study}/series/{odd.series}/instances/{odd.sop}/metadata").json[0]
    assert meta["00080050"]["Value"] == ["A" * 40]
    assert meta["00200013"]["Value"] == [99999999999]


@pytest.mark.parametrize("reasons_, unreadable, status", [
    pytest.param([0x0110], 0, 503, id="processing-failure-503"),
    pytest.param([0x0110, 0xA700], 0, 503, id="out-of-resources-503"),
    pytest.param([0x0110, 0x0111], 0, 409, id="one-conflict-409"),
    pytest.param([0xC000], 1, 400, id="unreadable-400"),
])
def test_http_status_server_side_failures(reasons_: list[int], unreadable: int, status: int) -> None:
    """PS3.18 Table 10.5.3-1: nothing stored because of the server is not a conflict of the request."""
    from drimhub.dicomweb.status import is_server_side, stow_http_status
    server_side = sum(1 for r in reasons_ if is_server_side(r))
    assert stow_http_status(0, len(reasons_), 0, unreadable, server_side) == status
    assert stow_http_status(1, len(reasons_), 0, unreadable, server_side) == 202


def test_transient_index_failure_is_retried(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadlock of the indexing transaction is retried; when it persists the answer is 503 with 0110H."""
    from sqlalchemy.exc import OperationalError
    from drimhub.dicomweb import stow

    class Deadlock(Exception):
        sqlstate = "40P01"

    real, calls = stow.store_instances, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) < 3 or len(calls) > 3:
            raise OperationalError("INSERT", {}, Deadlock("deadlock detected"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stow, "store_instances", flaky)
    first, second = f.ct(), f.ct()
    assert post(client, [first.data]).status_code == 200
    assert len(calls) == 3
    r = post(client, [second.data])
    assert r.status_code == 503, r.json
    assert reasons(r.json) == [0x0110]
    assert len(calls) == 6


def _tmp_files(app: Flask) -> list[Path]:
    return list(app.extensions["drimhub"].blobs.tmp.iterdir())


def test_error_while_parsing_a_part_leaves_no_temporary_file(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part handed over by the multipart reader is discarded when an unexpected error escapes."""
    from drimhub.dicomweb import stow

    def boom(path: Path) -> None:
        raise RuntimeError("parser exploded")

    monkeypatch.setattr(stow, "parse_instance", boom)
    res = app.extensions["drimhub"]
    body, ctype = f.multipart([f.ct().data, f.ct().data])
    with pytest.raises(RuntimeError):
        stow.StoreService(res.sessions, res.blobs, org="org-a").store_request(io.BytesIO(body), ctype, None)
    assert _tmp_files(app) == []


def test_malformed_part_after_committed_batches_is_202(app: Flask, client: FlaskClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """PS3.18 Table 10.5.3-1: instances already stored are referenced (202), the malformed rest fails C000H."""
    from drimhub.dicomweb import stow
    monkeypatch.setattr(stow, "BATCH", 2)
    items = [f.ct(rows=512, cols=512, seed=i) for i in range(4)]
    body, ctype = f.multipart([i.data for i in items])
    boundary = ctype.rsplit("=", 1)[1].encode()
    body = body[:-len(boundary) - 6] + b"--" + boundary + b"\r\nno colon here\r\n\r\nxx\r\n--" + boundary + b"--\r\n"
    r = client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
    assert r.status_code == 202, r.json
    stored = sops(r.json, REFERENCED)
    assert len(stored) >= 2 and set(stored) <= {i.sop for i in items}
    assert 0xC000 in reasons(r.json)
    for item in items:
        if item.sop in stored:
            url = f"/dicom-web/studies/{item.study}/series/{item.series}/instances/{item.sop}"
            assert client.get(url, headers={"Accept": "multipart/related; type=\"application/dicom\""}).status_code == 200
    assert _tmp_files(app) == []


def test_commit_applied_but_reported_failed_keeps_the_instance(client: FlaskClient,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A COMMIT that succeeded on the server but raised on the client: the row's blob is not deleted."""
    from contextlib import contextmanager
    from drimhub.dicomweb import stow
    real = stow.write_session

    @contextmanager
    def lost_answer(factory):
        with real(factory) as session:
            yield session
        raise ConnectionResetError("connection lost after COMMIT")

    monkeypatch.setattr(stow, "write_session", lost_answer)
    inst = f.ct()
    r = post(client, [inst.data])
    assert r.status_code == 200, r.json
    assert sops(r.json, REFERENCED) == [inst.sop]
    url = f"/dicom-web/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}"
    got = client.get(url, headers={"Accept": "multipart/related; type=\"application/dicom\""})
    assert got.status_code == 200 and inst.data in got.data


def test_native_pixel_data_shorter_than_its_geometry_is_refused(client: FlaskClient) -> None:
    inst = f.ct()
    ds = dcmread(io.BytesIO(inst.data))
    ds.Rows = 4096  # the 64 x 64 pixels stay: far fewer bytes than 4096 x 64 needs
    buf = io.BytesIO()
    ds.save_as(buf)
    r = post(client, [buf.getvalue()])
    assert r.status_code == 409, r.json
    assert reasons(r.json) == [0xA900]
