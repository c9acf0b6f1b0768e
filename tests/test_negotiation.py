"""Content negotiation (PS3.18 §8.7): Accept header → selected media type and transfer syntax.

Pure tests: no app, no database.
"""

from __future__ import annotations

import pytest

from drimhub.dicomweb.negotiation import (COMPRESSED_MEDIA_TYPES, accepts_json, parse_accept, select_bulk,
                                          select_dicom)

EVRLE = "1.2.840.10008.1.2.1"
IVRLE = "1.2.840.10008.1.2"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JPX = "1.2.840.10008.1.2.4.92"  # pydicom has no decoder for it: served as stored only
JLS = "1.2.840.10008.1.2.4.80"
MP = 'multipart/related; type="application/dicom"'

# (Accept header, stored transfer syntax, expected transfer syntax or None for 406) -- PS3.18 §8.7.8
DICOM_CASES = [
    pytest.param(None, EVRLE, EVRLE, id="PS3.18-8.7.3.4-no-accept-default-evrle"),
    pytest.param("", RLE, EVRLE, id="PS3.18-8.7.3.4-empty-accept-default-evrle"),
    pytest.param("*/*", RLE, EVRLE, id="PS3.18-8.7.3.5.2-any-default-evrle"),
    pytest.param(MP, RLE, EVRLE, id="PS3.18-8.7.3.5.2-no-syntax-parameter-evrle"),
    pytest.param(MP, IVRLE, EVRLE, id="PS3.18-8.7.3.5.2-implicit-to-evrle"),
    pytest.param(f"{MP}; transfer-syntax=*", RLE, RLE, id="PS3.18-8.7.3.5.1-star-as-stored"),
    pytest.param(f"{MP}; transfer-syntax=*", IVRLE, IVRLE, id="PS3.18-8.7.3.5.1-star-implicit-as-stored"),
    pytest.param(f"{MP}; transfer-syntax={RLE}", RLE, RLE, id="PS3.18-8.7.8.2-stored-syntax-named"),
    pytest.param(f"{MP}; transfer-syntax={JLS}", RLE, None, id="PS3.18-8.7.8-no-transcoding-406"),
    pytest.param(f"{MP}; transfer-syntax=1.2.3.4.5.6.7", EVRLE, None, id="PS3.18-8.7.8-unknown-syntax-406"),
    pytest.param("text/html", EVRLE, None, id="PS3.18-8.7.8-html-406"),
    pytest.param("application/dicom+json", EVRLE, None, id="PS3.18-8.7.8-json-for-instances-406"),
    pytest.param(f"{MP}; transfer-syntax={EVRLE}", JPX, None, id="PS3.18-8.7.3.4-undecodable-406"),
    pytest.param(f"{MP}; transfer-syntax=*", JPX, JPX, id="PS3.18-8.7.3.4-undecodable-as-stored"),
    # DRIMbox-style preference list: JPEG Lossless preferred, EVRLE as fallback
    pytest.param(f"{MP}; transfer-syntax=1.2.840.10008.1.2.4.57; q=0.9, {MP}; transfer-syntax={EVRLE}; q=0.5",
                 RLE, EVRLE, id="PS3.18-8.7.8-drimbox-fallback-evrle"),
    pytest.param(f"{MP}; transfer-syntax=1.2.840.10008.1.2.4.57; q=0.9, {MP}; transfer-syntax={EVRLE}; q=0.5",
                 "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.57", id="PS3.18-8.7.8-drimbox-preferred-as-stored"),
    pytest.param(f"{MP}; transfer-syntax={EVRLE}; q=0.4, {MP}; transfer-syntax=*; q=0.8", RLE, RLE,
                 id="RFC9110-12.5.1-higher-q-wins-regardless-of-order"),
    pytest.param(f"{MP}; transfer-syntax={EVRLE}, {MP}; transfer-syntax=*", RLE, EVRLE,
                 id="RFC9110-12.5.1-equal-q-header-order"),
    pytest.param(f"*/*, {MP}; transfer-syntax=*", RLE, RLE, id="RFC9110-12.5.1-specific-beats-wildcard"),
    pytest.param(f"{MP}; transfer-syntax=*; q=0, {MP}; q=0.1", RLE, EVRLE, id="RFC9110-12.4.2-q0-not-acceptable"),
    # odd but legal spellings
    pytest.param('  MULTIPART/Related ;TYPE = "application/dicom" ;  transfer-syntax = * ,', RLE, RLE,
                 id="RFC9110-5.6-whitespace-case-trailing-comma"),
    pytest.param("multipart/related; type=application/dicom; transfer-syntax=*", RLE, RLE,
                 id="RFC9110-5.6.6-unquoted-type"),
    pytest.param(f'{MP}; transfer-syntax="{RLE}"; boundary=abc; charset=utf-8', RLE, RLE,
                 id="RFC9110-5.6.6-quoted-syntax-extra-params"),
    pytest.param(f",, text/html;q=0.9 ,{MP};transfer-syntax=*;q=0.2", RLE, RLE, id="RFC9110-5.6.1-empty-elements"),
    pytest.param("multipart/*; transfer-syntax=*", RLE, RLE, id="RFC9110-12.5.1-multipart-wildcard"),
    pytest.param("multipart/related", RLE, EVRLE, id="PS3.18-8.7.5-multipart-without-type"),
    pytest.param("garbage, text/plain;q=abc", EVRLE, None, id="RFC9110-12.5.1-malformed-ignored-406"),
]


