"""Trusted peers: add, list, remove (``drimhub peer``, ``/api/peers``). Only listed peers are trusted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session


@dataclass(frozen=True)
class PeerInfo:
    """A peer as the services use it (a plain value: safe to hand to threads and jobs)."""

    name: str
    dicomweb_url: str
    fhir_url: str | None
    auth: str  # "smart-backend" or "relay"
    client_id: str | None
    scope: str
    token_url: str | None
    allow_private: bool
    timeout: float | None


def list_peers(session: Session) -> list[PeerInfo]:
    """Every peer, by name."""
    raise NotImplementedError


def get_peer(session: Session, name: str) -> PeerInfo:
    """The peer called ``name``; :class:`~drimhub.errors.NotFound` if none."""
    raise NotImplementedError


def peer_json(peer: PeerInfo) -> dict[str, Any]:
    """The API form of a peer (``GET /api/peers``); never a secret."""
    raise NotImplementedError
