"""Pixel data frames and other bulk data, read from the stored blob (PS3.18 §10.4.1.1.5-6).

Native pixel data is cut out of the blob by offset: frame *n* starts at
``pixel_offset + (n - 1) * frame_size`` (PS3.5 §8.1.1: frames follow each other with no
padding). Encapsulated frames are extracted as stored with :func:`pydicom.encaps.get_frame`
(PS3.5 §A.4), or decoded by pydicom when the client accepts only native bytes. Nothing here
loads more than one frame (or one non-pixel element) into memory.

Every reader here takes a :class:`BlobFiles`: the files of an answer are opened before it is
returned, so that a concurrent DELETE or overwrite, which unlinks a blob, cannot make an answer
fail after its headers were sent (an open file keeps its data until it is closed, POSIX
``unlink``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import pixel_array

from drimhub.dicomweb.attributes import BULK_VRS
from drimhub.dicomweb.negotiation import NATIVE_LITTLE_ENDIAN, Selection
from drimhub.dicomweb.transcode import encode_frame
from drimhub.errors import NotAcceptable, NotFound
from drimhub.store.blobs import FileBlobStore, read_range
from drimhub.store.retrieve import StoredInstance

#: Answers of up to this many blobs have all their files opened before they are returned;
#: larger ones open each file when the stream reaches it (file descriptors are finite).
OPEN_AHEAD = 1000


class BlobFiles:
    """The open files of the blobs one answer reads.

    Parameters
    ----------
    blobs : FileBlobStore
        Where the blobs are.
    keys : iterable of str
        The blobs of the answer: all opened now when there are at most :data:`OPEN_AHEAD`.

    Raises
    ------
    NotFound
        A blob opened now is gone (its instance was deleted or replaced since it was queried).
    """

    def __init__(self, blobs: FileBlobStore, keys: Iterable[str]) -> None:
        self.blobs = blobs
        self.files: dict[str, BinaryIO] = {}
        wanted = list(dict.fromkeys(keys))
        if len(wanted) <= OPEN_AHEAD:
            try:
                for key in wanted:
                    self.files[key] = self._open(key)
            except NotFound:
                self.close()
                raise

    def _open(self, key: str) -> BinaryIO:
        try:
            return self.blobs.open(key)
        except FileNotFoundError:
            raise NotFound("the instance was deleted or replaced meanwhile") from None

    def file(self, key: str) -> BinaryIO:
        """The open file of ``key``, at its start (opened now when it was not yet)."""
        if key not in self.files:
            self.files[key] = self._open(key)
        fp = self.files[key]
        fp.seek(0)
        return fp

    def iter_range(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the bytes of a blob (or of one range of it) in chunks."""
        yield from read_range(self.file(key), offset, length)

    def release(self, key: str) -> None:
        """Close the file of ``key`` (the stream is past it)."""
        fp = self.files.pop(key, None)
        if fp is not None:
            fp.close()

    def close(self) -> None:
        """Close every file (the response is closed: finished or abandoned)."""
        for key in list(self.files):
            self.release(key)


def check_frames(inst: StoredInstance, frames: list[int]) -> None:
    """Raise :class:`NotFound` unless every frame number exists in ``inst`` (PS3.18 §10.4.1.1.6).

    Raises
    ------
    NotFound
        The instance has no pixel data, or a frame number is past NumberOfFrames.
    """
    if inst.rows is None or inst.number_of_frames is None:
        raise NotFound(f"instance {inst.sop_uid} has no pixel data frames")
    past = [n for n in frames if n > inst.number_of_frames]
    if past:
        raise NotFound(f"frame {past[0]} is past the end: instance {inst.sop_uid} has "
                       f"{inst.number_of_frames} frame(s)")


#: Largest frame and instance this node decodes for a client (decompression bombs: a small
#: compressed instance may declare 65535 x 65535 x 3 samples). Past these, only the stored form
#: is offered (transfer-syntax=*).
MAX_DECODED_FRAME = 256 << 20
MAX_DECODED_INSTANCE = 2 << 30


