"""Byte ranges (RFC 9110 §14) on a single-part instance and on bulk data."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

import dicomfactory as f
from drimhub.dicomweb.ranges import parse_range
from drimhub.errors import RangeNotSatisfiable
from pixelhelpers import store, url

AS_STORED = {"Accept": "application/dicom; transfer-syntax=*"}

# (header, size, expected): RFC 9110 §14.1.2 forms; None is "send everything"
RANGES = [
    ("bytes=0-9", 100, (0, 9)), ("bytes=90-", 100, (90, 99)), ("bytes=-10", 100, (90, 99)),
    ("bytes=95-200", 100, (95, 99)), ("bytes=-500", 100, (0, 99)), ("bytes=5-2", 100, None),
    ("bytes=0-1,5-6", 100, None), ("items=0-1", 100, None), (None, 100, None), ("bytes=-", 100, None),
]


@pytest.mark.parametrize("header, size, expected", RANGES, ids=[str(r[0]) for r in RANGES])
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, 100)
    assert caught.value.data["content_range"] == "bytes */100"


def test_instance_range(client: FlaskClient) -> None:
    inst = f.image("ct")
    store(client, inst)
    whole = client.get(url(inst), headers=AS_STORED)
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    r = client.get(url(inst), headers=AS_STORED | {"Range": "bytes=128-131"})
    assert r.status_code == 206 and r.get_data() == inst.data[128:132] == b"DICM"
    assert r.headers["Content-Range"] == f"bytes 128-131/{len(inst.data)}" and r.headers["Content-Length"] == "4"
    tail = client.get(url(inst), headers=AS_STORED | {"Range": "bytes=-100"})
    assert tail.get_data() == inst.data[-100:]
    past = client.get(url(inst), headers=AS_STORED | {"Range": f"bytes={len(inst.data)}-"})
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{len(inst.data)}"


def test_bulkdata_range(client: FlaskClient) -> None:
    inst = f.image("ct")
    store(client, inst)
    bulk = url(inst) + "/bulkdata/7FE00010"
    r = client.get(bulk, headers={"Accept": "application/octet-stream", "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.get_data() == inst.pixels[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(inst.pixels)}"
    whole = client.get(bulk, headers={"Accept": "application/octet-stream"})
    assert whole.status_code == 200 and whole.get_data() == inst.pixels
    doc = f.pdf()
    store(client, doc)
    pdf = client.get(url(doc) + "/bulkdata/00420011", headers={"Accept": "application/octet-stream",
                                                               "Range": "bytes=0-3"})
    assert pdf.status_code == 206 and pdf.get_data() == b"%PDF"
