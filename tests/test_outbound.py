"""Outbound calls to peers (security.md G24): exact origin on every hop, the token only to the peer,
no loopback/link-local/file targets unless allowed, DNS rebinding, time-outs, SMART backend tokens.

Real HTTP servers on loopback record what they receive; nothing leaves the machine.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from drimhub.federation import smart
from drimhub.federation.outbound import (OriginGuard, OutboundRefused, PeerAuth, _PublicHTTPPool, dicomweb_client,
                                         peer_session)
from drimhub.federation.peers import Origin, PeerInfo, origin_of

KEY = RSAKey.generate_key(2048, private=True)
KEY.ensure_kid()
RELAYED = "relayed-user-token"

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeServer:
    """An HTTP server on 127.0.0.1 that records every request and answers from ``routes``
    (path → answer, or a function of the request giving one); 404 otherwise."""

    routes: dict[str, Answer | Callable[[Seen], Answer]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                owner.seen.append(request)
                route = owner.routes.get(self.path.split("?")[0])
                status, headers, body = route(request) if callable(route) else route or (404, {}, b"")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorizations(self) -> list[str]:
        return [s.headers["Authorization"] for s in self.seen if "Authorization" in s.headers]


def json_answer(data: Any, status: int = 200) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


@pytest.fixture
def peer_server() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture
def recorder() -> Iterator[FakeServer]:
    """Another origin (another port): must never receive a request from a peer session."""
    server = FakeServer()
    yield server
    server.close()


def relay_peer(url: str, name: str = "fake", **kwargs: Any) -> PeerInfo:
    values: dict[str, Any] = dict(name=name, dicomweb_url=f"{url}/dicom-web", fhir_url=f"{url}/fhir", auth="relay",
                                  client_id=None, scope="", token_url=None, allow_private=True, timeout=None)
    values.update(kwargs)
    return PeerInfo(**values)


# --- the exact origin, on every hop ------------------------------------------------------------


def test_cross_origin_redirect_is_not_followed_and_the_other_origin_receives_nothing(
        peer_server: FakeServer, recorder: FakeServer) -> None:
    peer_server.routes["/dicom-web/studies"] = (302, {"Location": f"{recorder.url}/steal"}, b"")
    client = dicomweb_client(relay_peer(peer_server.url), KEY, relay_token=RELAYED)
    with pytest.raises(OutboundRefused, match="only http://127.0.0.1"):
        client.search_for_studies()
    assert [s.path for s in peer_server.seen] == ["/dicom-web/studies"]
    assert peer_server.authorizations() == [f"Bearer {RELAYED}"]
    assert recorder.seen == []


def test_same_origin_redirect_is_followed_with_the_token(peer_server: FakeServer) -> None:
    peer_server.routes["/fhir/ImagingStudy"] = (302, {"Location": "/fhir/moved"}, b"")
    peer_server.routes["/fhir/moved"] = json_answer({"resourceType": "Bundle"})
    session = peer_session(relay_peer(peer_server.url), KEY, relay_token=RELAYED)
    response = session.get(f"{peer_server.url}/fhir/ImagingStudy")
    assert response.json() == {"resourceType": "Bundle"}
    assert [s.path for s in peer_server.seen] == ["/fhir/ImagingStudy", "/fhir/moved"]
    assert peer_server.authorizations() == [f"Bearer {RELAYED}"] * 2


def test_another_origin_or_scheme_is_refused_before_sending(peer_server: FakeServer, recorder: FakeServer) -> None:
    session = peer_session(relay_peer(peer_server.url), KEY, relay_token=RELAYED)
    for url in (recorder.url + "/x", "file:///etc/passwd", "ftp://127.0.0.1/x",
                peer_server.url.replace("127.0.0.1", "localhost") + "/x"):
        with pytest.raises(OutboundRefused):
            session.get(url)
    assert recorder.seen == [] and peer_server.seen == []


def test_the_bearer_is_attached_only_for_the_exact_origin(peer_server: FakeServer, recorder: FakeServer) -> None:
    auth = PeerAuth(origin_of(peer_server.url), lambda _fresh: "t0k3n", retry=False)
    for url, expected in ((peer_server.url + "/a", "Bearer t0k3n"), (recorder.url + "/a", None),
                          (peer_server.url.replace("http:", "https:") + "/a", None)):
        prepared = requests.Request("GET", url, headers={"Authorization": "Bearer stale"}).prepare()
        assert auth(prepared).headers.get("Authorization") == expected


def test_loopback_and_plain_http_refused_without_allow_private(peer_server: FakeServer) -> None:
    peer = relay_peer(peer_server.url, allow_private=False)
    with pytest.raises(OutboundRefused, match="plain http"):
        peer_session(peer, KEY, relay_token=RELAYED).get(f"{peer_server.url}/fhir/metadata")
    https = relay_peer(peer_server.url.replace("http:", "https:"), allow_private=False)
    with pytest.raises(OutboundRefused, match="loopback"):
        peer_session(https, KEY, relay_token=RELAYED).get(https.fhir_url + "/metadata")
    assert peer_server.seen == []


@pytest.mark.parametrize("host", ["169.254.169.254", "10.0.0.1", "[::1]", "0.0.0.0", "localhost"])
def test_private_targets_refused_without_allow_private(host: str) -> None:
    peer = relay_peer(f"https://{host}:9", allow_private=False)
    with pytest.raises(OutboundRefused, match="refused"):
        peer_session(peer, KEY, relay_token=RELAYED).get(peer.dicomweb_url + "/studies")


class Listener:
    """A bare TCP listener on loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]

    def accepted(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                return count
            conn.close()
            count += 1


def test_a_name_rebinding_to_loopback_after_the_check_is_refused_at_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection resolves the name (the only lookup) and checks what it connects to (DNS
    rebinding); the refusal does not reveal the address."""
    listener = Listener()
    real = socket.getaddrinfo
    answers: Iterator[str] = iter([])  # loopback at connect, the one lookup there is

    def resolver(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            address = next(answers, "127.0.0.1")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    peer = relay_peer(f"https://rebind.test:{listener.port}", allow_private=False)
    with pytest.raises(OutboundRefused, match="resolves to a loopback address") as refused:
        peer_session(peer, KEY, relay_token=RELAYED).get(peer.dicomweb_url + "/studies")
    assert "127.0.0.1" not in str(refused.value)
    assert listener.accepted() == 0
    listener.sock.close()


def test_the_connection_pool_itself_refuses_loopback() -> None:
    listener = Listener()
    with pytest.raises(OutboundRefused, match="loopback"):
        _PublicHTTPPool("127.0.0.1", listener.port).urlopen("GET", "/")
    assert listener.accepted() == 0
    listener.sock.close()


def test_every_call_has_a_time_out(peer_server: FakeServer) -> None:
    def slow(_seen: Seen) -> Answer:
        time.sleep(3)
        return json_answer([])

    peer_server.routes["/dicom-web/studies"] = slow
    client = dicomweb_client(relay_peer(peer_server.url, timeout=0.5), KEY, relay_token=RELAYED)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        client.search_for_studies()
    assert time.monotonic() - started < 2.5


def test_adapter_refuses_proxies() -> None:
    guard = OriginGuard(Origin("https", "peer.example", 443), allow_private=False, timeout=1)
    prepared = requests.Request("GET", "https://peer.example/x").prepare()
    with pytest.raises(OutboundRefused, match="proxy"):
        guard.send(prepared, proxies={"https": "http://proxy.example:3128"})


# --- SMART Backend Services ------------------------------------------------------------------


class TokenServer(FakeServer):
    """A token endpoint issuing ``tok-1``, ``tok-2``... to valid-looking client credentials grants."""

    def __init__(self) -> None:
        super().__init__()
        self.issued: list[str] = []
        self.routes["/token"] = self._token

    def _token(self, seen: Seen) -> Answer:
        form = {k: v[0] for k, v in parse_qs(seen.body.decode()).items()}
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != smart.JWT_BEARER:
            return json_answer({"error": "invalid_request"}, 400)
        self.issued.append(f"tok-{len(self.issued) + 1}")
        return json_answer({"access_token": self.issued[-1], "token_type": "Bearer", "expires_in": 300,
                            "scope": form.get("scope")})

    def assertions(self) -> list[dict[str, Any]]:
        out = []
        for seen in self.seen:
            form = {k: v[0] for k, v in parse_qs(seen.body.decode()).items()}
            token = jwt.decode(form["client_assertion"], KEY, algorithms=["RS384"])
            out.append({"header": token.header, "claims": token.claims, "form": form})
        return out


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    server = TokenServer()
    yield server
    server.close()


def backend_peer(url: str, name: str, **kwargs: Any) -> PeerInfo:
    return relay_peer(url, name, **{"auth": "smart-backend", "client_id": "node-b-id",
                                    "scope": "system/ImagingStudy.rs drimhub/peer", **kwargs})


def test_backend_token_from_a_token_url_on_another_origin_goes_only_to_the_peer(
        peer_server: FakeServer, token_server: TokenServer, request: pytest.FixtureRequest) -> None:
    peer_server.routes["/dicom-web/studies"] = json_answer([])
    token_url = f"{token_server.url}/token"
    peer = backend_peer(peer_server.url, request.node.name, token_url=token_url)
    client = dicomweb_client(peer, KEY)
    assert client.search_for_studies() == []
    assert client.search_for_studies() == []  # the cached token
    assert token_server.issued == ["tok-1"]
    assert peer_server.authorizations() == ["Bearer tok-1"] * 2
    assert token_server.authorizations() == []  # the token server never gets a token
    (assertion,) = token_server.assertions()
    claims, header = assertion["claims"], assertion["header"]
    assert header["alg"] == "RS384" and header["kid"] == KEY.kid
    assert claims["iss"] == claims["sub"] == "node-b-id" and claims["aud"] == token_url
    assert 0 < claims["exp"] - time.time() <= 300 and claims["jti"]
    assert assertion["form"]["scope"] == "system/ImagingStudy.rs drimhub/peer"


def test_a_401_drops_the_cached_token_and_retries_once(peer_server: FakeServer, token_server: TokenServer,
                                                       request: pytest.FixtureRequest) -> None:
    def first_token_rejected(seen: Seen) -> Answer:
        return (401, {}, b"") if seen.headers.get("Authorization") == "Bearer tok-1" else json_answer([])

    peer_server.routes["/dicom-web/studies"] = first_token_rejected
    peer = backend_peer(peer_server.url, request.node.name, token_url=f"{token_server.url}/token")
    assert dicomweb_client(peer, KEY).search_for_studies() == []
    assert peer_server.authorizations() == ["Bearer tok-1", "Bearer tok-2"]
    peer_server.routes["/dicom-web/studies"] = (401, {}, b"")
    with pytest.raises(requests.HTTPError):
        dicomweb_client(peer, KEY).search_for_studies()  # retried once, not more
    assert peer_server.authorizations()[2:] == ["Bearer tok-2", "Bearer tok-3"]


def test_discovered_token_endpoint_on_another_origin_is_refused(
        peer_server: FakeServer, token_server: TokenServer, request: pytest.FixtureRequest) -> None:
    peer_server.routes[smart.WELL_KNOWN] = json_answer({"token_endpoint": f"{token_server.url}/token"})
    peer = backend_peer(peer_server.url, request.node.name)
    with pytest.raises(OutboundRefused, match="--token-url"):
        dicomweb_client(peer, KEY).search_for_studies()
    assert token_server.seen == []
    assert [s.path for s in peer_server.seen] == [smart.WELL_KNOWN]


def test_discovered_token_endpoint_on_the_peer_origin_is_used(
        peer_server: FakeServer, request: pytest.FixtureRequest) -> None:
    token_server = TokenServer()  # only for its handler: the peer itself serves the token endpoint
    peer_server.routes[smart.WELL_KNOWN] = json_answer({"token_endpoint": f"{peer_server.url}/token"})
    peer_server.routes["/token"] = token_server.routes["/token"]
    peer_server.routes["/dicom-web/studies"] = json_answer([])
    token_server.close()
    peer = backend_peer(peer_server.url, request.node.name)
    assert dicomweb_client(peer, KEY).search_for_studies() == []
    assert [s.path for s in peer_server.seen] == [smart.WELL_KNOWN, "/token", "/dicom-web/studies"]
    assert [s.headers.get("Authorization") for s in peer_server.seen] == [None, None, "Bearer tok-1"]


def test_a_refused_token_request_is_a_peer_error(peer_server: FakeServer, request: pytest.FixtureRequest) -> None:
    peer_server.routes["/token"] = json_answer({"error": "invalid_client"}, 401)
    peer = backend_peer(peer_server.url, request.node.name, token_url=f"{peer_server.url}/token")
    with pytest.raises(smart.PeerUnavailable, match="invalid_client"):
        dicomweb_client(peer, KEY).search_for_studies()
    assert [s.path for s in peer_server.seen] == ["/token"]
