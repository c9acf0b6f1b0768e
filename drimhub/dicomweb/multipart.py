"""multipart/related bodies (RFC 2387), read and written as streams.

Reading uses python-multipart's streaming parser: each part's bytes go straight to a spooled
file, so a request of any size needs only one chunk of memory. Writing is a generator of part
headers and body chunks (PS3.18 §8.7.3.5 / RFC 2046 §5.1).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Protocol

from python_multipart.multipart import MultipartParser
from werkzeug.http import parse_options_header

from drimhub.server.errors import InvalidRequest

_CHUNK = 1 << 20


class Sink(Protocol):
    """Where a part's bytes go (a spooled blob)."""

    def write(self, data: bytes | memoryview) -> None: ...
    def discard(self) -> None: ...


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type into its lower-case media type and its parameters."""
    value, params = parse_options_header(header or "")
    return value.lower(), {k.lower(): v for k, v in params.items()}


def read_parts(stream: IO[bytes], boundary: str, new_sink: Callable[[], Sink]) -> Iterator[tuple[dict[str, str], Sink]]:
    """Yield ``(headers, sink)`` for each part of a multipart body, as soon as it is complete.

    Header names are lower-cased. A part is yielded only after its last byte was written to its
    sink. On a malformed body the sinks not yet yielded are discarded and
    :class:`InvalidRequest` is raised.
    """
    done: list[tuple[dict[str, str], Sink]] = []
    state: dict[str, object] = {"headers": {}, "field": b"", "value": b"", "sink": None}

    def on_part_begin() -> None:
        state["headers"] = {}
        state["sink"] = None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = bytes(state["field"]) + data[start:end]  # type: ignore[arg-type]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = bytes(state["value"]) + data[start:end]  # type: ignore[arg-type]

    def on_header_end() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        headers[bytes(state["field"]).decode("latin-1").strip().lower()] = bytes(state["value"]).decode("latin-1").strip()  # type: ignore[arg-type]
        state["field"] = b""
        state["value"] = b""

    def on_headers_finished() -> None:
        state["sink"] = new_sink()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        sink = state["sink"]
        assert sink is not None
        sink.write(memoryview(data)[start:end])  # type: ignore[attr-defined]

    def on_part_end() -> None:
        sink = state["sink"]
        if sink is None:  # a part with no header block at all
            sink = new_sink()
        headers = state["headers"]
        assert isinstance(headers, dict)
        done.append((headers, sink))  # type: ignore[arg-type]
        state["sink"] = None

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }, max_header_count=32)
    try:
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            try:
                parser.write(chunk)
            except Exception as exc:  # python-multipart raises its own MultipartParseError
                raise InvalidRequest(f"malformed multipart body: {exc}") from exc
            while done:
                yield done.pop(0)
        try:
            parser.finalize()
        except Exception as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc
        while done:
            yield done.pop(0)
    finally:
        for _, sink in done:
            sink.discard()
        pending = state["sink"]
        if pending is not None:
            pending.discard()  # type: ignore[attr-defined]


def new_boundary() -> str:
    return uuid.uuid4().hex


def write_parts(parts: Iterable[tuple[str, Iterable[bytes]]], boundary: str,
                extra_headers: Callable[[int], dict[str, str]] | None = None) -> Iterator[bytes]:
    """Yield a multipart body: for each ``(content_type, chunks)`` a header block and its bytes."""
    sep = f"--{boundary}".encode()
    for index, (ctype, chunks) in enumerate(parts):
        head = f"Content-Type: {ctype}\r\n"
        for name, value in (extra_headers(index) if extra_headers else {}).items():
            head += f"{name}: {value}\r\n"
        yield sep + b"\r\n" + head.encode("latin-1") + b"\r\n"
        yield from chunks
        yield b"\r\n"
    yield sep + b"--\r\n"