def check_decodable(inst: StoredInstance, whole: bool) -> None:
    """Raise :class:`NotAcceptable` when decoding a frame (or the whole instance) would exceed the caps.

    The sizes come from the header (PS3.3 C.7.6.3: Rows x Columns x Samples per Pixel, at
    Bits Allocated per sample), before anything is decoded.
    """
    per_sample = max(1, (inst.bits_allocated or 8) // 8)
    frame = (inst.rows or 0) * (inst.columns or 0) * (inst.samples_per_pixel or 1) * per_sample
    total = frame * (inst.number_of_frames or 1)
    if frame > MAX_DECODED_FRAME or (whole and total > MAX_DECODED_INSTANCE):
        raise NotAcceptable(f"instance {inst.sop_uid} would decode to {total if whole else frame} bytes, more than "
                            "this node decodes; ask for the stored form (transfer-syntax=*)")


def native_frame_size(inst: StoredInstance) -> int | None:
    """Bytes per frame of native pixel data, or None when frames do not start on a byte boundary.

    PS3.5 §8.1.1: Rows x Columns x Samples per Pixel x Bits Allocated bits per frame; with Bits
    Allocated 1 a frame may end inside a byte, and the next one starts in that byte.
    """
    bits = (inst.rows or 0) * (inst.columns or 0) * (inst.samples_per_pixel or 1) * (inst.bits_allocated or 0)
    return bits // 8 if bits % 8 == 0 else None


def _native_range(inst: StoredInstance, number: int) -> tuple[int, int] | None:
    """(offset, length) of frame ``number`` in the blob, when it can be cut out directly."""
    size = native_frame_size(inst)
    if (inst.transfer_syntax not in NATIVE_LITTLE_ENDIAN or size is None or inst.pixel_offset is None
            or inst.pixel_length is None or number * size > inst.pixel_length):
        return None
    return inst.pixel_offset + (number - 1) * size, size


def frame_length(inst: StoredInstance, number: int, selection: Selection) -> int | None:
    """Length of the frame in ``selection`` when known without reading it (native pixel data)."""
    found = _native_range(inst, number) if selection.transfer_syntax in NATIVE_LITTLE_ENDIAN else None
    return found[1] if found else None


def frame_chunks(blobs: BlobFiles, inst: StoredInstance, number: int, selection: Selection) -> Iterator[bytes]:
    """Yield the bytes of frame ``number`` (1-based) in the representation ``selection``.

    A generator: nothing is read before the first ``next()``.
    """
    if selection.transfer_syntax == inst.transfer_syntax and inst.transfer_syntax not in NATIVE_LITTLE_ENDIAN:
        yield encapsulated_frame(blobs, inst, number)
    elif selection.transfer_syntax not in NATIVE_LITTLE_ENDIAN:
        yield transcoded_frame(blobs, inst, number, selection.transfer_syntax)
    elif (found := _native_range(inst, number)) is not None:
        yield from blobs.iter_range(inst.blob_key, found[0], found[1])
    else:
        yield decoded_frame(blobs, inst, number)


def encapsulated_frame(blobs: BlobFiles, inst: StoredInstance, number: int) -> bytes:
    """The compressed bytes of frame ``number``, fragments joined, as stored (PS3.5 §A.4)."""
    fp = blobs.file(inst.blob_key)
    if inst.pixel_offset is None:
        ds = dcmread(fp)
        return get_frame(ds.PixelData, number - 1, number_of_frames=inst.number_of_frames)
    fp.seek(inst.pixel_offset)
    return get_frame(fp, number - 1, number_of_frames=inst.number_of_frames)


def decoded_frame(blobs: BlobFiles, inst: StoredInstance, number: int) -> bytes:
    """Frame ``number`` decoded by pydicom, as little-endian native bytes (PS3.18 Table 8.7.3-4).

    Color frames come back as RGB (pydicom converts YBR); with Bits Allocated 1 the pixels are
    packed again, eight to a byte, least significant bit first (PS3.5 §8.1.1).
    """
    arr: np.ndarray[Any, Any] = pixel_array(blobs.file(inst.blob_key), index=number - 1)
    if inst.bits_allocated == 1:
        return np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def transcoded_frame(blobs: BlobFiles, inst: StoredInstance, number: int, target: str) -> bytes:
    """Frame ``number`` decoded, then encoded in ``target`` (PS3.18 §8.7.3.5, Table 8.7.3-5)."""
    header = Dataset()
    arr: np.ndarray[Any, Any] = pixel_array(blobs.file(inst.blob_key), index=number - 1, ds_out=header)
    return encode_frame(arr, header, target)


def pixel_data_length(inst: StoredInstance, selection: Selection) -> int | None:
    """Length of the whole native Pixel Data value, when it is served straight from the blob."""
    if (inst.transfer_syntax in NATIVE_LITTLE_ENDIAN and inst.pixel_offset is not None
            and inst.pixel_length is not None and selection.transfer_syntax in NATIVE_LITTLE_ENDIAN):
        return inst.pixel_length
    return None


def pixel_data_chunks(blobs: BlobFiles, inst: StoredInstance, selection: Selection) -> Iterator[bytes]:
    """All frames as one native value: the stored range, or decoded frame by frame."""
    if pixel_data_length(inst, selection) is not None:
        assert inst.pixel_offset is not None
        yield from blobs.iter_range(inst.blob_key, inst.pixel_offset, inst.pixel_length)
        return
    if inst.bits_allocated == 1 and (inst.number_of_frames or 1) > 1 and native_frame_size(inst) is None:
        arr = pixel_array(blobs.file(inst.blob_key))
        yield np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes()
        return
    for number in range(1, (inst.number_of_frames or 1) + 1):
        yield decoded_frame(blobs, inst, number)


def read_element(blobs: BlobFiles, inst: StoredInstance, tag: str) -> bytes:
    """The value of a top-level binary element other than Pixel Data, read with pydicom.

    Only that element is read (``specific_tags``); the others are skipped over.

    Raises
    ------
    NotFound
        No such element, or not one whose value is bulk data.
    """
    number = int(tag, 16)
    ds = dcmread(blobs.file(inst.blob_key), specific_tags=[number])
    elem = ds.get(number)
    if elem is None or elem.VR not in BULK_VRS or elem.value is None:
        raise NotFound(f"instance {inst.sop_uid} has no bulk data element {tag}")
    value = elem.value
    return bytes(value) if not isinstance(value, bytes) else value
