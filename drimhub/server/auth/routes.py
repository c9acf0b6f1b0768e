"""HTTP endpoints of the authorization server and its discovery documents.

All are public (no bearer token): ``/oauth/token``, ``/oauth/authorize`` (the login page),
``/oauth/introspect``, ``/oauth/revoke``, ``/oauth/jwks``,
``/.well-known/oauth-authorization-server`` (RFC 8414) and ``/.well-known/smart-configuration``
(SMART App Launch 2.x, also under ``/fhir/``). Errors are RFC 6749 §5.2 JSON, made by Authlib.
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template_string, request
from flask_cors import cross_origin

from drimhub.server.auth import keys
from drimhub.server.auth.assertion import ALGORITHMS
from drimhub.server.auth.clients import AUTH_METHODS, PUBLIC
from drimhub.server.auth.server import create_server
from drimhub.server.urls import base_url, issuer
from drimhub.server.auth.users import authenticate
from drimhub.server.db import resources
from drimhub.store.security import OAuthClient

bp = Blueprint("oauth", __name__)
_EXTENSION = "drimhub.oauth"

#: OAuth parameters the login form carries along (SMART App Launch 2.x authorization request).
_CARRIED = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
            "code_challenge_method", "aud", "launch", "nonce")
#: Scopes listed in the discovery documents (any SMART v2 or v1 scope of these contexts is understood).
SCOPES_SUPPORTED = [f"{context}/{scope}" for context in ("system", "user")
                    for scope in ("*.rs", "*.cruds", "ImagingStudy.rs", "ImagingStudy.c", "ImagingStudy.d")]
SCOPES_SUPPORTED += ["offline_access", "online_access"]
#: SMART App Launch 2.x capabilities this server has (conformance.md): no patient picker, so no
#: patient context and no ``permission-patient``; no id_token, so no ``sso-openid-connect``.
CAPABILITIES = ["launch-standalone", "authorize-post", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "permission-v1", "permission-v2", "permission-user",
                "permission-offline", "permission-online"]

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drimhub sign-in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}
label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.4rem}
.error{color:#a00}ul{padding-left:1.2rem}button{margin:1rem .5rem 0 0;padding:.4rem 1rem}</style></head>
<body><h1>Sign in</h1>
<p><strong>{{ client_name }}</strong> asks to act on your behalf with these permissions:</p>
<ul>{% for s in scopes %}<li><code>{{ s }}</code></li>{% endfor %}</ul>
{% if error %}<p class="error">{{ error }}</p>{% endif %}
<form method="post" action="{{ action }}">
{% for name, value in carried %}<input type="hidden" name="{{ name }}" value="{{ value }}">{% endfor %}
<label for="username">Username</label><input type="text" id="username" name="username" value="{{ username }}"
 autocomplete="username" required autofocus>
<label for="password">Password</label><input type="password" id="password" name="password"
 autocomplete="current-password" required>
<button type="submit" name="action" value="allow">Sign in and allow</button>
<button type="submit" name="action" value="deny" formnovalidate>Deny</button>
</form></body></html>"""


def server() -> AuthorizationServer:
    """The authorization server of the current app."""
    srv: AuthorizationServer = current_app.extensions[_EXTENSION]
    return srv


@bp.errorhandler(OAuth2Error)
def oauth2_error(error: OAuth2Error) -> Any:
    """An Authlib error raised outside its own handling (e.g. ``insecure_transport``): RFC 6749 JSON."""
    return server().handle_error_response(None, error)


@bp.post("/oauth/token")
@cross_origin()  # browser apps (public clients) call the token endpoint directly
def token() -> Any:
    """RFC 6749 §3.2 token endpoint: client_credentials, authorization_code, refresh_token."""
    return server().create_token_response()


@bp.post("/oauth/introspect")
def introspect() -> Any:
    """RFC 7662 token introspection."""
    return server().create_endpoint_response("introspection")


@bp.post("/oauth/revoke")
@cross_origin()
def revoke() -> Any:
    """RFC 7009 token revocation."""
    return server().create_endpoint_response("revocation")


@bp.get("/oauth/jwks")
@cross_origin()
def jwks() -> Response:
    """The public key of the node's tokens (RFC 7517 JWKS)."""
    response = jsonify(keys.public_jwks(resources().signing_key))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> Any:
    """The login page (GET, or POST without credentials) and its submission.

    The request is validated first (client, redirect URI, PKCE); errors that cannot be sent
    back to a verified redirect URI are answered as JSON (RFC 6749 §4.1.2.1).
    """
    srv = server()
    try:
        grant = srv.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        return srv.handle_error_response(None, error)
    action = request.form.get("action") if request.method == "POST" else None
    if action == "deny":
        return srv.create_authorization_response(grant_user=None, grant=grant)
    if action != "allow":
        return _login_page(grant)
    user = authenticate(resources().sessions, request.form.get("username", ""), request.form.get("password", ""))
    if user is None:
        return _login_page(grant, error="Unknown username or wrong password.", status=400)
    return srv.create_authorization_response(grant_user=user, grant=grant)


def _login_page(grant: Any, error: str | None = None, status: int = 200) -> Response:
    row: OAuthClient = grant.request.client.row
    carried = [(name, request.values[name]) for name in _CARRIED if name in request.values]
    html = render_template_string(LOGIN_PAGE, client_name=row.name, scopes=str(grant.request.scope or "").split(),
                                  error=error, carried=carried, action=request.path,
                                  username=request.form.get("username", ""))
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"  # no clickjacking of the login form
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    return response


def metadata() -> dict[str, Any]:
    """RFC 8414 §2 authorization server metadata."""
    base = base_url()
    return {
        "issuer": issuer(),
        "jwks_uri": f"{base}/oauth/jwks",
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "token_endpoint_auth_methods_supported": [*AUTH_METHODS, PUBLIC],
        "token_endpoint_auth_signing_alg_values_supported": ALGORITHMS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ALGORITHMS,
        "revocation_endpoint_auth_methods_supported": [*AUTH_METHODS, PUBLIC],
        "revocation_endpoint_auth_signing_alg_values_supported": ALGORITHMS,
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],  # SMART 2.x: S256, never plain
        "scopes_supported": SCOPES_SUPPORTED,
    }


@bp.get("/.well-known/oauth-authorization-server")
@cross_origin()
def oauth_metadata() -> Response:
    """RFC 8414 authorization server metadata."""
    return jsonify(metadata())


@bp.get("/.well-known/smart-configuration")
@bp.get("/fhir/.well-known/smart-configuration")
@cross_origin()
def smart_configuration() -> Response:
    """SMART App Launch 2.x ``conformance.md``: the metadata plus ``capabilities``."""
    return jsonify({**metadata(), "capabilities": CAPABILITIES})


def init_app(app: Flask) -> None:
    """Create the app's authorization server and register the endpoints."""
    app.extensions[_EXTENSION] = create_server(app)
    app.register_blueprint(bp)

