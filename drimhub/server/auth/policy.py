"""Who may call what: the public allowlist, the scope each endpoint needs, and the hook enforcing them.

Decisions (ARCHITECTURE §3 "Authorisation model"; security.md §1.1, §1.4, §7):

Public (no token)
    ``/healthz`` and ``/readyz`` (load balancers and orchestrators probe them without
    credentials; they say nothing about stored data), the OAuth2 endpoints under ``/oauth/``,
    the discovery documents under ``/.well-known/`` and ``/fhir/.well-known/``, ``/fhir/metadata``
    (the CapabilityStatement a SMART client reads before it has a token), and ``/conformance/``
    (the published conformance statement of the software, PS3.2). OPTIONS requests too: a CORS
    pre-flight carries no credentials (Fetch standard); Flask answers OPTIONS from the route table
    and the explicit OPTIONS views return only ``Allow``, so no OPTIONS request reaches data.
Everything else needs ``Authorization: Bearer``
    Unknown URLs included: without a valid token they are a 401 (then, with one, the routing
    404/405/400), so that an anonymous caller learns nothing about which URLs exist.
401 or 403
    No token, or a malformed, expired, revoked one, of an unknown issuer, for another audience,
    with a bad signature or ``alg: none`` → **401** with ``WWW-Authenticate: Bearer
    realm="drimhub", error="invalid_token", error_description="…"`` (no ``error`` when no token
    was sent, RFC 6750 §3.1). A valid token whose scopes do not cover the request → **403** with
    ``error="insufficient_scope"`` (SMART and RFC 6750 §3.1; IHE IUA would say 401, security.md
    §7 recommends 403). Bodies in the protocol's form: DICOM JSON under ``/dicom-web``,
    OperationOutcome under ``/fhir``, RFC 6749 JSON elsewhere. A protected endpoint without a
    rule here is a 403 (fail closed), and the route-enumeration test fails.
Scopes (SMART v2, v1 ``.read``/``.write``/``.*`` accepted)
    QIDO-RS needs ImagingStudy ``s``; WADO-RS (instances, metadata, frames, bulk data)
    ImagingStudy ``r``; STOW-RS ``c``; DELETE ``d``. ``/metrics`` needs :data:`METRICS_SCOPE`,
    a scope outside SMART's resource scopes so that ``system/*.cruds`` never grants it (a
    Prometheus scrape gets it with client credentials).
``patient/`` scopes
    When only a ``patient/`` scope grants the permission, the token's ``patient`` claim (a
    PatientID, or ``issuer|id``) restricts the request to that patient's studies; a mismatch is a
    403, never an empty or partial answer (Argonaut SMART Imaging Access); no ``patient`` claim is
    a 403. A ``user/`` or ``system/`` grant of the same permission is not restricted.
FHIR (``/fhir``)
    One generic view per URL pattern serves every type: its rule names the permission and takes
    the type from the URL (:data:`FROM_URL`): read, vread and instance history ``r``; search and
    type history ``s``; create ``c``; update and patch ``u``; delete ``d`` (Binary read is
    ``Binary.r``, as SMART has it). A batch or transaction is authorised entry by entry
    (:data:`PER_ENTRY`): one entry the token may not carry out refuses a transaction whole.
Organisations
    A token acts for its ``org``; it finds, reads, writes and deletes only that organisation's
    studies (another organisation's study is a 404 on WADO and DELETE, absent from QIDO, refused
    per instance on STOW). The one deliberate exception is :data:`CROSS_ORG_SEARCH`: a regional
    hub's token carrying it (with an ImagingStudy ``s`` grant) searches every organisation; it
    still reads only its own.
Shares (:mod:`drimhub.sharing.grants`) and peers
    :func:`authorize` is the one place. An ImagingStudy ``r``/``s`` request of a caller also sees
    the studies granted to its organisation (grantee org) or to it (grantee user: the token's
    issuer **and** ``sub``), while the grant is active and the patient did not oppose
    (:attr:`Access.grantee`: an ``EXISTS`` over the grants in every query, no list of studies).
    A grant's ``read`` is everything but the DICOM objects themselves: search, metadata, frames,
    rendered, thumbnail, FHIR ImagingStudy. ``download`` adds the WADO-RS retrieve of instances,
    series, studies, bulk data and WADO-URI ``application/dicom`` (:func:`needs_download`); a study
    the caller sees through read-only grants only is a **403** ``insufficient_scope`` with the
    reason on those URLs (:func:`drimhub.sharing.grants.download_refusal`), not a 404. A share
    link's capability (claim ``share``, this node's tokens only) sees its one study
    (:attr:`Access.only`) and nothing else: only ImagingStudy ``r``/``s`` on ``/dicom-web``,
    ``/wado`` and ``/fhir`` (no batch, no ``_include``, ``_revinclude``, ``_has`` nor chained
    parameter), else 403; its grant is looked up on every request (revoked or expired: 401
    ``invalid_token`` with the reason). A peer node's token (:data:`PEER_SCOPE`) searches and reads
    every organisation's studies but those of patients who opposed sharing
    (:mod:`drimhub.sharing.consent`, :attr:`Access.opposed`: a ``NOT EXISTS`` over the opposition
    index): absent from searches, 403 with the reason on any URL naming such a study
    (:func:`check_opposition`). So is a capability of a study whose patient opposed. The owning
    organisation's own access never looks at consent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, g, request

from drimhub.server.auth import protect
from drimhub.server.auth.principal import Principal
from drimhub.server.db import get_session
from drimhub.errors import Forbidden, Unauthorized
from drimhub.sharing import consent, grants
from drimhub.store.access import Access, Grantee, PatientRef

log = logging.getLogger(__name__)

#: Operator scope for ``/metrics``.
METRICS_SCOPE = "drimhub/metrics.read"
#: Deliberate grant for regional hubs: QIDO over every organisation's studies.
CROSS_ORG_SEARCH = "drimhub/cross-org.s"
#: Node administration: peers and push rules (``/api/peers``), every job, purges.
ADMIN_SCOPE = "drimhub/admin"
#: Grant, list and revoke shares of the caller's organisation's studies (``/api/shares``).
SHARE_SCOPE = "drimhub/share"
#: Push the caller's organisation's studies to a peer, and follow those jobs.
PUSH_SCOPE = "drimhub/push"
#: Given to a peer node's client at this node: with ImagingStudy ``rs``, search and read every
#: organisation's studies but those of patients who opposed sharing (drimhub.sharing.consent).
PEER_SCOPE = "drimhub/peer"

#: SMART permissions that read studies: the only ones shares and peers extend.
READS = frozenset({"r", "s"})
#: Resource types seen as their study is (shares and peers extend their reads): ImagingStudy and
#: the manifests' DocumentReferences (drimhub.store.fhir.visibility ties each to its study).
STUDY_TYPES = frozenset({"ImagingStudy", "DocumentReference"})
#: View names (of any blueprint) that hand out the stored DICOM objects themselves (WADO-RS
#: PS3.18 §10.4.1.1.1 and §10.4.1.1.5): a share grant needs ``download`` for them.
DOWNLOAD_VIEWS = frozenset({"retrieve_study", "retrieve_series", "retrieve_instance", "bulkdata"})
#: Blueprints a share link's capability may be used on.
CAPABILITY_BLUEPRINTS = frozenset({"dicomweb", "wado_uri", "fhir"})
#: FHIR search parameters reaching resources other than the matches: refused to a capability.
_REACHING = ("_include", "_revinclude", "_has")

#: URL rules (patterns) answered without a token, exactly.
PUBLIC_RULES = frozenset({"/healthz", "/readyz", "/fhir/metadata"})
#: URL prefixes answered without a token.
PUBLIC_PREFIXES = ("/oauth/", "/.well-known/", "/fhir/.well-known/", "/conformance/")


#: :attr:`Requirement.resource` of the generic FHIR views: the type named in the URL (view
#: argument ``type_``), resolved by :func:`enforce` for each request.
FROM_URL = "{type}"
#: :attr:`Requirement.resource` of ``POST /fhir`` (batch, transaction): the view authorises each
#: entry with :func:`authorize_entry`; :func:`enforce` only authenticates.
PER_ENTRY = "{entry}"


@dataclass(frozen=True)
class Requirement:
    """What a token must grant: a SMART permission letter on a resource type, or a plain scope
    (``scope``, or any one of ``any_of``).

    ``resource`` may be :data:`FROM_URL` (the FHIR type of the URL) or :data:`PER_ENTRY`.
    """

    resource: str | None = None
    permission: str | None = None
    scope: str | None = None
    any_of: tuple[str, ...] = ()

    @property
    def scopes(self) -> tuple[str, ...]:
        """The plain scopes any one of which meets this requirement (none: a SMART requirement)."""
        return (self.scope,) if self.scope is not None else self.any_of

    def __str__(self) -> str:
        return " or ".join(self.scopes) or f"{self.resource}.{self.permission}"


def _smart(resource: str, permission: str, *endpoints: str) -> dict[str, Requirement]:
    return {endpoint: Requirement(resource, permission) for endpoint in endpoints}


#: Endpoint → what it needs. Other blueprints add theirs with :func:`require`.
RULES: dict[str, Requirement] = {
    **_smart("ImagingStudy", "s", "dicomweb.search_studies", "dicomweb.search_series", "dicomweb.search_instances",
             "dicomweb.search_study_series", "dicomweb.search_study_instances", "dicomweb.search_series_instances"),
    **_smart("ImagingStudy", "r", "dicomweb.retrieve_study", "dicomweb.retrieve_series", "dicomweb.retrieve_instance",
             "dicomweb.study_metadata", "dicomweb.series_metadata", "dicomweb.instance_metadata",
             "dicomweb.bulkdata", "dicomweb.frames"),
    **_smart("ImagingStudy", "c", "dicomweb.store", "dicomweb.store_study"),
    **_smart("ImagingStudy", "d", "dicomweb.delete_study", "dicomweb.delete_series", "dicomweb.delete_instance"),
    "ops.metrics": Requirement(scope=METRICS_SCOPE),
}


def require(endpoint: str, requirement: Requirement) -> None:
    """Declare what ``endpoint`` needs (for blueprints registered outside this module)."""
    RULES[endpoint] = requirement


def is_public(rule: str) -> bool:
    """True when the URL rule (or, for an unmatched request, the path) needs no token."""
    return rule in PUBLIC_RULES or rule.startswith(PUBLIC_PREFIXES)


def visible_orgs(principal: Principal, permission: str, resource: str | None = None) -> frozenset[str] | None:
    """Organisations whose studies ``principal`` may use with ``permission``; None: every one.

    The caller's own organisation; every organisation for a search with :data:`CROSS_ORG_SEARCH`,
    and for an ImagingStudy search or read with :data:`PEER_SCOPE` (minus the opposed patients,
    :func:`authorize`). Share grants add single studies (:attr:`Access.grantee`), not organisations.
    """
    if permission == "s" and CROSS_ORG_SEARCH in principal.scopes.other:
        return None
    if permission in READS and resource in STUDY_TYPES and PEER_SCOPE in principal.scopes.other:
        return None
    return frozenset({principal.org})


def needs_download() -> bool:
    """True when the current request retrieves the DICOM objects themselves (a share's ``download``).

    WADO-RS retrieve of instances, series, studies and bulk data (:data:`DOWNLOAD_VIEWS`); WADO-URI
    unless every ``contentType`` it lists is an image type (a rendering, PS3.18 §9.1.2.1: without
    one, an instance without pixel data comes as ``application/dicom``).
    """
    endpoint = str(request.endpoint)
    if endpoint.rsplit(".", 1)[-1] in DOWNLOAD_VIEWS:
        return True
    if endpoint == "wado_uri.wado":
        types = [t.split(";")[0].strip().lower() for t in request.args.get("contentType", "").split(",")]
        return not all(t.startswith("image/") for t in types)
    return False


def authorize(principal: Principal, requirement: Requirement, *, download: bool = False) -> Access:
    """The access ``principal`` has for an endpoint with ``requirement``.

    ``download``: the request retrieves the DICOM objects themselves (:func:`needs_download`).

    Raises
    ------
    Forbidden
        The scopes do not grant it (``insufficient_scope``), or a ``patient/`` scope comes
        without a ``patient`` claim; a capability asked for anything but reading its study, or
        to download without the grant's ``download``; a capability of an opposed patient's study.
    Unauthorized
        A capability whose grant is revoked or expired (``invalid_token``).
    """
    if requirement.scopes:
        if principal.share is not None or not set(requirement.scopes) & principal.scopes.other:
            raise _insufficient(requirement)
        return Access.of_org(principal.org)
    assert requirement.resource is not None and requirement.permission is not None
    contexts = principal.scopes.contexts_for(requirement.resource, requirement.permission)
    if not contexts:
        raise _insufficient(requirement)
    if principal.share is not None:
        return _capability(principal, requirement, download)
    patient = None
    if contexts == {"patient"}:
        if not principal.patient:
            raise _insufficient(requirement, "a patient/ scope needs a patient context (claim patient)")
        patient = PatientRef.parse(principal.patient)
    orgs = visible_orgs(principal, requirement.permission, requirement.resource)
    if requirement.resource not in STUDY_TYPES or requirement.permission not in READS:
        return Access(orgs, patient)
    if orgs is None:
        return Access(None, patient, opposed=PEER_SCOPE in principal.scopes.other)
    grantee = Grantee(principal.org, principal.issuer, principal.sub, download=download)
    if not grants.has_active_grants(get_session(), grantee):
        return Access(orgs, patient)  # the common case: nothing is shared with this caller
    study = requested_study() if download else None
    if study is not None:
        reason = grants.download_refusal(get_session(), grantee, study)
        if reason is not None:
            raise _insufficient(requirement, reason)
    return Access(orgs, patient, grantee=grantee)


def _capability(principal: Principal, requirement: Requirement, download: bool) -> Access:
    """The access of a share link's capability: its one study, while its grant is active."""
    assert principal.share is not None
    if requirement.resource != "ImagingStudy" or requirement.permission not in READS:
        raise _insufficient(requirement, "a share link reads its one study only")
    session = get_session()
    try:
        grant = grants.capability_grant(session, principal.share, principal.token_ref)
    except Unauthorized as exc:
        raise Unauthorized(exc.message, oauth_error="invalid_token",
                           www_authenticate=protect.www_authenticate("invalid_token", exc.message)) from None
    if download and "download" not in grant.permissions.split():
        raise _insufficient(requirement, "this share link permits reading, not downloading the DICOM instances")
    consent.check_shareable(session, grant.study_uid)
    return Access(frozenset({grant.org}), only=frozenset({grant.study_uid}))


def _confine_capability(requirement: Requirement) -> None:
    """403 unless a capability's request is one it may make at all (see the module docstring)."""
    fhir_reach = request.blueprint == "fhir" and any(
        name.startswith(_REACHING) or "." in name for name in request.args)
    if request.blueprint not in CAPABILITY_BLUEPRINTS or requirement.resource == PER_ENTRY or fhir_reach:
        raise _insufficient(requirement, "a share link reads its one study only")


def requested_study() -> str | None:
    """The study the current URL names: view argument ``study``, or WADO-URI's ``studyUID``."""
    study = (request.view_args or {}).get("study")
    if study is None and request.endpoint == "wado_uri.wado":
        study = request.args.get("studyUID")  # PS3.18 §9.1.2.1
    return str(study) if study else None


def check_opposition(access: Access) -> None:
    """403 with the reason when ``access`` hides opposed patients and the URL names such a study."""
    study = requested_study()
    if access.opposed and study is not None:
        consent.check_shareable(get_session(), study)


def _insufficient(requirement: Requirement, reason: str | None = None) -> Forbidden:
    description = reason or f"the access token's scopes do not grant {requirement}"
    return Forbidden(description, oauth_error="insufficient_scope",
                     www_authenticate=protect.www_authenticate("insufficient_scope", description))


def enforce() -> None:
    """``before_request`` hook: authenticate, then authorise against :data:`RULES`.

    Leaves the caller in ``g.principal`` and its :class:`Access` in ``g.access``.
    """
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    if request.method == "OPTIONS" or is_public(rule):
        return
    g.principal = protect.authenticate()
    if request.url_rule is None:
        return  # the routing error (404, 405, 400) follows, for an authenticated caller
    requirement = RULES.get(str(request.endpoint))
    if requirement is None:
        log.error("endpoint %s has no access rule: refused", request.endpoint)
        raise Forbidden("no access rule is defined for this endpoint")
    if g.principal.share is not None:
        _confine_capability(requirement)
    if requirement.resource == PER_ENTRY:
        return  # the view calls authorize_entry for each entry; current_access() fails closed meanwhile
    if requirement.resource == FROM_URL:
        requirement = Requirement(str((request.view_args or {}).get("type_")), requirement.permission)
    download = requirement.resource == "ImagingStudy" and requirement.permission == "r" and needs_download()
    g.access = authorize(g.principal, requirement, download=download)
    check_opposition(g.access)


def authorize_entry(resource: str, permission: str) -> Access:
    """The access of the current caller for one entry of a batch or transaction (403 if refused)."""
    return authorize(current_principal(), Requirement(resource, permission))


def current_access() -> Access:
    """The current request's access (set by :func:`enforce`).

    Raises
    ------
    Forbidden
        None was established (a view reached without the hook): fail closed.
    """
    access: Access | None = g.get("access")
    if access is None:
        raise Forbidden("no access was established for this request")
    return access


def current_principal() -> Principal:
    """The caller of the current request (set by :func:`enforce`).

    Raises
    ------
    Forbidden
        No caller was authenticated (a view reached without the hook): fail closed.
    """
    principal: Principal | None = g.get("principal")
    if principal is None:
        raise Forbidden("no caller was authenticated for this request")
    return principal


def init_app(app: Flask) -> None:
    """Build the resource protector and register :func:`enforce` before every request."""
    protect.init_app(app)
    app.before_request(enforce)
