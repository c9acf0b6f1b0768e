"""HTTP routes of this package: ``/api/shares`` (ARCHITECTURE §3 "Sharing API"), scope ``drimhub/share``.

``POST /api/shares`` → 201 with the grant (and a link's capability ``token``, shown this once);
``GET /api/shares[?study=UID]`` → the caller's organisation's grants; ``GET /api/shares/{id}``;
``DELETE /api/shares/{id}`` → 204, effective at the next request of the grantee. The rules live
in :mod:`drimhub.sharing.grants`; errors are ``{"error", "error_description"}`` JSON.
"""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
from flask import Blueprint, Flask, Response, current_app, request

from drimhub.dicomweb.uids import is_valid_uid
from drimhub.server import urls
from drimhub.server.auth import policy
from drimhub.server.auth.policy import Requirement, current_principal
from drimhub.server.auth.tokens import sign
from drimhub.server.db import get_session, resources
from drimhub.sharing import grants

bp = Blueprint("sharing", __name__, url_prefix="/api/shares")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def create() -> Response:
    principal = current_principal()
    now = datetime.now(timezone.utc)
    req = grants.parse_request(request.get_json(silent=True), now, int(current_app.config["SHARE_MAX_DAYS"]))
    share = grants.create(resources().sessions, req, org=principal.org, created_by=principal.sub)
    token = None
    if share.link:
        claims = grants.capability_claims(share, issuer=urls.issuer(), audience=urls.base_url())
        token = sign(claims, resources().signing_key)
    response = _json(grants.grant_json(share, token), 201)
    response.headers["Location"] = f"{urls.base_url()}/api/shares/{share.id}"
    response.headers["Cache-Control"] = "no-store"  # the capability is a bearer credential (RFC 6749 §5.1)
    return response


def list_shares() -> Response:
    study = request.args.get("study")
    if study is not None and not is_valid_uid(study):
        raise grants.invalid("study is a Study Instance UID")
    found = grants.list_grants(get_session(), current_principal().org, study)
    return _json([grants.grant_json(s) for s in found])


def get_share(share_id: str) -> Response:
    return _json(grants.grant_json(grants.get_grant(get_session(), current_principal().org, share_id)))


def revoke_share(share_id: str) -> Response:
    grants.revoke(resources().sessions, current_principal().org, share_id)
    return Response(status=204)


bp.add_url_rule("", "create", create, methods=["POST"])
bp.add_url_rule("", "list", list_shares, methods=["GET"])
bp.add_url_rule("/<string(maxlength=32):share_id>", "get", get_share, methods=["GET"])
bp.add_url_rule("/<string(maxlength=32):share_id>", "revoke", revoke_share, methods=["DELETE"])


def init_app(app: Flask) -> None:
    """Register the routes and their access rules."""
    for endpoint in ("create", "list", "get", "revoke"):
        policy.require(f"{bp.name}.{endpoint}", Requirement(scope=policy.SHARE_SCOPE))
    app.register_blueprint(bp)
    from drimhub.sharing import manifest_routes
    manifest_routes.init_app(app)
