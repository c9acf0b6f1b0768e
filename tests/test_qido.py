"""QIDO-RS over HTTP (PS3.18 §10.6, §8.3.4; PS3.4 C.2.2.2), on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import dicomfactory as f

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITIES, N_SERIES, N_INSTANCES, N_SERIES_INSTANCES = "00080061", "00201206", "00201208", "00201209"
RETRIEVE_URL, PATIENT_NAME, PATIENT_ID, STUDY_DESCRIPTION = "00081190", "00100010", "00100020", "00081030"
DICOM_JSON = "application/dicom+json"
TRUNCATED = ("299 localhost: The number of results exceeded the maximum supported by the server. "
             "Additional results can be requested.")


@dataclass
class Data:
    """UIDs of the stored dataset: 3 studies, 5 series, 6 instances."""

    a: str   # 2024-03-15 10:15, DUPONT^Jérôme (ISO_IR 100), CT series a1 (2 images) + PDF series a2
    a1: str
    a2: str
    b: str   # 2023-06-01 08:30, MARTIN^Paul, MR series b1 + SR series b2
    b1: str
    b2: str
    c: str   # 2025-01-10 16:00, durand^anne, CT series c1
    c1: str
    sops: dict[str, list[str]]


@pytest.fixture
def data(client: FlaskClient) -> Data:
    a, a1, a2, b, b1, b2, c, c1 = (f.new_uid() for _ in range(8))
    pat_b = {"patient_name": "MARTIN^Paul", "patient_id": "PAT002", "study_date": "20230601",
             "accession": "ACC002", "StudyTime": "083000"}
    pat_c = {"patient_name": "durand^anne", "patient_id": "PAT003", "study_date": "20250110",
             "accession": "ACC003", "StudyTime": "160000"}
    items = [
        f.latin1_ct(a, series=a1, instance_number=1), f.latin1_ct(a, series=a1, instance_number=2),
        f.pdf(a, a2, charset="ISO_IR 100", series_number=2),
        f.ct(b, b1, modality="MR", **pat_b), f.sr(b, b2, series_number=2, **pat_b),
        f.ct(c, c1, **pat_c),
    ]
    for study in (a, b, c):  # one request per study, so that the studies are created in this order
        body, ctype = f.multipart([i.data for i in items if i.study == study])
        assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    sops: dict[str, list[str]] = {}
    for item in items:
        sops.setdefault(item.series, []).append(item.sop)
    return Data(a, a1, a2, b, b1, b2, c, c1, sops)


def get(client: FlaskClient, url: str, status: int = 200, **headers: str) -> Any:
    r = client.get(url, headers=headers)
    assert r.status_code == status, r.get_data(as_text=True)
    return r


def values(body: list[dict[str, Any]], tag: str) -> list[Any]:
    return [item[tag]["Value"][0] for item in body]


def studies(client: FlaskClient, query: str) -> list[str]:
    return values(get(client, f"/dicom-web/studies?{query}").json, STUDY_UID)


# --- the six search URLs (PS3.18 §10.6.1) ---------------------------------------------------

def test_six_urls(client: FlaskClient, data: Data) -> None:
    expected = {
        "/dicom-web/studies": (STUDY_UID, [data.c, data.a, data.b]),  # newest study first
        "/dicom-web/series": (SERIES_UID, [data.a1, data.a2, data.b1, data.b2, data.c1]),
        "/dicom-web/instances": (SOP_UID, [s for x in (data.a1, data.a2, data.b1, data.b2, data.c1)
                                           for s in data.sops[x]]),
        f"/dicom-web/studies/{data.a}/series": (SERIES_UID, [data.a1, data.a2]),
        f"/dicom-web/studies/{data.a}/instances": (SOP_UID, data.sops[data.a1] + data.sops[data.a2]),
        f"/dicom-web/studies/{data.a}/series/{data.a1}/instances": (SOP_UID, data.sops[data.a1]),
    }
    for url, (tag, uids) in expected.items():
        r = get(client, url)
        assert r.mimetype == DICOM_JSON
        assert values(r.json, tag) == uids, url


def test_no_match_is_200_empty(client: FlaskClient, data: Data) -> None:
    r = get(client, "/dicom-web/studies?PatientID=NOBODY")
    assert r.json == [] and r.mimetype == DICOM_JSON
    assert get(client, f"/dicom-web/studies/{f.new_uid()}/series").json == []


# --- matching (PS3.4 C.2.2.2) ---------------------------------------------------------------

# (query string, studies expected, by name) -- PS3.4 C.2.2.2, PS3.18 §8.3.4.1
MATCHES = [
    pytest.param("PatientID=PAT002", "b", id="PS3.4-C.2.2.2.1-keyword"),
    pytest.param("00100020=PAT002", "b", id="PS3.18-8.3.4.1-tag"),
    pytest.param("PatientID=pat002", "", id="PS3.4-C.2.2.2.1-LO-case-sensitive"),
    pytest.param("PatientID=pat*", "", id="PS3.4-C.2.2.2.4-wildcard-case-sensitive"),
    pytest.param("PatientID=PAT*", "cab", id="PS3.4-C.2.2.2.4-wildcard-star"),
    pytest.param("AccessionNumber=ACC00?", "cab", id="PS3.4-C.2.2.2.4-wildcard-question"),
    pytest.param("PatientID=PA_*", "", id="PS3.4-C.2.2.2.4-underscore-is-literal"),
    pytest.param("PatientID=PA%25*", "", id="PS3.4-C.2.2.2.4-percent-is-literal"),
    pytest.param("PatientID=", "cab", id="PS3.4-C.2.2.2.3-universal"),
    pytest.param("PatientName=DUPONT%5EJ%C3%A9r%C3%B4me", "a", id="PS3.18-8.3.4.1-pn-utf8-latin1-stored"),
    pytest.param("PatientName=DUPONT^Jerome", "a", id="PS3.4-C.2.2.2.1-pn-accent-insensitive"),
    pytest.param("PatientName=dupont*", "a", id="PS3.4-C.2.2.2.4-pn-case-insensitive"),
    pytest.param("PatientName=*J%C3%89R*", "a", id="PS3.4-C.2.2.2.4-pn-inner-wildcard"),
    pytest.param("PatientName=DURAND^ANNE", "c", id="PS3.4-C.2.2.2.1-pn-stored-lower"),
    pytest.param("PatientName=jer", "", id="PS3.18-8.3.4.1-no-fuzzy-literal"),
    pytest.param("PatientName=jer&fuzzymatching=true", "a", id="PS3.18-8.3.4.1-fuzzy-word-prefix"),
    pytest.param("PatientName=anne%20dur&fuzzymatching=true", "c", id="PS3.18-8.3.4.1-fuzzy-any-order"),
    pytest.param("PatientName=ann%20mar&fuzzymatching=true", "", id="PS3.18-8.3.4.1-fuzzy-all-words"),
    pytest.param("ReferringPhysicianName=martin^helene*", "cab", id="PS3.4-C.2.2.2.4-referring-pn"),
    pytest.param("StudyDate=20240315", "a", id="PS3.4-C.2.2.2.1-date"),
    pytest.param("StudyDate=20240101-20241231", "a", id="PS3.4-C.2.2.2.5-closed-range"),
    pytest.param("StudyDate=20240315-20250110", "ca", id="PS3.4-C.2.2.2.5-inclusive-bounds"),
    pytest.param("StudyDate=20240101-", "ca", id="PS3.4-C.2.2.2.5-open-range-high"),
    pytest.param("StudyDate=-20240101", "b", id="PS3.4-C.2.2.2.5-open-range-low"),
    pytest.param("StudyTime=08-09", "b", id="PS3.4-C.2.2.2.5-time-range-hours"),
    pytest.param("StudyTime=08-10", "ab", id="PS3.4-C.2.2.2.5-time-partial-upper-covers-hour"),
    pytest.param("StudyTime=101500", "a", id="PS3.4-C.2.2.2.1-time"),
    pytest.param("StudyTime=1000-", "ca", id="PS3.4-C.2.2.2.5-time-open-range"),
    pytest.param("StudyDate=20240101-&StudyTime=-1200", "a", id="PS3.4-C.2.2.2-keys-and"),
    pytest.param("ModalitiesInStudy=MR", "b", id="PS3.18-6.7.1-modalities-in-study"),
    pytest.param("ModalitiesInStudy=CT", "ca", id="PS3.18-6.7.1-modalities-in-study-two"),
    pytest.param("ModalitiesInStudy=MR,DOC", "ab", id="PS3.18-6.7.1-modalities-list"),
    pytest.param("ModalitiesInStudy=D*", "a", id="PS3.4-C.2.2.2.4-modalities-wildcard"),
    pytest.param(f"SOPClassesInStudy={f.ENCAPSULATED_PDF}", "a", id="PS3.18-6.7.1-sop-classes-in-study"),
    pytest.param("StudyDescription=TDM*&InstitutionName=CH%20de%20Bretagne%20Sud&PatientSex=M", "cab",
                 id="PS3.4-C.2.2.2-extra-study-keys"),
]


@pytest.mark.parametrize("query, expected", MATCHES)
def test_study_matching(client: FlaskClient, data: Data, query: str, expected: str) -> None:
    assert studies(client, query) == [getattr(data, x) for x in expected]


def test_uid_lists(client: FlaskClient, data: Data) -> None:
    assert studies(client, f"StudyInstanceUID={data.a},{data.c}") == [data.c, data.a]
    assert studies(client, f"StudyInstanceUID={data.b}%5C{data.c}") == [data.c, data.b]  # backslash
    body = get(client, f"/dicom-web/series?SeriesInstanceUID={data.a2},{data.b1}").json
    assert values(body, SERIES_UID) == [data.a2, data.b1]


def test_series_and_instance_keys(client: FlaskClient, data: Data) -> None:
    def uids(url: str, tag: str) -> list[str]:
        return values(get(client, url).json, tag)

    assert uids("/dicom-web/series?Modality=CT", SERIES_UID) == [data.a1, data.c1]
    assert uids("/dicom-web/series?Modality=CT,MR", SERIES_UID) == [data.a1, data.b1, data.c1]
    assert uids("/dicom-web/series?SeriesNumber=2", SERIES_UID) == [data.a2, data.b2]
    assert uids("/dicom-web/series?PatientID=PAT002&BodyPartExamined=CHEST", SERIES_UID) == [data.b1, data.b2]
    assert uids(f"/dicom-web/instances?SOPClassUID={f.BASIC_TEXT_SR}", SOP_UID) == data.sops[data.b2]
    assert uids("/dicom-web/instances?InstanceNumber=2", SOP_UID) == data.sops[data.a1][1:]
    assert uids("/dicom-web/instances?PatientID=PAT003", SOP_UID) == data.sops[data.c1]
    assert uids(f"/dicom-web/studies/{data.a}/instances?Modality=DOC", SOP_UID) == data.sops[data.a2]


# --- returned attributes (PS3.18 §10.6.3.3, Tables 6.7.1-2/2a/2b) -----------------------------

def test_computed_attributes(client: FlaskClient, data: Data) -> None:
    by_uid = {s[STUDY_UID]["Value"][0]: s for s in get(client, "/dicom-web/studies").json}
    a = by_uid[data.a]
    assert a[MODALITIES] == {"vr": "CS", "Value": ["CT", "DOC"]}
    assert (a[N_SERIES], a[N_INSTANCES]) == ({"vr": "IS", "Value": [2]}, {"vr": "IS", "Value": [3]})
    assert by_uid[data.b][MODALITIES]["Value"] == ["MR", "SR"]
    series = get(client, f"/dicom-web/studies/{data.a}/series").json
    assert [s[N_SERIES_INSTANCES]["Value"] for s in series] == [[2], [1]]
    assert series[0]["00200011"] == {"vr": "IS", "Value": [1]}  # IS as a JSON number (PS3.18 F.2.3)
    body = get(client, f"/dicom-web/studies?includefield=SOPClassesInStudy&StudyInstanceUID={data.a}").json
    assert body[0]["00080062"]["Value"] == sorted([f.ENCAPSULATED_PDF, "1.2.840.10008.5.1.4.1.1.2"])


def test_retrieve_url_is_absolute(client: FlaskClient, data: Data) -> None:
    root = "http://localhost/dicom-web"
    assert get(client, f"/dicom-web/studies?StudyInstanceUID={data.b}").json[0][RETRIEVE_URL] == {
        "vr": "UR", "Value": [f"{root}/studies/{data.b}"]}
    assert get(client, f"/dicom-web/series?SeriesInstanceUID={data.b1}").json[0][RETRIEVE_URL]["Value"] == [
        f"{root}/studies/{data.b}/series/{data.b1}"]
    sop = data.sops[data.b1][0]
    assert get(client, f"/dicom-web/instances?SOPInstanceUID={sop}").json[0][RETRIEVE_URL]["Value"] == [
        f"{root}/studies/{data.b}/series/{data.b1}/instances/{sop}"]


def test_parent_attributes_only_when_not_in_path(client: FlaskClient, data: Data) -> None:
    """PS3.18 §10.6.3.3.2-3: study (series) attributes when the URL has no study (series) UID."""
    root_series = get(client, "/dicom-web/series?Modality=MR").json[0]
    assert root_series[PATIENT_NAME]["Value"] == [{"Alphabetic": "MARTIN^Paul"}]
    assert root_series[MODALITIES]["Value"] == ["MR", "SR"]
    scoped_series = get(client, f"/dicom-web/studies/{data.b}/series").json[0]
    assert PATIENT_NAME not in scoped_series and MODALITIES not in scoped_series
    root_instance = get(client, "/dicom-web/instances?PatientID=PAT003").json[0]
    assert {PATIENT_NAME, "0008103E", N_SERIES_INSTANCES} <= root_instance.keys()
    study_instance = get(client, f"/dicom-web/studies/{data.c}/instances").json[0]
    assert "0008103E" in study_instance and PATIENT_NAME not in study_instance
    series_instance = get(client, f"/dicom-web/studies/{data.c}/series/{data.c1}/instances").json[0]
    assert "0008103E" not in series_instance
    assert series_instance["00280010"] == {"vr": "US", "Value": [64]}  # Rows (Table 6.7.1-2b)


def test_matching_keys_are_returned(client: FlaskClient, data: Data) -> None:
    item = get(client, "/dicom-web/instances?PatientID=PAT003&StudyDescription=").json[0]
    assert item[PATIENT_ID]["Value"] == ["PAT003"]
    assert item[STUDY_DESCRIPTION]["Value"] == ["TDM THORAX"]


# (url with a query, tag expected in every result, tag never returned) -- PS3.18 §8.3.4.3
INCLUDES = [
    pytest.param("/dicom-web/studies?includefield=StudyDescription", STUDY_DESCRIPTION, None,
                 id="PS3.18-8.3.4.3-study-keyword"),
    pytest.param("/dicom-web/studies?includefield=00081030", STUDY_DESCRIPTION, None, id="PS3.18-8.3.4.3-study-tag"),
    pytest.param("/dicom-web/studies?includefield=all", "00100021", "00180015", id="PS3.18-8.3.4.3-study-all"),
    pytest.param("/dicom-web/series?includefield=BodyPartExamined", "00180015", None,
                 id="PS3.18-8.3.4.3-series-keyword"),
    pytest.param("/dicom-web/series?includefield=00180015", "00180015", None, id="PS3.18-8.3.4.3-series-tag"),
    pytest.param("/dicom-web/series?includefield=all", "00180015", "00080008", id="PS3.18-8.3.4.3-series-all"),
    pytest.param("/dicom-web/instances?Modality=CT&includefield=ImageType", "00080008", None,
                 id="PS3.18-8.3.4.3-instance-keyword"),
    pytest.param("/dicom-web/instances?Modality=CT&includefield=00080008", "00080008", None,
                 id="PS3.18-8.3.4.3-instance-tag"),
    pytest.param("/dicom-web/instances?Modality=CT&includefield=all", "00281052", "7FE00010",
                 id="PS3.18-8.3.4.3-instance-all-no-bulkdata"),
]


@pytest.mark.parametrize("url, present, absent", INCLUDES)
def test_includefield(client: FlaskClient, data: Data, url: str, present: str, absent: str | None) -> None:
    body = get(client, url).json
    assert body
    for item in body:
        assert present in item
        assert absent is None or absent not in item


def test_instance_all_has_no_bulkdata_uri(client: FlaskClient, data: Data) -> None:
    r = get(client, "/dicom-web/instances?includefield=all&includefield=PixelData&includefield=EncapsulatedDocument")
    assert "BulkDataURI" not in r.get_data(as_text=True)
    pdf = next(i for i in r.json if i["00080016"]["Value"] == [f.ENCAPSULATED_PDF])
    assert pdf["00420012"]["Value"] == ["application/pdf"] and "00420011" not in pdf


def _check_vr(element: dict[str, Any], where: str) -> None:
    assert "vr" in element, where
    if element["vr"] == "SQ":
        for item in element.get("Value", []):
            for tag, sub in item.items():
                _check_vr(sub, f"{where}.{tag}")
    if element["vr"] in ("IS", "DS"):
        assert all(isinstance(v, (int, float)) for v in element.get("Value", [])), where


@pytest.mark.parametrize("url", ["/dicom-web/studies?includefield=all", "/dicom-web/series?includefield=all",
                                 "/dicom-web/instances?includefield=all", "/dicom-web/instances"])
def test_every_attribute_has_vr_and_numbers(client: FlaskClient, data: Data, url: str) -> None:
    """PS3.18 F.2.2: every attribute has its vr; F.2.3: IS and DS values are JSON numbers."""
    for item in get(client, url).json:
        for tag, element in item.items():
            _check_vr(element, tag)


# --- paging and the server cap (PS3.18 §8.3.4.4) --------------------------------------------

@pytest.mark.parametrize("url, total", [("/dicom-web/studies", 3), ("/dicom-web/instances", 6),
                                        ("/dicom-web/studies?ModalitiesInStudy=CT", 2),
                                        ("/dicom-web/series?ModalitiesInStudy=CT", 3)])
def test_limit_offset_pages_are_disjoint(client: FlaskClient, data: Data, url: str, total: int) -> None:
    sep = "&" if "?" in url else "?"
    everything = [item[RETRIEVE_URL]["Value"][0] for item in get(client, url).json]
    assert len(everything) == total
    pages = []
    for offset in range(0, total + 2, 2):
        r = get(client, f"{url}{sep}limit=2&offset={offset}")
        assert "Warning" not in r.headers
        pages.append([item[RETRIEVE_URL]["Value"][0] for item in r.json])
    assert [u for page in pages for u in page] == everything
    assert pages[-1] == []


def test_limit_zero_and_offset_past_end(client: FlaskClient, data: Data) -> None:
    assert get(client, "/dicom-web/studies?limit=0").json == []
    assert get(client, "/dicom-web/studies?offset=3").json == []


def test_server_cap_warns(app: Flask, client: FlaskClient, data: Data) -> None:
    app.config["QIDO_MAX_RESULTS"] = 2
    r = get(client, "/dicom-web/studies")
    assert values(r.json, STUDY_UID) == [data.c, data.a]
    assert r.headers.getlist("Warning") == [TRUNCATED]
    r = get(client, "/dicom-web/studies?limit=5&offset=1")
    assert values(r.json, STUDY_UID) == [data.a, data.b]
    assert "Warning" not in r.headers  # only two matches left: nothing truncated
    r = get(client, "/dicom-web/instances?limit=5")
    assert len(r.json) == 2 and r.headers.getlist("Warning") == [TRUNCATED]
    r = get(client, "/dicom-web/instances?limit=2")
    assert len(r.json) == 2 and "Warning" not in r.headers  # the client's own page size


def test_fuzzymatching_is_supported_without_warning(client: FlaskClient, data: Data) -> None:
    r = get(client, "/dicom-web/studies?PatientName=dup&fuzzymatching=true")
    assert values(r.json, STUDY_UID) == [data.a]
    assert "Warning" not in r.headers


# --- errors and media types -----------------------------------------------------------------

# (url, fragment of the reason) -- PS3.18 §8.3.4, §10.6.3: 400 Bad Request
BAD_REQUESTS = [
    pytest.param("/dicom-web/studies?Foo=1", "not a DICOM keyword", id="PS3.18-8.3.4.1-unknown-parameter"),
    pytest.param("/dicom-web/studies?Modality=CT", "not a matching key", id="PS3.18-6.7.1-1-series-key-on-studies"),
    pytest.param("/dicom-web/series?SOPInstanceUID=1.2.3", "not a matching key", id="PS3.18-6.7.1-1-instance-key"),
    pytest.param("/dicom-web/studies?StudyDate=2024-03-15", "YYYYMMDD", id="PS3.4-C.2.2.2.5-bad-date"),
    pytest.param("/dicom-web/studies?StudyTime=99", "HH", id="PS3.5-TM-bad-time"),
    pytest.param("/dicom-web/studies?StudyInstanceUID=1.2.x", "not a UID", id="PS3.5-9.1-bad-uid"),
    pytest.param("/dicom-web/studies?limit=-1", "non-negative", id="PS3.18-8.3.4.4-negative-limit"),
    pytest.param("/dicom-web/studies?offset=abc", "non-negative", id="PS3.18-8.3.4.4-bad-offset"),
    pytest.param("/dicom-web/studies?includefield=Nope", "not a DICOM keyword", id="PS3.18-8.3.4.3-bad-include"),
    pytest.param("/dicom-web/studies?fuzzymatching=maybe", "true or false", id="PS3.18-8.3.4.1-bad-fuzzy"),
    pytest.param("/dicom-web/studies/1.2.x/series", "not a valid UID", id="PS3.5-9.1-bad-uid-in-path"),
]


@pytest.mark.parametrize("url, reason", BAD_REQUESTS)
def test_bad_request(client: FlaskClient, url: str, reason: str) -> None:
    r = get(client, url, 400)
    assert r.mimetype == DICOM_JSON
    assert reason in r.json["00000902"]["Value"][0] or reason in r.json["message"]


@pytest.mark.parametrize("accept, media_type", [
    ("application/dicom+json", DICOM_JSON), ("application/json", "application/json"), ("*/*", DICOM_JSON),
    ("application/json;q=0.5, application/dicom+json", DICOM_JSON),
    ("text/html,application/xhtml+xml,*/*;q=0.8", DICOM_JSON)])
def test_accepted_media_types(client: FlaskClient, data: Data, accept: str, media_type: str) -> None:
    r = get(client, "/dicom-web/studies?PatientID=PAT001", Accept=accept)
    assert r.mimetype == media_type
    assert values(r.json, STUDY_UID) == [data.a]


@pytest.mark.parametrize("accept", ["text/html", "application/dicom+xml",
                                    'multipart/related; type="application/dicom"'])
def test_not_acceptable(client: FlaskClient, accept: str) -> None:
    assert get(client, "/dicom-web/studies", 406, Accept=accept).status_code == 406
