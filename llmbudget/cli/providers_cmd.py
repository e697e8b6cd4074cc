"""CLI commands: `providers import pi [PATH]`: quota accounts from an agent's own config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..quota import pi_config
from . import common


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    providers_app = typer.Typer(
        name="providers",
        help="Quota accounts: write `providers:` entries from agents' own configs.",
        no_args_is_help=True,
    )
    import_app = typer.Typer(
        name="import", help="Print `providers:` entries read from an agent's config.", no_args_is_help=True
    )

    @import_app.command("pi")
    def import_pi(
        path: Annotated[
            str | None, typer.Argument(help="pi's models.json (default: ~/.pi/agent/models.json).")
        ] = None,
        json_out: common.JsonOpt = False,
    ) -> None:
        """Print the `providers:` entries for a pi agent's models.json; keys by variable name, never copied."""
        source = Path(path).expanduser() if path else pi_config.default_path()
        entries = pi_config.read_pi_providers(source)
        if json_out:
            common.print_json(
                {
                    "source": str(source),
                    "providers": [e.to_dict() for e in entries if e.kind],
                    "notes": [n for e in entries for n in e.notes],
                }
            )
            return
        typer.echo(pi_config.providers_yaml(entries, source), nl=False)

    providers_app.add_typer(import_app)
    app.add_typer(providers_app)
