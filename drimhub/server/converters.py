"""URL converters: identifiers are validated once, at the edge, before any service runs."""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.exceptions import BadRequest
from werkzeug.routing import BaseConverter

from drimhub.dicomweb.uids import is_valid_uid

# Converters run while the URL is matched, before Flask's error handlers are in place for the
# request, so they raise werkzeug's BadRequest (rendered by the same app-level handler).


class UIDConverter(BaseConverter):
    """A DICOM UID (PS3.5 §9.1); anything else in that place is a 400."""

    regex = r"[^/]+"

    def to_python(self, value: str) -> str:
        if not is_valid_uid(value):
            raise BadRequest(f"not a valid UID: {value[:80]!r}")
        return value


class FrameListConverter(BaseConverter):
    """A comma-separated list of frame numbers, each a positive integer (PS3.18 §10.4.1.1.6)."""

    regex = r"[^/]+"

    def to_python(self, value: str) -> list[int]:
        try:
            frames = [int(v) for v in value.split(",")]
        except ValueError:
            raise BadRequest(f"not a frame list: {value[:80]!r}") from None
        if not frames or any(f < 1 for f in frames):
            raise BadRequest(f"frame numbers start at 1: {value[:80]!r}")
        return frames

    def to_url(self, value: Any) -> str:
        return ",".join(str(v) for v in value)


def init_app(app: Flask) -> None:
    app.url_map.converters["uid"] = UIDConverter
    app.url_map.converters["frames"] = FrameListConverter
