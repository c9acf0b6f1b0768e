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

from drimhub.errors import InvalidRequest

_CHUNK = 1 << 20


class Sink(Protocol):
    """Where a part's bytes go (a spooled blob)."""

    def write(self, data: bytes | memoryview) -> None: ...
    def discard(self) -> None: ...


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type into its lower-case media type and its parameters."""
    value, params = parse_options_header(header or "")
    return value.lower(), {k.lower(): v for k, v in params.items()}


class _Collector:
    """python-multipart callbacks that route each part's bytes into a new sink."""

    def __init__(self, new_sink: Callable[[], Sink]) -> None:
        self.new_sink = new_sink
        self.done: list[tuple[dict[str, str], Sink]] = []
        self.headers: dict[str, str] = {}
        self.field = b""
        self.value = b""
        self.sink: Sink | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self.headers, self.sink = {}, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.field.decode("latin-1").strip().lower()] = self.value.decode("latin-1").strip()
        self.field, self.value = b"", b""

    def on_headers_finished(self) -> None:
        self.sink = self.new_sink()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self.sink is not None
        self.sink.write(memoryview(data)[start:end])

    def on_part_end(self) -> None:
        self.done.append((self.headers, self.sink or self.new_sink()))
        self.sink = None

    def discard_pending(self) -> None:
        for _, sink in self.done:
            sink.discard()
        if self.sink is not None:
            self.sink.discard()


def read_parts(stream: IO[bytes], boundary: str, new_sink: Callable[[], Sink]) -> Iterator[tuple[dict[str, str], Sink]]:
    """Yield ``(headers, sink)`` for each part of a multipart body, as soon as it is complete.

    Header names are lower-cased. A part is yielded only after its last byte was written to its
    sink. On a malformed body the sinks not yet yielded are discarded and
    :class:`InvalidRequest` is raised.
    """
    collector = _Collector(new_sink)
    parser = MultipartParser(boundary, collector.callbacks(), max_header_count=32)  # type: ignore[arg-type]
    try:
        while chunk := stream.read(_CHUNK):
            _feed(parser.write, chunk)
            while collector.done:
                yield collector.done.pop(0)
        _feed(lambda _: parser.finalize(), b"")
        while collector.done:
            yield collector.done.pop(0)
    finally:
        collector.discard_pending()


def _feed(step: Callable[[bytes], object], chunk: bytes) -> None:
    try:
        step(chunk)
    except OSError:
        raise  # writing a part to disk failed: the server's problem, not a malformed body
    except Exception as exc:  # python-multipart raises its own MultipartParseError and ValueError
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc


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
