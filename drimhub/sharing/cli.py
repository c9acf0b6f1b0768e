"""Commands of this package (imports nothing heavy at module level: see drimhub.server.cli)."""

from __future__ import annotations

import click


@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Only list the studies that would be purged.")
def purge(dry_run: bool) -> None:
    """Delete the studies the retention policies expire (DRIMHUB_RETENTION), audited one by one."""
    from drimhub.errors import DrimhubError
    from drimhub.server.app import create_app
    from drimhub.sharing import retention

    app = create_app()
    res = app.extensions["drimhub"]
    try:
        studies = retention.purge(res, str(app.config["RETENTION"]), dry_run=dry_run,
                                  node=str(app.config["BASE_URL"] or "urn:drimhub:node"))
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        res.engine.dispose()
    for uid in studies:
        click.echo(f"{'would purge' if dry_run else 'purged'} {uid}")
    noun = "study" if len(studies) == 1 else "studies"
    click.echo(f"{len(studies)} {noun} {'would be purged' if dry_run else 'purged'}")


COMMANDS: list[click.Command] = [purge]
