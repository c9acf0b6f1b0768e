"""DICOM XML (PS3.19 §A.1 Native DICOM Model) for QIDO-RS and metadata, checked against the model's rules."""

from __future__ import annotations

import base64
import re
from xml.etree import ElementTree as ET

import pytest
from flask.testing import FlaskClient
from pydicom.datadict import dictionary_VR, keyword_for_tag

import dicomfactory as f
from drimhub.dicomweb.xml import to_xml
from pixelhelpers import parts, store, url

NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
XML_MP = 'multipart/related; type="application/dicom+xml"'
PN_CHILDREN = {"FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"}


def check_dataset(parent: ET.Element) -> None:
    """The Native DICOM Model rules (PS3.19 Table A.1-1) on every attribute of a data set, recursively."""
    tags = []
    for attr in parent:
        assert attr.tag == NS + "DicomAttribute"
        tag, vr = attr.get("tag", ""), attr.get("vr", "")
        assert re.fullmatch(r"[0-9A-F]{8}", tag) and re.fullmatch(r"[A-Z]{2}", vr)
        tags.append(tag)
        if int(tag[:4], 16) % 2 == 0:
            assert attr.get("keyword") == keyword_for_tag(int(tag, 16)) and vr in dictionary_VR(int(tag, 16))
        kinds = {child.tag.removeprefix(NS) for child in attr}
        assert len(kinds) <= 1 and kinds <= {"Value", "PersonName", "Item", "BulkData", "InlineBinary"}
        numbered = [child for child in attr if child.tag in (NS + "Value", NS + "PersonName", NS + "Item")]
        assert [int(c.get("number", 0)) for c in numbered] == list(range(1, len(numbered) + 1))
        for child in attr:
            name = child.tag.removeprefix(NS)
            assert name == {"SQ": "Item", "PN": "PersonName"}.get(vr, name)
            if name == "Item":
                check_dataset(child)
            elif name == "PersonName":
                for group in child:
                    assert group.tag.removeprefix(NS) in ("Alphabetic", "Ideographic", "Phonetic")
                    assert {c.tag.removeprefix(NS) for c in group} <= PN_CHILDREN
            elif name == "BulkData":
                assert child.get("uri", "").startswith("http")
            elif name == "InlineBinary":
                base64.b64decode(child.text or "", validate=True)
    assert tags == sorted(tags)


def documents(response) -> list[ET.Element]:
    assert response.status_code == 200, response.get_data()[:300]
    got = parts(response)
    assert all(ctype.startswith("application/dicom+xml") for ctype, _ in got)
    roots = [ET.fromstring(body) for _, body in got]
    for root in roots:
        assert root.tag == NS + "NativeDicomModel"
        check_dataset(root)
    return roots


def value(root: ET.Element, keyword: str) -> ET.Element:
    found = root.find(f"{NS}DicomAttribute[@keyword='{keyword}']")
    assert found is not None, keyword
    return found


def test_qido_as_xml_by_header_and_by_accept_parameter(client: FlaskClient) -> None:
    inst = f.ct()
    store(client, inst)
    by_header = documents(client.get("/dicom-web/studies", headers={"Accept": XML_MP}))
    by_param = documents(client.get("/dicom-web/studies", query_string={"accept": XML_MP}))
    assert len(by_header) == len(by_param) == 1
    name = value(by_header[0], "PatientName").find(f"{NS}PersonName[@number='1']/{NS}Alphabetic")
    assert name.find(NS + "FamilyName").text == "DUPONT" and name.find(NS + "GivenName").text == "Jérôme"
    assert value(by_header[0], "StudyInstanceUID").find(NS + "Value").text == inst.study
    assert client.get("/dicom-web/studies").mimetype == "application/dicom+json"  # JSON stays the default


def test_metadata_as_xml_with_sequences_and_bulk_data(client: FlaskClient) -> None:
    report, image = f.sr(), f.ct()
    store(client, report)
    store(client, image)
    [sr_root] = documents(client.get(url(report) + "/metadata", headers={"Accept": XML_MP}))
    item = value(sr_root, "ContentSequence").find(f"{NS}Item[@number='1']")
    assert value(item, "TextValue").find(NS + "Value").text == "Pas d'anomalie décelée."
    [ct_root] = documents(client.get(url(image, "series") + "/metadata", headers={"Accept": XML_MP}))
    assert value(ct_root, "PixelData").find(NS + "BulkData").get("uri").endswith("/bulkdata/7FE00010")
    assert value(ct_root, "ImageType").findall(NS + "Value")[2].text == "AXIAL"



@pytest.mark.parametrize("dataset, check", [
    ({"00091010": {"vr": "LO", "Value": ["x"]}, "00090010": {"vr": "LO", "Value": ["ACME"]}},
     lambda root: root[1].get("privateCreator") == "ACME" and root[1].get("keyword") is None),
    ({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]}},
     lambda root: root[0][0][1][0].text == "山田"),
    ({"00280010": {"vr": "US"}}, lambda root: len(root[0]) == 0),
    ({"00420011": {"vr": "OB", "InlineBinary": "JVBERg=="}}, lambda root: root[0][0].text == "JVBERg=="),
], ids=["PS3.19-A.1-private-creator", "PS3.19-A.1.5-ideographic", "PS3.19-A.1-empty", "PS3.19-A.1-inline"])
def test_model_rules(dataset: dict, check) -> None:
    root = ET.fromstring(to_xml(dataset))
    assert root.get("{http://www.w3.org/XML/1998/namespace}space") == "preserve"
    assert check(root)


def test_json_preferred_by_q_value(client: FlaskClient) -> None:
    inst = f.ct()
    store(client, inst)
    accept = f"{XML_MP}; q=0.5, application/dicom+json"
    assert client.get(url(inst) + "/metadata", headers={"Accept": accept}).mimetype == "application/dicom+json"
