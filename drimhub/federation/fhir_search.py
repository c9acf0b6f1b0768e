"""FHIR ``ImagingStudy`` search across the peers: ``GET /fhir/ImagingStudy?...&_federated=true``.

The local searchset is built as usual; each peer with a FHIR base is then asked the same search
(the same parameters without ``_federated``), in parallel (:mod:`drimhub.federation.fanout`),
through its guarded session (:func:`drimhub.federation.outbound.peer_session`).

- A peer's ``match`` and ``include`` entries are added after the local ones, as the peer serves
  them: ``fullUrl`` on the peer's FHIR base, the ImagingStudy's own ``endpoint`` references
  (relative to that ``fullUrl``, bundle.html#references) or ``contained`` Endpoint untouched. A
  peer's ImagingStudy whose Study Instance UID a previous entry already has is left out, and so
  is an ``include`` linked (either way) only to matches left out.
- A ``patient/`` scope: the peers are asked only when the token's ``patient`` claim names the
  issuer (``issuer|id``), with ``patient.identifier=SYSTEM|ID`` instead of the request's own
  patient parameters and ``_include=ImagingStudy:subject``; a peer's match is kept only when its
  subject (inline identifier, or the included Patient) has that identifier, and an include only
  when it is linked to a kept match.
- A peer's answer is read up to :data:`drimhub.federation.fanout.MAX_ANSWER` bytes within its
  time-out; the session is closed after the call.
- A peer that fails or misses its time-out adds an OperationOutcome entry (``search.mode``
  ``outcome``, severity ``warning``, code ``transient``); the search still succeeds.
- Paging: the peers' results are on the first page only (the request without ``_cursor``); each
  peer gives at most its own first page (``_count`` is passed on). ``next`` links page through
  the local matches. ``total``, when the local answer gives one, adds the peers' totals (or
  their match counts), less the matches left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drimhub.federation.fanout import Outbound, PeerFailure, ask
from drimhub.federation.peers import PeerInfo
from drimhub.mappings.identifiers import patient_id_system
from drimhub.store.access import Access, PatientRef

FHIR_JSON = "application/fhir+json"
#: The parameter that asks for the peers too, and the one type it applies to.
FEDERATED = "_federated"
TYPE = "ImagingStudy"
_UID_SYSTEM = "urn:dicom:uid"
#: Parameters naming the patient: replaced by the token's patient for a ``patient/`` scope.
_PATIENT_PARAMS = ("patient", "subject")
SUBJECT_INCLUDE = ("_include", "ImagingStudy:subject")


def requested(type_: str, pairs: Sequence[tuple[str, str]]) -> bool:
    """True when the search asks for the peers: ImagingStudy, ``_federated=true``, first page."""
    keys = [k for k, _ in pairs]
    return type_ == TYPE and (FEDERATED, "true") in pairs and "_cursor" not in keys


def peer_pairs(pairs: Sequence[tuple[str, str]], patient: PatientRef | None = None) -> list[tuple[str, str]]:
    """The parameters sent to the peers: the request's, without ``_federated``; for a ``patient``
    (named with its issuer), its identifier instead of the request's patient parameters."""
    sent = [(k, v) for k, v in pairs if k.split(":", 1)[0] not in (FEDERATED, "_cursor", "_format")]
    if patient is None:
        return sent
    sent = [(k, v) for k, v in sent if k.split(":", 1)[0].split(".", 1)[0] not in _PATIENT_PARAMS]
    sent.append(("patient.identifier", f"{patient_id_system(patient.issuer)}|{patient.id}"))
    return sent if SUBJECT_INCLUDE in sent else [*sent, SUBJECT_INCLUDE]


