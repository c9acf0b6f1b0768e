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
        report = retention.run(res, app.config, dry_run=dry_run)
    except DrimhubError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        res.engine.dispose()
    for uid in report.purged:
        click.echo(f"{'would purge' if dry_run else 'purged'} {uid}")
    noun = "study" if len(report.purged) == 1 else "studies"
    click.echo(f"{len(report.purged)} {noun} {'would be purged' if dry_run else 'purged'}")
    if report.failed:
        for uid in report.failed:
            click.echo(f"failed {uid} (see the log)", err=True)
        raise click.ClickException(f"{len(report.failed)} of the expired studies could not be purged")


COMMANDS: list[click.Command] = [purge]
