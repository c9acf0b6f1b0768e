"""Commands of this package (imports nothing heavy at module level: see drimhub.server.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