@pytest.mark.parametrize("accept, stored, expected", DICOM_CASES)
def test_select_dicom(accept: str | None, stored: str, expected: str | None) -> None:
    chosen = select_dicom(parse_accept(accept), stored)
    assert (chosen.transfer_syntax if chosen else None) == expected
    if chosen:
        assert chosen.content_type() == f"application/dicom; transfer-syntax={expected}"


def test_single_part_application_dicom_only_when_allowed() -> None:
    ranges = parse_accept("application/dicom")
    assert select_dicom(ranges, EVRLE) is None
    chosen = select_dicom(ranges, IVRLE, single_part=True)
    assert chosen is not None and not chosen.multipart and chosen.transfer_syntax == EVRLE


# (Accept header, stored syntax, expected (media type, syntax) or None) -- PS3.18 Table 8.7.3-4 / 8.7.3-5
OCTET = 'multipart/related; type="application/octet-stream"'
BULK_CASES = [
    pytest.param(OCTET, EVRLE, ("application/octet-stream", EVRLE), id="PS3.18-T8.7.3-4-native"),
    pytest.param(OCTET, IVRLE, ("application/octet-stream", EVRLE), id="PS3.18-T8.7.3-4-implicit-native"),
    pytest.param(OCTET, RLE, ("application/octet-stream", EVRLE), id="PS3.18-T8.7.3-4-rle-decoded"),
    pytest.param(f"{OCTET}; transfer-syntax=*", RLE, ("application/octet-stream", RLE),
                 id="PS3.18-8.7.3.5.1-octet-star-as-stored"),
    pytest.param('multipart/related; type="image/dicom-rle"', RLE, ("image/dicom-rle", RLE),
                 id="PS3.18-T8.7.3-5-rle"),
    pytest.param('multipart/related; type="image/x-dicom-rle"', RLE, ("image/dicom-rle", RLE),
                 id="PS3.18-T8.7.3-5-rle-legacy-name"),
    pytest.param(f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}', JPEG_BASELINE,
                 ("image/jpeg", JPEG_BASELINE), id="PS3.18-T8.7.3-5-jpeg-baseline"),
    pytest.param('multipart/related; type="image/jpeg"', JPEG_LOSSLESS, ("image/jpeg", JPEG_LOSSLESS),
                 id="PS3.18-T8.7.3-5-jpeg-default"),
    pytest.param(f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_LOSSLESS}', JPEG_BASELINE, None,
                 id="PS3.18-T8.7.3-5-other-jpeg-406"),
    pytest.param('multipart/related; type="image/jls"', RLE, None, id="PS3.18-T8.7.3-5-jls-for-rle-406"),
    pytest.param(OCTET, JPX, None, id="PS3.18-T8.7.3-4-undecodable-406"),
    pytest.param('multipart/related; type="image/jls", ' + OCTET + "; q=0.5", RLE,
                 ("application/octet-stream", EVRLE), id="PS3.18-8.7.8-fallback-octet"),
    pytest.param('multipart/related; type="*/*"', RLE, ("image/dicom-rle", RLE), id="dicomweb-client-any-as-stored"),
    pytest.param('multipart/related; type="*/*"', EVRLE, ("application/octet-stream", EVRLE),
                 id="dicomweb-client-any-native"),
    pytest.param(None, JLS, ("image/jls", JLS), id="no-accept-as-stored"),
    pytest.param("image/*", JPEG_BASELINE, ("image/jpeg", JPEG_BASELINE), id="RFC9110-12.5.1-image-wildcard"),
]


