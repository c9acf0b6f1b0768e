"""Peers: ``/api/peers`` (admin scope), ``drimhub peer``, and SMART Backend Services between two real
nodes (node B is a registered client of node A and searches A through its dicomweb-client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import KeySet

from dicomfactory import ct, multipart
from drimhub.federation import smart
from drimhub.federation.outbound import dicomweb_client
from drimhub.federation.peers import get_peer
from drimhub.server.auth.policy import ADMIN_SCOPE
from drimhub.store.engine import make_engine, make_sessionmaker
from nodes import Node

PEER = {"name": "brest", "url": "https://pacs.chu-brest.example", "client_id": "node-vannes",
        "scope": "system/ImagingStudy.rs drimhub/peer"}


# --- /api/peers -------------------------------------------------------------------------------


@pytest.fixture
def bearer(mint: Any) -> dict[str, str]:
    """``client`` acts as a node administrator."""
    return {"Authorization": f"Bearer {mint(ADMIN_SCOPE)}"}


def test_add_get_list_remove(client: FlaskClient) -> None:
    response = client.post("/api/peers", json={**PEER, "timeout": 5})
    assert response.status_code == 201, response.json
    assert response.headers["Location"].endswith("/api/peers/brest")
    expected = {**PEER, "dicomweb_url": "https://pacs.chu-brest.example/dicom-web",
                "fhir_url": "https://pacs.chu-brest.example/fhir", "auth": "smart-backend", "token_url": None,
                "allow_private": False, "timeout": 5.0}
    assert response.json == expected
    assert client.get("/api/peers/brest").json == expected
    assert client.post("/api/peers", json={**PEER, "name": "a-relay", "auth": "relay", "client_id": None,
                                           "url": "https://relay.example/base/"}).status_code == 201
    assert [p["name"] for p in client.get("/api/peers").json] == ["a-relay", "brest"]
    assert client.get("/api/peers/a-relay").json["dicomweb_url"] == "https://relay.example/base/dicom-web"
    assert client.delete("/api/peers/brest").status_code == 204
    assert client.get("/api/peers/brest").status_code == 404
    assert client.delete("/api/peers/brest").status_code == 404
    assert [p["name"] for p in client.get("/api/peers").json] == ["a-relay"]


def test_a_name_is_unique(client: FlaskClient) -> None:
    assert client.post("/api/peers", json=PEER).status_code == 201
    response = client.post("/api/peers", json={**PEER, "url": "https://other.example"})
    assert response.status_code == 409
    assert response.json["error"] == "conflict"


@pytest.mark.parametrize("change, reason", [
    ({"name": "-bad"}, "peer name"),
    ({"name": "x" * 65}, "peer name"),
    ({"name": "a/b"}, "peer name"),
    ({"url": "file:///etc/passwd"}, "http and https"),
    ({"url": "gopher://pacs.example"}, "http and https"),
    ({"url": "pacs.example"}, "http and https"),
    ({"url": "http://pacs.example"}, "https"),
    ({"url": "https://127.0.0.1"}, "loopback"),
    ({"url": "https://127.1.2.3:8443"}, "loopback"),
    ({"url": "https://169.254.169.254"}, "link-local"),
    ({"url": "https://[fe80::1]"}, "link-local"),
    ({"url": "https://10.1.2.3"}, "private"),
    ({"url": "https://192.168.0.10"}, "private"),
    ({"url": "https://0.0.0.0"}, "unspecified"),
    ({"url": "https://224.0.0.1"}, "multicast"),
    ({"url": "https://localhost:8443"}, "resolves to"),
    ({"url": "https://2130706433"}, "resolves to 127.0.0.1"),
    ({"url": "https://user:pw@pacs.example"}, "credentials"),
    ({"url": "https://pacs.example/#x"}, "fragment"),
    ({"url": "https://pacs.example/?a=1"}, "query"),
    ({"url": "https://pacs.example/a b"}, "not a valid URL"),
    ({"dicomweb_url": "https://elsewhere.example/dicom-web"}, "origin"),
    ({"fhir_url": "https://pacs.example:444/fhir"}, "origin"),
    ({"token_url": "https://127.0.0.1/oauth/token"}, "loopback"),
    ({"client_id": None}, "client id"),
    ({"auth": "basic"}, "auth must be"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": True}, "wrong type"),
    ({"allow_private": "yes"}, "wrong type"),
    ({"colour": "blue"}, "unknown fields"),
    ({"url": None}, "required"),
])
def test_invalid_peers_are_refused(client: FlaskClient, change: dict[str, Any], reason: str) -> None:
    response = client.post("/api/peers", json={**PEER, **change})
    assert response.status_code == 400, response.json
    assert reason in response.json["error_description"]
    assert client.get("/api/peers").json == []


def test_allow_private_accepts_loopback_and_plain_http(client: FlaskClient) -> None:
    body = {**PEER, "url": "http://127.0.0.1:8080", "allow_private": True}
    response = client.post("/api/peers", json=body)
    assert response.status_code == 201
    assert response.json["allow_private"] is True
    assert response.json["dicomweb_url"] == "http://127.0.0.1:8080/dicom-web"
    assert client.post("/api/peers", json={**body, "name": "f", "url": "file:///etc/passwd"}).status_code == 400


def test_the_body_must_be_a_json_object(client: FlaskClient) -> None:
    assert client.post("/api/peers", data="name=x", content_type="application/x-www-form-urlencoded").status_code == 415
    assert client.post("/api/peers", data="[1]", content_type="application/json").status_code == 400
    assert client.post("/api/peers", data="{", content_type="application/json").status_code == 400


def test_admin_scope_required(app: Flask, anon: FlaskClient, mint: Any) -> None:
    for method, path in (("GET", "/api/peers"), ("POST", "/api/peers"), ("GET", "/api/peers/brest"),
                         ("DELETE", "/api/peers/brest")):
        assert anon.open(path, method=method, json=PEER).status_code == 401
        clinician = {"Authorization": f"Bearer {mint('system/*.cruds drimhub/share drimhub/push')}"}
        response = anon.open(path, method=method, json=PEER, headers=clinician)
        assert response.status_code == 403
        assert response.json["error"] == "insufficient_scope"
    admin = {"Authorization": f"Bearer {mint(ADMIN_SCOPE)}"}
    assert anon.post("/api/peers", json=PEER, headers=admin).status_code == 201
    assert anon.get("/api/peers/brest", headers=admin).status_code == 200
    assert anon.delete("/api/peers/brest", headers=admin).status_code == 204


# --- two real nodes: the CLI and SMART Backend Services ------------------------------------------

SCOPE = "system/ImagingStudy.rs drimhub/peer"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    root: Path = tmp_path_factory.mktemp("peers")
    a, b = Node("a", root), Node("b", root)
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def linked(nodes: tuple[Node, Node]) -> dict[str, Any]:
    """A registers B as a client (B's JWKS URL); B adds A as a peer with that client id."""
    a, b = nodes
    client = json.loads(a.cli("client", "create", "node-b", "--jwks-url", b.url + "/oauth/jwks", "--scope", SCOPE,
                              "--org", "node-b").stdout)
    assert client["token_endpoint_auth_method"] == "private_key_jwt"
    added = b.cli("peer", "add", "a", "--url", a.url, "--client-id", client["client_id"], "--scope", SCOPE,
                  "--allow-private", "--timeout", "20")
    return {"client": client, "added": json.loads(added.stdout)}


def b_peer(b: Node, name: str = "a") -> Any:
    engine = make_engine(f"sqlite:///{b.dir / 'drimhub.db'}")
    try:
        with make_sessionmaker(engine)() as session:
            return get_peer(session, name)
    finally:
        engine.dispose()


def test_cli_add_list_remove(nodes: tuple[Node, Node], linked: dict[str, Any]) -> None:
    a, b = nodes
    assert linked["added"]["dicomweb_url"] == a.url + "/dicom-web"
    b.cli("peer", "add", "spare", "--url", "http://127.0.0.1:9", "--auth", "relay", "--allow-private")
    listed = [json.loads(line) for line in b.cli("peer", "list").stdout.splitlines()]
    assert [p["name"] for p in listed] == ["a", "spare"]
    assert listed[0] == linked["added"]
    b.cli("peer", "remove", "spare")
    assert [json.loads(line)["name"] for line in b.cli("peer", "list").stdout.splitlines()] == ["a"]
    gone = b.cli("peer", "remove", "spare", check=False)
    assert gone.returncode != 0 and "no peer called spare" in gone.stderr
    twice = b.cli("peer", "add", "a", "--url", a.url, "--client-id", "x", "--allow-private", check=False)
    assert twice.returncode != 0 and "exists" in twice.stderr


@pytest.mark.parametrize("url, reason", [("https://169.254.169.254", "link-local"), ("file:///etc/passwd", "http")])
def test_cli_refuses_private_targets(nodes: tuple[Node, Node], url: str, reason: str) -> None:
    result = nodes[1].cli("peer", "add", "evil", "--url", url, "--client-id", "x", check=False)
    assert result.returncode != 0
    assert reason in result.stderr


def test_backend_services_search_between_two_nodes(nodes: tuple[Node, Node], linked: dict[str, Any]) -> None:
    a, b = nodes
    instance = ct()
    body, content_type = multipart([instance.data])
    stored = requests.post(a.url + "/dicom-web/studies", data=body, timeout=30,
                           headers={**a.headers(org="node-b"), "Content-Type": content_type,
                                    "Accept": "application/dicom+json"})
    assert stored.status_code == 200, stored.text
    peer = b_peer(b)
    assert peer.token_url is None  # discovered from A's SMART configuration
    studies = dicomweb_client(peer, b.key).search_for_studies()
    assert instance.study in [s["0020000D"]["Value"][0] for s in studies]

    # the token: issued by A to B's registered client, which authenticated with a signed assertion
    token_url = smart.token_endpoint(peer)
    assert token_url == a.url + "/oauth/token"
    cached, _until = smart._tokens[(peer.name, token_url, peer.scope, peer.client_id)]
    jwks = KeySet.import_key_set(requests.get(a.url + "/oauth/jwks", timeout=10).json())
    claims = jwt.decode(cached, jwks, algorithms=["RS384"]).claims
    assert claims["client_id"] == linked["client"]["client_id"] and claims["org"] == "node-b"
    assert set(claims["scope"].split()) == set(SCOPE.split())


def test_a_rejected_cached_token_is_replaced(nodes: tuple[Node, Node], linked: dict[str, Any]) -> None:
    a, b = nodes
    peer = b_peer(b)
    key = (peer.name, smart.token_endpoint(peer), peer.scope, peer.client_id)
    smart._tokens[key] = ("not-a-token-of-a", float("inf"))
    assert isinstance(dicomweb_client(peer, b.key).search_for_studies(), list)
    assert smart._tokens[key][0] != "not-a-token-of-a"


def test_a_node_key_not_registered_at_the_peer_gets_no_token(nodes: tuple[Node, Node], linked: dict[str, Any]) -> None:
    a, b = nodes
    peer = b_peer(b)
    smart.drop_token(peer)
    with pytest.raises(smart.PeerUnavailable, match="invalid_client"):
        dicomweb_client(peer, a.key).search_for_studies()  # A's key is not the one B registered
