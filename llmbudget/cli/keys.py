"""CLI commands: `keys create|list|revoke` — virtual keys (`llmb-...`) stored hashed in the ledger."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ValidationError
from ..export import write_rows_csv
from ..keys import make_key, parse_expires
from ..store.keys import KeyStore
from . import common

keys_app = typer.Typer(
    help="Virtual keys: llmb-... secrets that fix an attribution and earn a backend's provider key.",
    no_args_is_help=True,
)

_COLUMNS = ("name", "state", "hint", "agent", "team", "user", "backends", "created", "expires", "revoked")


def _backends(value: str | None, known: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(dict.fromkeys(b.strip() for b in value.split(",") if b.strip()))
    if not names:
        raise ValidationError("--backends", "name at least one backend, or leave the option out for all")
    unknown = [b for b in names if b not in known]
    if unknown:
        raise ValidationError(
            "--backends",
            f"unknown backend {unknown[0]!r}; configured: {', '.join(sorted(known)) or '(none)'}",
        )
    return names


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Key name (shown in events and `scope: key` budgets).")],
    agent: Annotated[
        str | None, typer.Option("--agent", help="Agent every call with this key is attributed to.")
    ] = None,
    team: Annotated[str | None, typer.Option("--team", help="Team fixed by the key.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="User fixed by the key.")] = None,
    backends: Annotated[
        str | None,
        typer.Option("--backends", help="Comma-separated backends the key may use (default: all)."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime (30d, 12h, 2w) or a date (2027-01-31).")
    ] = None,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    json_: common.JsonOpt = False,
) -> None:
    """Create a virtual key and print its secret once (only its hash is stored)."""
    cfg, ledger = common.open_ledger_for(config, db)
    with ledger:
        key, secret = make_key(
            name,
            agent=agent,
            team=team,
            user=user,
            backends=_backends(backends, list(cfg.backends)),
            expires=parse_expires(expires) if expires else None,
        )
        KeyStore(ledger).add(key)
    if json_:
        common.print_json({**key.to_dict(), "key": secret})
        return
    common.err_console.print(
        f"created key {key.name}; this is the only time its secret is shown:",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    typer.echo(secret)


@keys_app.command("list")
def keys_list(
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    json_: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
) -> None:
    """List virtual keys (names, state, attribution; never a secret)."""
    if json_ and csv_:
        raise ValidationError("--json", "choose one of --json and --csv")
    _, ledger = common.open_ledger_for(config, db)
    with ledger:
        rows = [k.to_dict() for k in KeyStore(ledger).list()]
    if json_:
        common.print_json({"keys": rows})
        return
    flat = [{**r, "backends": ",".join(r["backends"]) if r["backends"] is not None else "*"} for r in rows]
    if csv_:
        write_rows_csv(flat, _COLUMNS, sys.stdout)
        return
    if not flat:
        common.console.print("no virtual keys; create one with `llmbudget keys create NAME`", highlight=False)
        return

    table = Table(title="Virtual keys")
    for col in _COLUMNS:
        table.add_column(col)
    colour = {"active": "green", "expired": "yellow", "revoked": "red"}
    for r in flat:
        cells = [escape(str(r[c])) if r[c] is not None else "" for c in _COLUMNS]
        cells[1] = f"[{colour.get(r['state'], 'white')}]{cells[1]}[/]"
        table.add_row(*cells)
    common.console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="Key name.")],
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    json_: common.JsonOpt = False,
) -> None:
    """Revoke a virtual key: every server refuses it within a second."""
    _, ledger = common.open_ledger_for(config, db)
    with ledger:
        key, changed = KeyStore(ledger).revoke(name)
    if json_:
        common.print_json({**key.to_dict(), "changed": changed})
        return
    common.console.print(
        f"key {name} revoked" if changed else f"key {name} was already revoked", markup=False, highlight=False
    )


def register(app: typer.Typer) -> None:
    """Add `keys` to the app."""
    app.add_typer(keys_app, name="keys")
