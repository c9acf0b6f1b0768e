"""Real DICOM test data, generated with pydicom (no file is downloaded or shipped)."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit,
                         RLELossless, SecondaryCaptureImageStorage)

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class Instance:
    """A generated instance: its bytes and what the tests check against."""

    data: bytes
    study: str
    series: str
    sop: str
    sop_class: str
    frames: list[bytes] = field(default_factory=list)

    @property
    def pixels(self) -> bytes:
        return b"".join(self.frames)


def _base(study: str, series: str, sop: str, sop_class: str, *, patient_name: str = "DUPONT^Jérôme",
          patient_id: str = "PAT001", charset: str = "ISO_IR 192", modality: str = "CT",
          study_date: str = "20240315", accession: str = "ACC001", instance_number: int = 1,
          series_number: int = 1, **extra: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "CHU-TEST"
    ds.PatientBirthDate = "19580101"
    ds.PatientSex = "M"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = "MARTIN^Hélène^^Dr"
    ds.StudyID = "1"
    ds.StudyDescription = "TDM THORAX"
    ds.InstitutionName = "CH de Bretagne Sud"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"Series {series_number}"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = instance_number
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def _pixels(ds: Dataset, rows: int, cols: int, frames: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 4096, size=(frames, rows, cols), dtype=np.uint16)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return [arr[i].tobytes() for i in range(frames)]


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct(study: str | None = None, series: str | None = None, sop: str | None = None, *, rows: int = 64,
       cols: int = 64, frames: int = 1, transfer_syntax: str = ExplicitVRLittleEndian, seed: int = 1,
       **attrs: object) -> Instance:
    """A CT image (or multi-frame Secondary Capture when ``frames`` > 1)."""
    study, series, sop = study or new_uid(), series or new_uid(), sop or new_uid()
    sop_class = CTImageStorage if frames == 1 else SecondaryCaptureImageStorage
    ds = _base(study, series, sop, sop_class, **attrs)  # type: ignore[arg-type]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    frame_bytes = _pixels(ds, rows, cols, frames, seed)
    if transfer_syntax == RLELossless:
        ds.PixelData = b"".join(frame_bytes)
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = b"".join(frame_bytes)
        ds["PixelData"].VR = "OW"
    return Instance(_encode(ds), study, series, sop, sop_class, frame_bytes)


def pdf(study: str | None = None, series: str | None = None, sop: str | None = None, **attrs: object) -> Instance:
    """An Encapsulated PDF document."""
    study, series, sop = study or new_uid(), series or new_uid(), sop or new_uid()
    ds = _base(study, series, sop, ENCAPSULATED_PDF, modality="DOC", **attrs)  # type: ignore[arg-type]
    body = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n" + b"%" * 3000 + b"\n%%EOF\n"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = body + (b"\0" if len(body) % 2 else b"")
    ds.BurnedInAnnotation = "YES"
    return Instance(_encode(ds), study, series, sop, ENCAPSULATED_PDF)


def sr(study: str | None = None, series: str | None = None, sop: str | None = None,
       text: str = "Pas d'anomalie décelée.", **attrs: object) -> Instance:
    """A Basic Text SR with one nested TEXT content item."""
    study, series, sop = study or new_uid(), series or new_uid(), sop or new_uid()
    ds = _base(study, series, sop, BASIC_TEXT_SR, modality="SR", **attrs)  # type: ignore[arg-type]
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = text
    ds.ContentSequence = Sequence([item])
    return Instance(_encode(ds), study, series, sop, BASIC_TEXT_SR)


def latin1_ct(study: str | None = None, **attrs: object) -> Instance:
    """A CT whose PatientName is encoded in ISO_IR 100 (Latin-1)."""
    return ct(study, charset="ISO_IR 100", **attrs)


def implicit_ct(**attrs: object) -> Instance:
    return ct(transfer_syntax=ImplicitVRLittleEndian, **attrs)


def multipart(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: " + part_type.encode() + b"\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="{part_type}"; boundary={boundary}'


# --- images for the pixel services: codecs, photometric interpretations ------------------------

#: kind → (samples, photometric, bits allocated, bits stored, signed)
IMAGE_KINDS: dict[str, tuple[int, str, int, int, int]] = {
    "ct": (1, "MONOCHROME2", 16, 12, 0),
    "signed": (1, "MONOCHROME2", 16, 16, 1),
    "gray8": (1, "MONOCHROME2", 8, 8, 0),
    "mono1": (1, "MONOCHROME1", 8, 8, 0),
    "rgb": (3, "RGB", 8, 8, 0),
    "palette": (1, "PALETTE COLOR", 8, 8, 0),
}


def _image_array(kind: str, rows: int, cols: int, frames: int, seed: int) -> np.ndarray:
    samples, _, bits, stored, signed = IMAGE_KINDS[kind]
    rng = np.random.default_rng(seed)
    low, high = (-(1 << (stored - 1)), 1 << (stored - 1)) if signed else (0, 1 << stored)
    dtype = {(8, 0): np.uint8, (16, 0): np.uint16, (16, 1): np.int16}[(bits, signed)]
    shape = (frames, rows, cols) + ((samples,) if samples > 1 else ())
    return rng.integers(low, high, size=shape, dtype=dtype)


def _palette(ds: Dataset) -> None:
    """A 256-entry palette with 16-bit entries (PS3.3 C.7.6.3.1.5): red ramp up, green down, blue flat."""
    ramp = np.arange(256, dtype=np.uint16) * 257
    ds.RedPaletteColorLookupTableDescriptor = ds.GreenPaletteColorLookupTableDescriptor = \
        ds.BluePaletteColorLookupTableDescriptor = [256, 0, 16]
    ds.RedPaletteColorLookupTableData = ramp.tobytes()
    ds.GreenPaletteColorLookupTableData = ramp[::-1].tobytes()
    ds.BluePaletteColorLookupTableData = np.full(256, 0x8000, dtype=np.uint16).tobytes()


def image(kind: str = "ct", transfer_syntax: str = ExplicitVRLittleEndian, *, study: str | None = None,
          series: str | None = None, rows: int = 64, cols: int = 64, frames: int = 1, seed: int = 7,
          arr: np.ndarray | None = None, **attrs: object) -> Instance:
    """An image of ``kind`` (see :data:`IMAGE_KINDS`) stored in ``transfer_syntax``.

    Compressed syntaxes are produced with pydicom's encoders (RLE, JPEG 2000, JPEG-LS) or Pillow
    (JPEG baseline); ``frames`` of the result are the native bytes before compression.
    """
    study, series, sop = study or new_uid(), series or new_uid(), new_uid()
    sop_class = CTImageStorage if kind in ("ct", "signed") else SecondaryCaptureImageStorage
    ds = _base(study, series, sop, sop_class, **attrs)  # type: ignore[arg-type]
    samples, photometric, bits, stored, signed = IMAGE_KINDS[kind]
    data = _image_array(kind, rows, cols, frames, seed) if arr is None else arr
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, samples, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if kind == "palette":
        _palette(ds)
    native = [data[i].tobytes() for i in range(frames)]
    ds.PixelData = b"".join(native)
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    if transfer_syntax == JPEGBaseline8Bit:
        ds.PixelData = encapsulate([_pillow_jpeg(data[i]) for i in range(frames)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        if samples == 3:
            ds.PhotometricInterpretation = "YBR_FULL"
        ds.LossyImageCompression = "01"
    elif UID(transfer_syntax).is_compressed:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    return Instance(_encode(ds), study, series, sop, sop_class, native)


def _pillow_jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def video(study: str | None = None, **attrs: object) -> Instance:
    """A Video Photographic instance in MPEG-4 AVC/H.264 (4.102); the stream bytes are opaque here."""
    study, series, sop = study or new_uid(), new_uid(), new_uid()
    sop_class = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
    ds = _base(study, series, sop, sop_class, modality="XC", **attrs)  # type: ignore[arg-type]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 3, "YBR_PARTIAL_420"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration, ds.NumberOfFrames = 0, 10
    stream = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    return Instance(_encode(ds), study, series, sop, sop_class, [stream])


__all__ = ["ct", "pdf", "sr", "latin1_ct", "implicit_ct", "multipart", "new_uid", "Instance", "image", "video", "IMAGE_KINDS"]
