"""Import DICOM files, folders and zip archives into the store (``drimhub import``)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from drimhub.dicomweb.stow import StoreService, StowResult
from drimhub.store.index import Outcome

_CHUNK = 1 << 20


@dataclass
class ImportSummary:
    """What an import did, file by file."""

    stored: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


@dataclass(frozen=True)
class Source:
    """One file to import: a path on disk or a member of a zip archive."""

    name: str
    path: Path
    member: str | None = None

    def chunks(self) -> Iterator[bytes]:
        if self.member is None:
            with open(self.path, "rb") as f:
                yield from iter(lambda: f.read(_CHUNK), b"")
        else:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                yield from iter(lambda: f.read(_CHUNK), b"")


def collect(paths: list[Path]) -> list[Source]:
    """Every file to import under ``paths`` (folders walked, zip archives opened), sorted."""
    sources: list[Source] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as zf:
                    sources += [Source(f"{file}:{m.filename}", file, m.filename)
                                for m in zf.infolist() if not m.is_dir()]
            else:
                sources.append(Source(str(file), file))
    return sources


def import_one(service: StoreService, source: Source, summary: ImportSummary) -> None:
    """Store one source and count its outcome in ``summary``."""
    result = StowResult()
    sink = service.blobs.spool()
    try:
        for chunk in source.chunks():
            sink.write(chunk)
    except OSError as exc:
        sink.discard()
        summary.failed.append((source.name, f"cannot read: {exc}"))
        return
    outcome = service.store_one(sink, result)
    if outcome in (Outcome.STORED, Outcome.REPLACED):
        summary.stored += 1
    elif outcome == Outcome.ALREADY_STORED:
        summary.already += 1
    else:
        reason = result.failed[0][2] if result.failed else None
        summary.failed.append((source.name, f"{reason.name.lower().replace('_', ' ')} (0x{int(reason):04X})"
                               if reason is not None else "failed"))
