"""Every spelling of an attribution field agrees with the one table, `llmbudget.attribution_table`.

What is derived from the table is checked to have come out right; what cannot be derived (typed
signatures and dataclasses, the schema, the CLI's options) is checked against it, so adding a row
fails here until every place that needs a hand edit has one.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sqlite3
import typing
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer

from llmbudget import attribution, attribution_table, events, importer, otel, reports
from llmbudget.admission import CallInfo
from llmbudget.attribution_table import FIELDS, AttributionField
from llmbudget.budget import config as budget_config
from llmbudget.budget import rules, seed
from llmbudget.capture import paths, proxy, request
from llmbudget.capture.wrap import wrap
from llmbudget.cli import app
from llmbudget.errors import ValidationError
from llmbudget.store import base as store_base
from llmbudget.store import open_ledger, rows
from llmbudget.web import openapi

TEXT = [f for f in FIELDS if f.client_text]
IDS = [f.name for f in FIELDS]


def test_the_table_is_well_formed() -> None:
    names = [f.name for f in FIELDS]
    assert len(set(names)) == len(names)
    headers = [h for f in FIELDS for h in f.headers]
    assert len(set(headers)) == len(headers)
    assert all(h == h.lower() and h.startswith("x-llmbudget-") for h in headers)
    filters = [n for f in FIELDS for n in f.filters]
    assert len(set(filters)) == len(filters)
    assert {f.name: f for f in FIELDS} == attribution_table.BY_NAME
    for f in FIELDS:
        assert dataclasses.is_dataclass(f) and type(f).__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert f.option == (f"--{f.filters[0]}" if f.filters else None)
        assert f.api_params == f.filters


def test_the_proxy_reads_each_fields_headers_and_no_other() -> None:
    table = request._ATTR_HEADERS
    assert type(table) is dict  # the hot path looks a header up in a plain dict
    assert table == {h.encode(): f.name for f in FIELDS for h in f.headers}
    assert all(type(k) is bytes for k in table)
    # the proxy bounds every X-LLMBudget-* header alike, and the `/_llmb/` prefix as a header
    for f in FIELDS:
        if f.headers:
            assert f.max_chars == proxy.MAX_ATTRIBUTION_CHARS == paths.MAX_VALUE_CHARS
    assert set(paths.PREFIX_FIELDS) <= {f.name for f in TEXT}


@pytest.mark.parametrize("f", FIELDS, ids=IDS)
def test_events_and_calls_carry_every_field(f: AttributionField) -> None:
    assert f.name in {x.name for x in dataclasses.fields(events.UsageEvent)}
    assert f.name in {x.name for x in dataclasses.fields(CallInfo)}
    if f.name != "tags":
        assert f.name in events.TEXT_FIELDS  # checked for NUL bytes, length and encoding


def test_the_text_fields_callers_set() -> None:
    names = tuple(f.name for f in TEXT)
    assert names == events.ATTRIBUTION
    assert names == attribution.RULE_FIELDS
    for name in names:
        assert attribution.AttributionRule(header="x-team", field=name).field == name
    for f in FIELDS:
        if not f.client_text:
            with pytest.raises(ValueError):
                attribution.AttributionRule(header="x-team", field=f.name)


def test_wrap_takes_each_fields_keyword() -> None:
    params = inspect.signature(wrap).parameters
    for f in FIELDS:
        if f.sdk_keyword is not None:
            p = params[f.sdk_keyword]
            assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None
    assert "key" not in params  # stamped by the server from a virtual key, never by the SDK


@pytest.mark.parametrize("f", FIELDS, ids=IDS)
def test_the_ledger_stores_and_filters_each_field(f: AttributionField, tmp_path: Path) -> None:
    assert f.column in rows.EVENT_COLUMNS
    assert rows.column(f.name) == f.column
    assert (f.name in store_base.FILTER_FIELDS) == bool(f.filters)
    assert (f.name in store_base.DIMENSIONS) == (f.by is not None)
    # the migrations really create the column
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    open_ledger(url).close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    assert f.column in columns


def test_report_filters_and_by_choices() -> None:
    for f in FIELDS:
        for name in f.filters:
            assert reports.FILTER_NAMES[name] == f.name
            assert reports.build_filters({name: "x"}) == {f.name: "x"}
        if f.by is not None:
            assert f.by in reports.BY_CHOICES
            assert reports.normalize_by(f.by) == f.name
            assert reports.normalize_by(f.name) == f.name
            assert f.by in reports.BY_HELP
        else:
            with pytest.raises(ValidationError):
                reports.normalize_by(f.name)
    attr_filters = {n for f in FIELDS for n in f.filters}
    assert set(reports.FILTER_NAMES) - attr_filters == {
        "model",
        "backend",
        "provider",
        "status",
        "price-status",
        "price_status",
        "source",
    }


def test_budget_scopes() -> None:
    scoped = [f for f in FIELDS if f.scope is not None]
    assert ("global", "backend", "model", *(f.scope for f in scoped)) == budget_config.SCOPES
    # the config model's Literal is written out for the type checker: it must list the same scopes
    literal = budget_config.LimitConfig.model_fields["scope"].annotation
    assert typing.get_args(literal) == budget_config.SCOPES
    for f in scoped:
        assert rules.SCOPE_FIELD[f.scope] == f.name  # type: ignore[index]
        assert seed.SCOPE_COLUMN[f.scope] == f.column  # type: ignore[index]
        assert budget_config.LimitConfig(scope=f.scope, limit_usd=1).scope == f.scope


def _options(command: str) -> set[str]:
    cmd = typer.main.get_command(app)
    sub = cmd.commands[command]  # type: ignore[attr-defined]
    return {o for p in sub.params for o in getattr(p, "opts", ())}


@pytest.mark.parametrize("command", ["costs", "events", "export"])
def test_every_report_command_takes_each_filter_option(command: str) -> None:
    options = _options(command)
    for f in FIELDS:
        if f.option is not None:
            assert f.option in options, f"{command} has no {f.option}"


def test_the_api_publishes_each_filter_parameter() -> None:
    for route in ("/api/costs", "/api/events"):
        query = openapi.OPERATIONS[("GET", route)].query
        for f in FIELDS:
            for name in f.api_params:
                assert name in query and name in openapi.PARAMS
    assert openapi.PARAMS["by"]["description"] == reports.BY_HELP


def test_the_importer_reads_every_text_field() -> None:
    line = {
        "timestamp": "2025-03-01T12:00:00Z",
        "backend": "openai",
        "model": "gpt-4o",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        **{f.name: f"{f.name}-v" for f in TEXT},
    }
    ev = importer.parse_logged(line, json.dumps(line).encode())
    for f in TEXT:
        assert getattr(ev, f.name) == f"{f.name}-v"


def test_traces_carry_every_text_field() -> None:
    ev = events.UsageEvent(
        timestamp=datetime(2025, 3, 1, tzinfo=UTC),
        backend="openai",
        provider="openai",
        model="gpt-4o",
        price_status="unpriced",
        status="ok",
        source="proxy",
        **{f.name: f"{f.name}-v" for f in TEXT},  # type: ignore[arg-type]
    )
    attrs = otel.span_attributes(ev)
    for f in TEXT:
        assert f"{f.name}-v" in attrs.values()
