"""Commands of this package (imports nothing heavy at module level: see drimhub.server.cli).

``drimhub worker [--workers N]``; ``drimhub push-rule add PEER [--org O] [--modality M]``,
``push-rule list``, ``push-rule remove ID``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click


def _app() -> Any:
    from drimhub.server.app import create_app

    return create_app()


@click.command()
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Jobs run at once (threads).")
def worker(workers: int) -> None:
    """Run background jobs (pushes to peers, the hourly retention purge) until stopped.

    Takes the queue of DRIMHUB_JOBS_URL (default: sqlite:///<DATA_DIR>/jobs.db). `drimhub serve`
    starts one unless --no-worker; run more, on any machine, with a Redis DRIMHUB_JOBS_URL.
    """
    from drimhub.errors import DrimhubError
    from drimhub.jobs.worker import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = _app()
        run(app, workers)
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc


@click.group("push-rule")
def push_rule() -> None:
    """Push rules: every new study of an organisation (and modality) goes to a peer."""


@push_rule.command("add")
@click.argument("peer")
@click.option("--org", default=None, help="Only studies of this organisation (default: any).")
@click.option("--modality", default=None, help="Only studies with a series of this modality, e.g. CT (default: any).")
def push_rule_add(peer: str, org: str | None, modality: str | None) -> None:
    """Add a rule; prints it as JSON."""
    from drimhub.errors import DrimhubError
    from drimhub.jobs.rules import add_rule
    from drimhub.store.engine import write_session

    res = _app().extensions["drimhub"]
    try:
        with write_session(res.sessions) as session:
            rule = add_rule(session, peer, org, modality)
            out = _rule_json(rule)
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        res.engine.dispose()
    click.echo(json.dumps(out))


@push_rule.command("list")
def push_rule_list() -> None:
    """Print the rules as JSON, one per line."""
    from drimhub.jobs.rules import list_rules

    res = _app().extensions["drimhub"]
    try:
        with res.sessions() as session:
            for rule in list_rules(session):
                click.echo(json.dumps(_rule_json(rule)))
    finally:
        res.engine.dispose()


@push_rule.command("remove")
@click.argument("rule_id", type=int)
def push_rule_remove(rule_id: int) -> None:
    """Remove rule RULE_ID (its pending jobs still run)."""
    from drimhub.jobs.rules import remove_rule
    from drimhub.store.engine import write_session

    res = _app().extensions["drimhub"]
    try:
        with write_session(res.sessions) as session:
            removed = remove_rule(session, rule_id)
    finally:
        res.engine.dispose()
    if not removed:
        raise click.ClickException(f"no push rule {rule_id}")
    click.echo(f"push rule {rule_id} removed")


def _rule_json(rule: Any) -> dict[str, Any]:
    return {"id": rule.pk, "peer": rule.peer, "org": rule.org, "modality": rule.modality}


COMMANDS: list[click.Command] = [worker, push_rule]
