"""Import DICOM files, folders and zip archives into the store (``drimhub import``).

A zip member is read only up to the size its header declares, and members larger than
:data:`MAX_MEMBER` are refused, so an archive cannot expand without bound (zip bomb); a corrupt,
encrypted or unsupported member is that member's failure, and the import goes on.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from drimhub.dicomweb.stow import StoreService, StowResult
from drimhub.store.index import Outcome

_CHUNK = 1 << 20
#: Largest zip member imported (uncompressed bytes).
MAX_MEMBER = 4 << 30
#: What reading a damaged or unsupported zip member can raise.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError)


class UnreadableSource(Exception):
    """A source that cannot be read (message says why)."""


@dataclass
class ImportSummary:
    """What an import did, file by file."""

    stored: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    studies: set[str] = field(default_factory=set)  # Study Instance UIDs stored into (push rules)


@dataclass(frozen=True)
class Source:
    """One file to import: a path on disk or a member of a zip archive."""

    name: str
    path: Path
    member: zipfile.ZipInfo | None = None

    def chunks(self, archives: dict[Path, zipfile.ZipFile]) -> Iterator[bytes]:
        """The bytes of the source; ``archives`` keeps each zip open across its members."""
        if self.member is None:
            with open(self.path, "rb") as f:
                yield from iter(lambda: f.read(_CHUNK), b"")
            return
        if self.member.file_size > MAX_MEMBER:
            raise UnreadableSource(f"member larger than {MAX_MEMBER} bytes")
        if self.path not in archives:
            archives[self.path] = zipfile.ZipFile(self.path)
        left = self.member.file_size
        with archives[self.path].open(self.member) as f:
            while chunk := f.read(min(_CHUNK, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise UnreadableSource("member expands beyond its declared size")
                yield chunk


def collect(paths: list[Path]) -> list[Source]:
    """Every file to import under ``paths`` (folders walked, zip archives opened), sorted."""
    sources: list[Source] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as zf:
                    sources += [Source(f"{file}:{m.filename}", file, m) for m in zf.infolist() if not m.is_dir()]
            else:
                sources.append(Source(str(file), file))
    return sources


def import_one(service: StoreService, source: Source, summary: ImportSummary,
               archives: dict[Path, zipfile.ZipFile] | None = None) -> None:
    """Store one source and count its outcome in ``summary``.

    ``archives`` keeps zip files open between calls (the caller closes them); without it the
    archive is opened for this source only.
    """
    own = archives is None
    opened: dict[Path, zipfile.ZipFile] = {} if archives is None else archives
    result = StowResult()
    sink = service.blobs.spool()
    try:
        for chunk in source.chunks(opened):
            sink.write(chunk)
    except (OSError, UnreadableSource, *_ZIP_ERRORS) as exc:
        sink.discard()
        summary.failed.append((source.name, f"cannot read: {exc}"))
        return
    finally:
        if own:
            for archive in opened.values():
                archive.close()
    outcome = service.store_one(sink, result)
    summary.studies |= result.studies
    if outcome in (Outcome.STORED, Outcome.REPLACED):
        summary.stored += 1
    elif outcome == Outcome.ALREADY_STORED:
        summary.already += 1
    else:
        reason = result.failed[0][2] if result.failed else None
        summary.failed.append((source.name, f"{reason.name.lower().replace('_', ' ')} (0x{int(reason):04X})"
                               if reason is not None else "failed"))
