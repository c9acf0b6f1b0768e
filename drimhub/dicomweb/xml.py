"""DICOM XML: the Native DICOM Model (PS3.19 §A.1), generated from DICOM JSON (PS3.18 §F.2).

One data set becomes one ``NativeDicomModel`` document; QIDO-RS and metadata answers send one
per part of ``multipart/related; type="application/dicom+xml"`` (PS3.18 §8.7.3.2, Table 8.7.3-1).

Structure, per PS3.19 Table A.1-1: ``DicomAttribute`` with ``tag`` (8 hex digits), ``vr``,
``keyword`` (public attributes only) and ``privateCreator`` (private ones); values as
``Value number="n"`` (numbered from 1), person names as ``PersonName number="n"`` with
``Alphabetic``/``Ideographic``/``Phonetic`` groups of ``FamilyName``, ``GivenName``,
``MiddleName``, ``NamePrefix``, ``NameSuffix``; sequences as ``Item number="n"``; binary
values as ``BulkData uri=""`` or ``InlineBinary`` (Base64). Generated with the standard
library's ``xml.etree``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from xml.etree import ElementTree as ET

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
DICOM_XML = "application/dicom+xml"
#: Components of a person name group, in order (PS3.19 §A.1.5; PS3.5 §6.2 PN).
PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _keyword(tag: str) -> str | None:
    number = int(tag, 16)
    if (number >> 16) % 2:  # private: no keyword
        return None
    return keyword_for_tag(number) or None


def _private_creator(tag: str, dataset: Mapping[str, Any]) -> str | None:
    """The Private Creator of a private data element (PS3.5 §7.8.1): (gggg,00xx) for (gggg,xxyy)."""
    group, element = tag[:4], int(tag[4:], 16)
    if int(group, 16) % 2 == 0 or element < 0x1000:
        return None
    creator = dataset.get(f"{group}00{element >> 8:02X}", {}).get("Value", [None])[0]
    return str(creator) if creator is not None else None


def _person_name(parent: ET.Element, number: int, value: Mapping[str, str]) -> None:
    name = ET.SubElement(parent, "PersonName", number=str(number))
    for group in PN_GROUPS:
        if group not in value:
            continue
        element = ET.SubElement(name, group)
        for component, text in zip(PN_COMPONENTS, value[group].split("^")):
            if text:
                ET.SubElement(element, component).text = text


def _attribute(parent: ET.Element, tag: str, attr: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    vr = attr.get("vr", "UN")
    element = ET.SubElement(parent, "DicomAttribute", tag=tag.upper(), vr=vr)
    if keyword := _keyword(tag):
        element.set("keyword", keyword)
    if creator := _private_creator(tag, dataset):
        element.set("privateCreator", creator)
    if "BulkDataURI" in attr:
        ET.SubElement(element, "BulkData", uri=attr["BulkDataURI"])
    elif "InlineBinary" in attr:
        ET.SubElement(element, "InlineBinary").text = attr["InlineBinary"]
    for number, value in enumerate(attr.get("Value", []), start=1):
        if vr == "SQ":
            _dataset(ET.SubElement(element, "Item", number=str(number)), value or {})
        elif vr == "PN":
            _person_name(element, number, value or {})
        else:
            child = ET.SubElement(element, "Value", number=str(number))
            if value is not None:
                child.text = str(value)


def _dataset(parent: ET.Element, dataset: Mapping[str, Any]) -> None:
    for tag in sorted(dataset):  # PS3.19 §A.1: attributes in ascending tag order
        _attribute(parent, tag, dataset[tag], dataset)


def to_xml(dataset: Mapping[str, Any]) -> bytes:
    """One DICOM JSON object as a Native DICOM Model document (UTF-8, with its XML declaration).

    Parameters
    ----------
    dataset : mapping
        A DICOM JSON data set (PS3.18 §F.2): tag → {"vr", "Value" | "BulkDataURI" | "InlineBinary"}.

    Returns
    -------
    bytes
    """
    root = ET.Element("NativeDicomModel", xmlns=NAMESPACE)
    root.set("xml:space", "preserve")
    _dataset(root, dataset)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def parts(datasets: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[bytes], int]]:
    """The multipart parts (content type, body, length) of one XML document per data set."""
    out = []
    for dataset in datasets:
        body = to_xml(dataset)
        out.append((f"{DICOM_XML}; charset=utf-8", [body], len(body)))
    return out
