"""Helpers of the pixel-service tests: store generated instances, split multipart answers, read pixels."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from flask.testing import FlaskClient
from pydicom import dcmread
from werkzeug.http import parse_options_header

import dicomfactory as f

MP_DICOM = 'multipart/related; type="application/dicom"'
OTHER_ORG = "org-b"

def store(client: FlaskClient, *items: f.Instance) -> None:
    """Store ``items`` with one STOW-RS request; fail the test unless all are stored."""
    body, ctype = f.multipart([i.data for i in items])
    r = client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.json

def url(inst: f.Instance, level: str = "instance") -> str:
    """The WADO-RS URL of ``inst``, or of its series or study."""
    base = f"/dicom-web/studies/{inst.study}"
    return {"study": base, "series": f"{base}/series/{inst.series}",
            "instance": f"{base}/series/{inst.series}/instances/{inst.sop}"}[level]

def parts(response: Any) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer."""
    ctype, params = parse_options_header(response.headers["Content-Type"])
    assert ctype == "multipart/related", response.headers["Content-Type"]
    boundary = b"--" + params["boundary"].encode()
    pieces = response.get_data().split(boundary)
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n"
    out = []
    for piece in pieces[1:-1]:
        head, _, body = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        assert body.endswith(b"\r\n")
        out.append((headers["Content-Type"], body[:-2]))
    return out

def syntax_of(content_type: str) -> str:
    return parse_options_header(content_type)[1]["transfer-syntax"]

def pixels(data: bytes) -> np.ndarray:
    """The decoded pixel array of a Part 10 instance."""
    return dcmread(io.BytesIO(data)).pixel_array

def other_org(client: FlaskClient, mint: Any) -> FlaskClient:
    """A client of another organisation with every ImagingStudy permission."""
    other = client.application.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint('system/*.cruds', org=OTHER_ORG)}"
    return other
