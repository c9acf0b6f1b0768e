"""Blob storage on the local filesystem.

Keys are generated here (random 128-bit hex), never derived from a UID or any client string.
A blob is written under ``tmp/``, then renamed into ``objects/xx/yy/``; before the rows that point
to a batch of blobs commit, :meth:`FileBlobStore.flush` makes the files and the renames durable
(one ``syncfs`` for the whole batch rather than two ``fsync`` per file). A crash leaves at most a
temporary file or an orphan blob, which :meth:`FileBlobStore.sweep` removes, never a row
pointing at a half-written file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from drimhub.errors import DrimhubError

_KEY = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 1 << 20


class SpooledBlob:
    """A temporary file being written, hashed as it goes; commit it or discard it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "xb")
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._sha.update(data)
        self.size += len(data)

    def close(self) -> None:
        """Close the file (durability comes with :meth:`FileBlobStore.flush`)."""
        if not self._file.closed:
            self._file.close()

    @property
    def digest(self) -> str:
        return self._sha.hexdigest()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class FileBlobStore:
    """Blobs in a folder: ``objects/`` for committed ones, ``tmp/`` for those being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.objects = root / "objects"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str) -> FileBlobStore:
        """Open ``file:///path``; other schemes are not supported yet."""
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise DrimhubError(f"unsupported storage URL scheme {parsed.scheme!r} (use file://)")
        return cls(Path(parsed.netloc + parsed.path))

    def spool(self) -> SpooledBlob:
        """Start a new temporary file."""
        return SpooledBlob(self.tmp / f"{uuid.uuid4().hex}.part")

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.objects / key[:2] / key[2:4] / key

    def commit(self, spooled: SpooledBlob) -> str:
        """Move a closed temporary file into place and return its new key."""
        spooled.close()
        key = uuid.uuid4().hex
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spooled.path, dest)
        os.utime(dest)  # the sweep's age counts from now, not from when the upload began
        return key

    def flush(self, keys: list[str]) -> None:
        """Make the committed blobs ``keys`` durable, their renames included.

        One ``syncfs(2)`` of the storage filesystem where the C library has it; otherwise an
        ``fsync`` of each file and of its folder.
        """
        if not keys or _syncfs(self.root):
            return
        for key in keys:
            path = self._path(key)
            _fsync_path(path)
            _fsync_path(path.parent)

    def path(self, key: str) -> Path:
        """Local path of a committed blob (for readers that want a file name)."""
        return self._path(key)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def iter_range(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the bytes of a blob (or of one range of it) in chunks."""
        with self.open(key) as f:
            yield from read_range(f, offset, length)

    def keys(self) -> Iterator[tuple[str, float]]:
        """Every committed key with its modification time."""
        for path in self.objects.glob("*/*/*"):
            if _KEY.match(path.name):
                yield path.name, _mtime(path)

    def sweep(self, is_referenced: Callable[[Iterable[str]], set[str]], min_age: float = 0.0) -> tuple[int, int]:
        """Remove temporary files and unreferenced blobs older than ``min_age`` seconds.

        ``is_referenced`` takes a batch of keys and returns those a row points to.
        Returns (temporary files removed, orphan blobs removed).
        """
        cutoff = time.time() - min_age
        temps = 0
        for path in self.tmp.iterdir():
            if _mtime(path) <= cutoff:
                path.unlink(missing_ok=True)
                temps += 1
        orphans = 0
        batch: list[str] = []
        for key, mtime in self.keys():
            if mtime <= cutoff:
                batch.append(key)
            if len(batch) >= 500:
                orphans += self._drop_unreferenced(batch, is_referenced)
                batch = []
        if batch:
            orphans += self._drop_unreferenced(batch, is_referenced)
        return temps, orphans

    def _drop_unreferenced(self, batch: list[str], is_referenced: Callable[[Iterable[str]], set[str]]) -> int:
        known = is_referenced(batch)
        dropped = [k for k in batch if k not in known]
        for key in dropped:
            self.delete(key)
        return len(dropped)

    def ready(self) -> bool:
        """True when the storage folder is writable."""
        return os.access(self.tmp, os.W_OK) and os.access(self.objects, os.W_OK)


def read_range(f: BinaryIO, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """Yield ``length`` bytes (or up to the end) of an open file from ``offset``, in chunks."""
    f.seek(offset)
    left = length
    while left is None or left > 0:
        chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
        if not chunk:
            break
        if left is not None:
            left -= len(chunk)
        yield chunk


def _mtime(path: Path) -> float:
    """Modification time, or +inf for a file that vanished meanwhile (never swept)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _syncfs(path: Path) -> bool:
    """syncfs(2) on the filesystem holding ``path``; False where it is not available."""
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return bool(syncfs(fd) == 0)
    finally:
        os.close(fd)