def ask_peer(out: Outbound, peer: PeerInfo, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The peer's searchset Bundle (an error for anything else)."""
    assert peer.fhir_url is not None
    with out.session(peer) as session:  # answers of at most MAX_ANSWER bytes
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


def _references(node: Any) -> set[str]:
    """Every ``reference`` string in a resource (``Type/id`` or absolute), contained ones included."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            found.add(ref)
        for child in node.values():
            found |= _references(child)
    elif isinstance(node, list):
        for child in node:
            found |= _references(child)
    return found


def _names(resource: dict[str, Any], full_url: str) -> set[str]:
    """What a reference to ``resource`` may say: ``Type/id``, or its full URL."""
    return {full_url, f"{resource['resourceType']}/{resource.get('id', '')}"}


def _linked(a: tuple[set[str], set[str]], b: tuple[set[str], set[str]]) -> bool:
    """True when one of two entries (names, references) refers to the other."""
    return bool(a[1] & b[0] or b[1] & a[0])


def _has_identifier(resource: dict[str, Any], system: str | None, value: str) -> bool:
    idents = resource.get("identifier") if resource.get("resourceType") == "Patient" else None
    return any(isinstance(i, dict) and i.get("system") == system and i.get("value") == value for i in idents or [])


def _of_patient(match: dict[str, Any], patients: list[tuple[set[str], dict[str, Any]]], patient: PatientRef) -> bool:
    """True when the ImagingStudy ``match``'s subject is ``patient`` (its inline identifier, or an
    included Patient it references with that identifier)."""
    system = patient_id_system(patient.issuer)
    subject = match.get("subject") if isinstance(match.get("subject"), dict) else {}
    ident = subject.get("identifier")
    if isinstance(ident, dict) and (ident.get("system"), ident.get("value")) == (system, patient.id):
        return True
    ref = subject.get("reference")
    return isinstance(ref, str) and any(ref in names and _has_identifier(res, system, patient.id)
                                        for names, res in patients)


def _peer_entries(peer: PeerInfo, bundle: dict[str, Any], seen: set[str],
                  patient: PatientRef | None) -> tuple[list[dict[str, Any]], int]:
    """The peer's match and include entries to add, and how many of its matches were left out
    (duplicates, other patients')."""
    entries = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        mode = ((entry.get("search") or {}) if isinstance(entry, dict) else {}).get("mode")
        if not isinstance(resource, dict) or mode not in ("match", "include") or not resource.get("resourceType"):
            continue
        full_url = entry.get("fullUrl")
        if not (isinstance(full_url, str) and full_url.startswith(f"{peer.fhir_url}/")):
            full_url = f"{peer.fhir_url}/{resource['resourceType']}/{resource.get('id', '')}"
        entries.append((mode, resource, full_url, (_names(resource, full_url), _references(resource))))
    patients = [(links[0], res) for mode, res, _, links in entries if mode == "include"]
    kept: list[tuple[set[str], set[str]]] = []
    dropped: list[tuple[set[str], set[str]]] = []
    for mode, resource, full_url, links in entries:
        if mode != "match":
            continue
        uid = _study_uid(resource)
        if patient is not None and not _of_patient(resource, patients, patient):
            dropped.append(links)
            continue
        if uid is not None and uid in seen:
            dropped.append(links)
            continue
        if uid is not None:
            seen.add(uid)
        kept.append(links)
    added = []
    for mode, resource, full_url, links in entries:
        if mode == "match" and links not in kept:
            continue
        if mode == "include":
            to_kept = any(_linked(links, other) for other in kept)
            to_dropped = any(_linked(links, other) for other in dropped)
            if not to_kept and (to_dropped or patient is not None):
                continue
        added.append({"fullUrl": full_url, "resource": resource, "search": {"mode": mode}})
    return added, len(dropped)


def _outcome(failures: Sequence[PeerFailure]) -> dict[str, Any]:
    return {"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "transient", "diagnostics": failure.text()} for failure in failures]},
        "search": {"mode": "outcome"}}


def add_peers(bundle: dict[str, Any], pairs: Sequence[tuple[str, str]], peers: Sequence[PeerInfo],
              out: Outbound, access: Access) -> dict[str, Any]:
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
    access : Access
        The caller's: its ``patient`` restriction (named with its issuer) limits what is asked
        and kept.
    """
    asked = [peer for peer in peers if peer.fhir_url]
    if not asked:
        return bundle
    query = peer_pairs(pairs, access.patient)
    gathered = ask(asked, out, lambda peer: ask_peer(out, peer, query))
    entries = list(bundle.get("entry") or [])
    local = [e for e in entries if (e.get("search") or {}).get("mode") != "outcome"]
    outcomes = [e for e in entries if (e.get("search") or {}).get("mode") == "outcome"]
    seen = {uid for e in local if (e.get("search") or {}).get("mode") == "match"
            and (uid := _study_uid(e.get("resource") or {})) is not None}
    added_total = 0
    for peer, peer_bundle in gathered.answers:
        added, left_out = _peer_entries(peer, peer_bundle, seen, access.patient)
        local += added
        matches = sum(1 for e in added if e["search"]["mode"] == "match")
        peer_total = peer_bundle.get("total")
        added_total += (peer_total - left_out if isinstance(peer_total, int) else matches)
    if gathered.failures:
        outcomes.append(_outcome(gathered.failures))
    if isinstance(bundle.get("total"), int):
        bundle["total"] += added_total
    if local or outcomes:
        bundle["entry"] = local + outcomes
    return bundle