@pytest.mark.parametrize("accept, stored, expected", BULK_CASES)
def test_select_bulk(accept: str | None, stored: str, expected: tuple[str, str] | None) -> None:
    chosen = select_bulk(parse_accept(accept), stored)
    assert ((chosen.media_type, chosen.transfer_syntax) if chosen else None) == expected


@pytest.mark.parametrize("accept, expected", [
    pytest.param(OCTET, ("application/octet-stream", EVRLE), id="PS3.18-10.4.1.1.5-octet"),
    pytest.param(f"{OCTET}; transfer-syntax=*", ("application/octet-stream", EVRLE), id="PS3.18-10.4.1.1.5-star"),
    pytest.param('multipart/related; type="image/jpeg"', None, id="PS3.18-10.4.1.1.5-image-for-non-pixel-406"),
])
def test_select_bulk_non_pixel(accept: str, expected: tuple[str, str] | None) -> None:
    chosen = select_bulk(parse_accept(accept), JPEG_BASELINE, pixel_data=False)
    assert ((chosen.media_type, chosen.transfer_syntax) if chosen else None) == expected


@pytest.mark.parametrize("accept, expected", [
    pytest.param(None, True, id="PS3.18-10.4.1.1.2-no-accept"),
    pytest.param("application/dicom+json", True, id="PS3.18-10.4.1.1.2-dicom-json"),
    pytest.param("application/json", True, id="PS3.18-10.4.1.1.2-plain-json"),
    pytest.param("application/*;q=0.2", True, id="RFC9110-12.5.1-application-wildcard"),
    pytest.param("application/dicom+xml", False, id="PS3.18-10.4.1.1.2-xml-406"),
    pytest.param(f"{MP}", False, id="PS3.18-10.4.1.1.2-multipart-406"),
    pytest.param("application/dicom+json;q=0", False, id="RFC9110-12.4.2-json-q0"),
])
def test_accepts_json(accept: str | None, expected: bool) -> None:
    assert accepts_json(parse_accept(accept)) is expected


def test_parse_accept_orders_and_keeps_params() -> None:
    ranges = parse_accept('text/html;q=0.1, multipart/related; type="application/dicom"; '
                          'transfer-syntax=1.2.840.10008.1.2.1;q=0.7, */*;q=0.7')
    assert [(r.type, r.q) for r in ranges] == [("multipart/related", 0.7), ("*/*", 0.7), ("text/html", 0.1)]
    assert ranges[0].part == "application/dicom" and ranges[0].syntax == EVRLE


def test_compressed_media_types_cover_table_8_7_3_5() -> None:
    assert set(COMPRESSED_MEDIA_TYPES.values()) == {"image/jpeg", "image/jls", "image/jp2", "image/jpx",
                                                    "image/dicom-rle"}
