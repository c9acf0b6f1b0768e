"""The node's public URLs: its base URL and the issuer of its tokens, derived in one place.

``DRIMHUB_BASE_URL`` names the node as its clients reach it. When it is unset (loopback and
tests only: ``drimhub serve`` refuses a public bind without it) the request's own host URL
stands in, as werkzeug sees it: the Host header, or the forwarded host and scheme when
``DRIMHUB_PROXY_HOPS`` trusts a proxy to set them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import current_app, request


def configured_base_url(config: Mapping[str, Any], fallback: str) -> str:
    """``BASE_URL`` of ``config``, else ``fallback``, without a trailing slash."""
    return str(config.get("BASE_URL") or fallback).rstrip("/")


def configured_issuer(config: Mapping[str, Any], base: str) -> str:
    """``ISSUER`` of ``config`` exactly as written, else ``base``.

    The issuer is compared character for character (RFC 8414 §2, RFC 9068 §4): the node's
    tokens, its metadata and the validation of its tokens all use this one value.
    """
    return str(config.get("ISSUER") or base)


def base_url() -> str:
    """The node's public base URL for the current request, without a trailing slash.

    The audience of the node's tokens and the root of every URL it hands out (RetrieveURL,
    BulkDataURI, endpoints in the discovery documents).
    """
    return configured_base_url(current_app.config, request.host_url)


def issuer() -> str:
    """The ``iss`` of the node's tokens (``ISSUER``, else :func:`base_url`)."""
    return configured_issuer(current_app.config, base_url())
