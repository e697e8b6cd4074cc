"""CLI commands: `prices` (the price in force, `--missing`) and `reprice` (price events once a price exists)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from .. import export
from ..errors import ValidationError
from ..money import format_usd, from_nano
from ..pricing import PriceBook, PriceInfo
from ..reprice import reprice as reprice_events
from ..timeranges import parse_range, parse_since
from . import common


def _yaml_snippet(model: str, provider: str | None) -> str:
    lines = ["pricing:", f"  - model: {_yaml_str(model)}"]
    if provider and provider not in ("unknown", "local"):
        lines.append(f"    provider: {provider}")
    lines += [
        "    input_mtok: 1.00        # USD per million input tokens",
        "    output_mtok: 2.00       # USD per million output tokens",
        "    # cache_read_mtok: 0.10  # optional; without it cached reads cost the input price",
        "    # cache_write_mtok: 1.25 # optional",
        "    # effective_from: 2025-01-01  # optional; earlier calls keep their old price",
    ]
    return "\n".join(lines)


def _yaml_str(s: str) -> str:
    # a JSON string is a valid YAML scalar whatever characters the model name holds
    return s if s.replace("-", "").replace(".", "").replace("_", "").isalnum() else json.dumps(s)


def _money(v: Decimal | None) -> str:
    """$2.50, $0.075, $10.00: at least cents, every significant digit of a per-million price."""
    if v is None:
        return "-"
    n = v.normalize()
    exp = n.as_tuple().exponent
    if isinstance(exp, int) and exp > -2:
        n = n.quantize(Decimal("0.01"))
    return f"${n:f}"


def _price_rows(info: PriceInfo) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    labels = {
        "input_mtok": "Input",
        "cache_read_mtok": "Cached input (read)",
        "cache_write_mtok": "Cache write",
        "output_mtok": "Output (incl. reasoning)",
    }
    values = {
        "input_mtok": info.input_mtok,
        "cache_read_mtok": info.cache_read_mtok,
        "cache_write_mtok": info.cache_write_mtok,
        "output_mtok": info.output_mtok,
    }
    for key, label in labels.items():
        v = values[key]
        if v is None and key in ("cache_read_mtok", "cache_write_mtok"):
            text = "same as input"
        else:
            text = f"{_money(v)} / M tokens"
        for above, price in info.tiers.get(key, ()):
            text += f"  ({_money(price)} when the call's input exceeds {above:,} tokens)"
        rows.append((label, text))
    for key, price in info.unit_prices.items():
        rows.append(_unit_row(key, price))
    if info.request_usd is not None:
        rows.append(("Per request", _money(info.request_usd)))
    return rows


_UNIT_LABELS = {
    "cache_write_1h_mtok": "Cache write, 1-hour TTL",
    "web_searches_kcount": "Web searches",
}


def _unit_row(key: str, price: Decimal) -> tuple[str, str]:
    """A row for one of the other unit prices (genai-prices price key -> base price)."""
    if key.endswith("_mtok"):
        label = _UNIT_LABELS.get(key) or key[: -len("_mtok")].replace("_", " ").capitalize() + " tokens"
        return label, f"{_money(price)} / M tokens"
    if key.endswith("_kcount"):
        label = _UNIT_LABELS.get(key) or key[: -len("_kcount")].replace("_", " ").capitalize()
        return label, f"{_money(price)} / 1,000"
    return key.replace("_", " ").capitalize(), _money(price)


def prices(
    model: Annotated[
        str | None, typer.Argument(help="Model name as the provider answers it, e.g. gpt-4o.")
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            help="Provider (openai, anthropic, google, xai, deepseek, openrouter, ...); default: by model.",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="The price in force at this date or time (default now), e.g. 2025-06-01."),
    ] = None,
    tier: Annotated[
        str | None,
        typer.Option(
            "--tier",
            help="The prices of a service tier as the provider reports it (flex, priority, fast, batch).",
        ),
    ] = None,
    missing: Annotated[
        bool,
        typer.Option(
            "--missing", help="List models with unpriced calls in the ledger and their call counts."
        ),
    ] = False,
    json_: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
) -> None:
    """Show the price in force for MODEL and where it comes from, or the models still unpriced (--missing)."""
    if json_ and csv_:
        raise ValidationError("--json", "choose one of --json and --csv")
    if missing:
        if model is not None:
            raise ValidationError("--missing", "lists every unpriced model; give no MODEL with it")
        _missing(json_, config, db, csv_=csv_)
        return
    if model is None:
        raise ValidationError("MODEL", "give a model name (e.g. `llmbudget prices gpt-4o`) or --missing")

    cfg = common.load(config)
    when = parse_since(at, zone=cfg.zone(), option="--at") if at is not None else None
    book = PriceBook.from_config(cfg)
    info = book.lookup(model, provider=provider, at=when, service_tier=tier)
    when_s = (when or datetime.now().astimezone()).isoformat(timespec="seconds")
    if info is None:
        reason = book.why_unpriced(model, provider=provider, at=when) or "no price known"
        snippet = _yaml_snippet(model, provider)
        doc = {
            "model": model,
            "provider": provider,
            "at": when_s,
            "status": "unpriced",
            "reason": reason,
            "add_override": snippet,
        }
        if json_:
            common.print_json(doc)
        elif csv_:
            _csv([doc])
        else:
            common.console.print(
                f"[bold yellow]{escape(model)}[/] is [bold]unpriced[/]: {escape(reason)}.", highlight=False
            )
            common.console.print(
                "Its calls are counted with their tokens but no cost (never $0). Add a price to your config "
                f"({escape(cfg.source_path or './llmbudget.yaml')}), then run [bold]llmbudget reprice[/]:",
                highlight=False,
            )
            common.console.print(snippet, markup=False, highlight=False, soft_wrap=True)
        # SystemExit, not typer.Exit: `cli.main` runs click with standalone_mode=False, which swallows Exit codes
        raise SystemExit(1)
    if json_:
        common.print_json({"at": when_s, **info.to_dict()})
        return
    if csv_:
        _csv([{"at": when_s, **info.to_dict()}])
        return
    t = Table(
        title=escape(
            f"{model}" + (f" ({provider})" if provider else "") + (f", {tier} tier" if tier else "")
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_header=False,
    )
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", overflow="fold")
    for label, text in _price_rows(info):
        t.add_row(label, escape(text))
    t.add_section()
    source = info.source
    if info.status == "priced" and info.model_id:
        source += f" (model {info.model_id}, provider {info.price_provider})"
    t.add_row("Source", escape(source))
    t.add_row(
        "In force",
        f"since {info.effective_from.isoformat()}" if info.effective_from else "no start date known",
    )
    if info.next_change is not None:
        t.add_row("Next change", info.next_change.isoformat(timespec="minutes"))
    t.add_row("At", when_s)
    for note in info.notes:
        t.add_row("Note", escape(note))
    common.console.print(t)


def _csv(rows: list[dict[str, Any]]) -> None:
    """Rows as CSV on stdout (formula-safe); lists and maps become compact JSON in one cell."""
    flat = [
        {k: json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v for k, v in r.items()}
        for r in rows
    ]
    columns = list(rows[0]) if rows else []
    export.write_rows_csv(flat, columns, sys.stdout)


MISSING_COLUMNS = (
    "provider",
    "model",
    "calls",
    "input_tokens",
    "output_tokens",
    "first_seen",
    "last_seen",
    "price_now_available",
)


def _missing(json_: bool, config: str | None, db: str | None, *, csv_: bool = False) -> None:
    cfg, ledger = common.open_ledger_for(config, db)
    try:
        rows = ledger.unpriced_models()
    finally:
        ledger.close()
    book = PriceBook.from_config(cfg)
    out = []
    for r in rows:
        # whether `reprice` would now find a price for the latest such call
        now_priced = book.lookup(r.model, provider=r.provider, at=r.last_seen) is not None
        out.append(
            {
                "provider": r.provider,
                "model": r.model,
                "calls": r.calls,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "first_seen": r.first_seen.isoformat(),
                "last_seen": r.last_seen.isoformat(),
                "price_now_available": now_priced,
            }
        )
    if json_:
        common.print_json(out)
        return
    if csv_:
        export.write_rows_csv(out, MISSING_COLUMNS, sys.stdout)
        return
    if not out:
        common.console.print("Every recorded call is priced.")
        return
    zone = cfg.zone()
    t = Table(title="Models with unpriced calls", title_justify="left", box=box.SIMPLE_HEAD)
    numeric = ("Calls", "Input", "Output")
    for h in ("Model", "Provider", *numeric, "Last seen", "Price now"):
        # names and numbers never wrap (they must stay copy-pasteable); dates drop the time when narrow
        t.add_column(
            h,
            justify="right" if h in numeric else "left",
            no_wrap=h != "Model",
            overflow="fold",
            min_width=min(len(h), 10) if h != "Model" else max(len(r.model) for r in rows[:50]),
        )
    for r, row in zip(rows, out, strict=True):
        t.add_row(
            escape(r.model),
            escape(r.provider),
            f"{r.calls:,}",
            f"{r.input_tokens:,}",
            f"{r.output_tokens:,}",
            r.last_seen.astimezone(zone).strftime("%Y-%m-%d"),
            "yes" if row["price_now_available"] else "no",
        )
    common.console.print(t)
    if any(row["price_now_available"] for row in out):
        common.console.print("Prices now exist for some of them: run `llmbudget reprice`.", highlight=False)
    if not all(row["price_now_available"] for row in out):
        common.console.print(
            "Add a `pricing:` override for a model (see `llmbudget prices MODEL`), "
            "then run `llmbudget reprice`.",
            highlight=False,
        )


def reprice(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only calls from this date/time on (2025-06-01, 7d, this month)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Only calls before the end of this date/time.")
    ] = None,
    all_: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Re-price every call in range from today's price book, not only unpriced ones "
            "(rewrites stored costs; `local` calls are kept).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; write nothing.")
    ] = False,
    json_: common.JsonOpt = False,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
) -> None:
    """Price calls recorded as unpriced now that a price exists (an override or a newer genai-prices).

    Each call gets the price in force at its own timestamp. With --all every call in range is
    re-priced from the current book: an explicit request to rewrite history.
    """
    cfg, ledger = common.open_ledger_for(config, db)
    try:
        start, end = parse_range(since, until, zone=cfg.zone())
        with common.LateProgress("re-pricing") as bar:
            result = reprice_events(
                cfg, ledger, since=start, until=end, all_events=all_, dry_run=dry_run, progress=bar
            )
        if result["written"]:
            common.reconcile_budgets(cfg, ledger)
    finally:
        ledger.close()
    examined, changed, delta_nano = result["examined"], result["changed"], result["cost_delta_nano"]
    still = result["still_unpriced_by_model"]
    if json_:
        common.print_json(result)
        return
    verb = "would change" if dry_run else "changed"
    scope = "calls in range" if all_ else "unpriced calls"
    common.console.print(
        f"Examined {examined:,} {scope}; {verb} {changed:,} "
        f"({result['newly_priced']:,} newly priced, cost {'+' if delta_nano >= 0 else '-'}"
        f"{format_usd(abs(from_nano(delta_nano)))}).",
        highlight=False,
    )
    if still:
        common.console.print(
            f"{sum(still.values()):,} calls are still unpriced: "
            + ", ".join(f"{m} ({n:,})" for m, n in list(still.items())[:5])
            + ". Add a `pricing:` override (see `llmbudget prices MODEL`).",
            markup=False,
            highlight=False,
        )
    if dry_run and changed:
        common.console.print("Dry run: nothing was written.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("prices")(prices)
    app.command("reprice")(reprice)
