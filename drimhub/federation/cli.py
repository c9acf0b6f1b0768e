"""Commands of this package (imports nothing heavy at module level: see drimhub.server.cli).

``drimhub peer add NAME --url BASE ...``, ``drimhub peer list`` (one JSON object per line),
``drimhub peer remove NAME``.
"""

from __future__ import annotations

from typing import Any

import click


def _resources() -> Any:
    from drimhub.server.app import create_app

    return create_app().extensions["drimhub"]


@click.group()
def peer() -> None:
    """Peer nodes this node trusts and calls (federated search, retrieval, pushes)."""


@peer.command("add")
@click.argument("name")
@click.option("--url", "base_url", required=True, help="The peer's base URL (https, unless --allow-private).")
@click.option("--client-id", default=None, help="This node's client id at the peer (smart-backend).")
@click.option("--scope", default="", help='Scopes asked for at the peer, e.g. "system/ImagingStudy.rs drimhub/peer".')
@click.option("--auth", default="smart-backend", show_default=True, type=click.Choice(["smart-backend", "relay"]),
              help="SMART backend services with this node's key, or relaying the caller's own token.")
@click.option("--dicomweb-url", default=None, help="Its DICOMweb root (default: BASE/dicom-web).")
@click.option("--fhir-url", default=None, help="Its FHIR base (default: BASE/fhir).")
@click.option("--token-url", default=None,
              help="Its token endpoint (default: discovered from BASE/.well-known/smart-configuration).")
@click.option("--allow-private", is_flag=True,
              help="Allow a loopback, link-local or private address, and plain http (tests, one site).")
@click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Seconds each call may wait (default: DRIMHUB_PEER_TIMEOUT).")
def peer_add(name: str, base_url: str, client_id: str | None, scope: str, auth: str, dicomweb_url: str | None,
             fhir_url: str | None, token_url: str | None, allow_private: bool, timeout: float | None) -> None:
    """Trust the peer NAME; prints it as JSON."""
    import json

    from drimhub.errors import DrimhubError
    from drimhub.federation import peers
    from drimhub.store.engine import write_session

    res = _resources()
    try:
        with write_session(res.sessions) as session:
            info = peers.add_peer(session, name, base_url, client_id=client_id, scope=scope, auth=auth,
                                  dicomweb_url=dicomweb_url, fhir_url=fhir_url, token_url=token_url,
                                  allow_private=allow_private, timeout=timeout)
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        res.engine.dispose()
    click.echo(json.dumps(peers.peer_json(info)))


@peer.command("list")
def peer_list() -> None:
    """Print the peers, one JSON object per line."""
    import json

    from drimhub.federation import peers

    res = _resources()
    try:
        with res.sessions() as session:
            for info in peers.list_peers(session):
                click.echo(json.dumps(peers.peer_json(info)))
    finally:
        res.engine.dispose()


@peer.command("remove")
@click.argument("name")
def peer_remove(name: str) -> None:
    """Stop trusting the peer NAME."""
    from drimhub.errors import DrimhubError
    from drimhub.federation import peers
    from drimhub.store.engine import write_session

    res = _resources()
    try:
        with write_session(res.sessions) as session:
            peers.remove_peer(session, name)
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        res.engine.dispose()
    click.echo(f"peer {name} removed")


COMMANDS: list[click.Command] = [peer]
