"""FHIR ``ImagingStudy`` search across the peers: ``GET /fhir/ImagingStudy?...&_federated=true``.

The local searchset is built as usual; each peer with a FHIR base is then asked the same search
(the same parameters without ``_federated``), in parallel (:mod:`drimhub.federation.fanout`),
through its guarded session (:func:`drimhub.federation.outbound.peer_session`).

- A peer's ``match`` and ``include`` entries are added after the local ones, as the peer serves
  them: ``fullUrl`` on the peer's FHIR base, the ImagingStudy's own ``endpoint`` references
  (relative to that ``fullUrl``, bundle.html#references) or ``contained`` Endpoint untouched. A
  peer's ImagingStudy whose Study Instance UID a previous entry already has is left out.
- A peer that fails or misses its time-out adds an OperationOutcome entry (``search.mode``
  ``outcome``, severity ``warning``, code ``transient``); the search still succeeds.
- Paging: the peers' results are on the first page only (the request without ``_cursor``); each
  peer gives at most its own first page (``_count`` is passed on). ``next`` links page through
  the local matches. ``total``, when the local answer gives one, adds the peers' totals (or
  their match counts), less the duplicates left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drimhub.federation.fanout import Outbound, PeerFailure, ask
from drimhub.federation.peers import PeerInfo

FHIR_JSON = "application/fhir+json"
#: The parameter that asks for the peers too, and the one type it applies to.
FEDERATED = "_federated"
TYPE = "ImagingStudy"
_UID_SYSTEM = "urn:dicom:uid"


def requested(type_: str, pairs: Sequence[tuple[str, str]]) -> bool:
    """True when the search asks for the peers: ImagingStudy, ``_federated=true``, first page."""
    keys = [k for k, _ in pairs]
    return type_ == TYPE and (FEDERATED, "true") in pairs and "_cursor" not in keys


def peer_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The parameters sent to the peers: the request's, without ``_federated``."""
    return [(k, v) for k, v in pairs if k.split(":", 1)[0] not in (FEDERATED, "_cursor", "_format")]


def ask_peer(out: Outbound, peer: PeerInfo, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The peer's searchset Bundle (an error for anything else)."""
    assert peer.fhir_url is not None
    with out.session(peer) as session:
        response = session.get(f"{peer.fhir_url}/{TYPE}", params=list(pairs), headers={"Accept": FHIR_JSON},
                               timeout=out.timeout(peer), allow_redirects=False)
        response.raise_for_status()
        body = response.json()
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise ValueError("the answer is not a Bundle")
    return body


def _study_uid(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") != TYPE:
        return None
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == _UID_SYSTEM and isinstance(ident.get("value"), str):
            return str(ident["value"]).removeprefix("urn:oid:")
    return None


def _peer_entries(peer: PeerInfo, bundle: dict[str, Any], seen: set[str]) -> tuple[list[dict[str, Any]], int]:
    """The peer's match and include entries to add, and how many of its matches were duplicates."""
    added, duplicates = [], 0
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        mode = ((entry.get("search") or {}) if isinstance(entry, dict) else {}).get("mode")
        if not isinstance(resource, dict) or mode not in ("match", "include") or not resource.get("resourceType"):
            continue
        uid = _study_uid(resource)
        if mode == "match" and uid is not None:
            if uid in seen:
                duplicates += 1
                continue
            seen.add(uid)
        full_url = entry.get("fullUrl")
        if not (isinstance(full_url, str) and full_url.startswith(f"{peer.fhir_url}/")):
            full_url = f"{peer.fhir_url}/{resource['resourceType']}/{resource.get('id', '')}"
        added.append({"fullUrl": full_url, "resource": resource, "search": {"mode": mode}})
    return added, duplicates


def _outcome(failures: Sequence[PeerFailure]) -> dict[str, Any]:
    return {"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "transient", "diagnostics": failure.text()} for failure in failures]},
        "search": {"mode": "outcome"}}


def add_peers(bundle: dict[str, Any], pairs: Sequence[tuple[str, str]], peers: Sequence[PeerInfo],
              out: Outbound) -> dict[str, Any]:
    """``bundle`` (the local searchset) with the peers' results added (module docstring).

    Parameters
    ----------
    bundle : dict
        The local searchset Bundle; changed in place and returned.
    pairs : sequence of (str, str)
        The request's search parameters.
    peers : sequence of PeerInfo
        The peers to ask (those without a FHIR base are skipped).
    out : Outbound
        How to call them.
    """
    asked = [peer for peer in peers if peer.fhir_url]
    if not asked:
        return bundle
    query = peer_pairs(pairs)
    gathered = ask(asked, out, lambda peer: ask_peer(out, peer, query))
    entries = list(bundle.get("entry") or [])
    local = [e for e in entries if (e.get("search") or {}).get("mode") != "outcome"]
    outcomes = [e for e in entries if (e.get("search") or {}).get("mode") == "outcome"]
    seen = {uid for e in local if (e.get("search") or {}).get("mode") == "match"
            and (uid := _study_uid(e.get("resource") or {})) is not None}
    added_total = 0
    for peer, peer_bundle in gathered.answers:
        added, duplicates = _peer_entries(peer, peer_bundle, seen)
        local += added
        matches = sum(1 for e in added if e["search"]["mode"] == "match")
        peer_total = peer_bundle.get("total")
        added_total += (peer_total - duplicates if isinstance(peer_total, int) else matches)
    if gathered.failures:
        outcomes.append(_outcome(gathered.failures))
    if isinstance(bundle.get("total"), int):
        bundle["total"] += added_total
    if local or outcomes:
        bundle["entry"] = local + outcomes
    return bundle
