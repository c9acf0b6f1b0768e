"""``/api/peers``: the node's peers (admin scope).

``GET /api/peers`` lists them, ``POST /api/peers`` adds one (the fields of ``drimhub peer add``:
``name``, ``url``, ``client_id``, ``scope``, ``auth``, ``dicomweb_url``, ``fhir_url``,
``token_url``, ``allow_private``, ``timeout``; 201 with ``Location``), ``GET`` and ``DELETE
/api/peers/{name}`` read and remove one (204).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from flask import Blueprint, Flask, Response, request

from drimhub.errors import InvalidRequest, UnsupportedMediaType
from drimhub.federation import peers
from drimhub.server.auth import policy
from drimhub.server.jsonapi import json_response
from drimhub.server.db import get_session, resources
from drimhub.server.urls import base_url
from drimhub.store.engine import write_session

bp = Blueprint("peers", __name__, url_prefix="/api/peers")

#: Fields of ``POST /api/peers`` → their JSON types.
FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "url": (str,), "client_id": (str,), "scope": (str,), "auth": (str,),
    "dicomweb_url": (str,), "fhir_url": (str,), "token_url": (str,), "allow_private": (bool,),
    "timeout": (int, float),
}
#: Largest request body accepted, in bytes.
MAX_BODY = 16 * 1024



@bp.get("")
def list_peers() -> Response:
    return json_response([peers.peer_json(peer) for peer in peers.list_peers(get_session())])


@bp.post("")
def add_peer() -> Response:
    body = _body()
    fields = {key: body.get(key) for key in FIELDS if body.get(key) is not None}
    name, url = fields.pop("name", None), fields.pop("url", None)
    if name is None or url is None:
        raise InvalidRequest("name and url are required")
    with write_session(resources().sessions) as session:
        peer = peers.add_peer(session, name, url, **fields)
    location = f"{base_url()}/api/peers/{quote(peer.name, safe='')}"
    return json_response(peers.peer_json(peer), 201, {"Location": location})


@bp.get("/<name>")
def get_peer(name: str) -> Response:
    return json_response(peers.peer_json(peers.get_peer(get_session(), name)))


@bp.delete("/<name>")
def remove_peer(name: str) -> Response:
    with write_session(resources().sessions) as session:
        peers.remove_peer(session, name)
    return Response(status=204)


def _body() -> dict[str, Any]:
    """The JSON object of the request, its fields of the expected types (400 otherwise)."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("the body must be application/json")
    if (request.content_length or 0) > MAX_BODY:
        raise InvalidRequest(f"the body is larger than {MAX_BODY} bytes")
    try:
        body = orjson.loads(request.get_data(cache=False)[: MAX_BODY + 1])
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)}")
    for key, value in body.items():
        if value is not None and (not isinstance(value, FIELDS[key])
                                  or (isinstance(value, bool) and bool not in FIELDS[key])):
            raise InvalidRequest(f"{key} has the wrong type")
    return body


def init_app(app: Flask) -> None:
    """Register the routes and their access rules."""
    for endpoint in ("list_peers", "add_peer", "get_peer", "remove_peer"):
        policy.require(f"peers.{endpoint}", policy.Requirement(scope=policy.ADMIN_SCOPE))
    app.register_blueprint(bp)
