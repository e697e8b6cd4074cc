"""The dashboard's HTML pages: `/` overview, `/sessions`, `/budgets`, `/events`, and `/static/...`.

Server-rendered HTML (every number is on the page without JavaScript) plus one small script of
our own (`static/dashboard.js`) that applies live increments from `GET /api/live` and drives the
buttons and forms. No CDN, no build step; charts are SVG drawn here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..alerts import list_notifications
from ..errors import NotFound
from ..events import utcnow
from ..export import write_rows_csv
from ..services import Services
from ..store.dashboard import list_thresholds
from . import charts as ch
from .data import budgets as budget_data
from .data import events as event_data
from .data import overview as overview_data
from .data import sessions as session_data
from .fmt import clock, money, tokens, when

STATIC = Path(__file__).with_name("static")
PAGES = (("/", "Overview"), ("/sessions", "Sessions"), ("/budgets", "Budgets"), ("/events", "Events"))


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def layout(title: str, path: str, body: str, tz: str) -> str:
    nav = "".join(f'<a href="{p}"{" aria-current=page" if p == path else ""}>{name}</a>' for p, name in PAGES)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · llmbudget</title>
<link rel="stylesheet" href="/static/dashboard.css">
</head>
<body data-tz="{e(tz)}" data-page="{e(path)}">
<header><strong>llmbudget</strong><nav>{nav}</nav>
<span id="live" class="live" title="live updates">○ connecting</span></header>
<main>{body}</main>
<script src="/static/dashboard.js"></script>
</body></html>"""


# ---------------------------------------------------------------- pieces
def card_html(c: dict[str, Any], tz: Any) -> str:
    """One agent card (also served alone to the page script for agents that appear live)."""
    state = {
        "session": c["session"],
        "tokens": c["session_tokens"],
        "cost": c["session_cost_nano"],
        "recent": c["recent_costs_nano"],
        "spend": c["recent_spend"],
        "paused": c["paused"],
    }
    avg = c["avg_cost_nano"]
    avg_text = money(avg) if avg is not None else "–"
    flags = []
    if c["high_cost"]:
        flags.append('<span class="flag high" title="above $0.05 per request">▲ high cost</span>')
    flags.append(
        f'<span class="flag runaway"{"" if c["runaway"] else " hidden"} title="spend in the last 5 minutes '
        f"is at least 5× this agent's median 5-minute spend over the past hour\">‼ runaway</span>"
    )
    paused = c["paused"]
    return f"""<article class="card level-{e(c["level"])}{" paused" if paused else ""}" data-agent="{e(c["agent"])}" data-state='{e(json.dumps(state))}'>
<h3>{e(c["agent"])} <span class="lvl" data-f="level">{e(c["level"])}</span></h3>
<p class="session">Session: <span data-f="session">{e(c["session"] or "–")}</span></p>
<p class="big">Tokens this session: <span data-f="tokens">{tokens(c["session_tokens"])}</span> | Cost: <span data-f="cost">{money(c["session_cost_nano"])}</span></p>
<p class="cpr" title="Avg cost/request: {e(avg_text)} (last 10 requests)" data-f="cpr-title">Cost/Request: <span data-f="cpr">{e(avg_text)}</span> <span class="arrow" data-f="arrow" aria-label="{e(c["trend"])}">{e(c["arrow"])}</span></p>
<p class="last">Last request: <time data-f="last" datetime="{e(c["last_request"] or "")}">{e(clock(c["last_request"], tz))}</time></p>
<p class="flags">{"".join(flags)}<span class="flag pausedflag"{"" if paused else " hidden"}>‖ paused</span></p>
<p class="actions"><button type="button" class="pause" data-action="pause"{" hidden" if paused else ""}>Pause</button>
<button type="button" class="resume" data-action="resume"{"" if paused else " hidden"}>Resume</button></p>
</article>"""


def progress(b: dict[str, Any]) -> str:
    pct = min(100.0, float(b["percent"]))
    unit = b["unit"]

    def amt(v: Any) -> str:
        if unit == "usd":
            return money(round(float(v) * 1e9)) if v is not None else "–"
        return f"{int(v):,} tokens"

    f = b["forecast"]
    if f["exhausted"]:
        out = "exhausted now"
    elif f["runs_out_at"]:
        out = f"runs out {e(f['runs_out_at'][:16].replace('T', ' '))} UTC at the current rate"
    else:
        out = "holds until reset at the current rate"
    scope = b["scope"] + (f" {b['value']}" if b.get("value") else "")
    return f"""<div class="budget state-{e(b["status"])}" data-budget="{e(b["name"])}" data-scope="{e(b["scope"])}" data-value="{e(b.get("value") or "")}" data-unit="{e(unit)}" data-limit="{e(b.get("limit_nano", b["limit"]))}" data-spent="{e(b.get("spent_nano", b["spent"]))}">
<div class="bhead"><strong>{e(b["name"])}</strong> <span class="muted">{e(scope)} · {e(b["period"])} · {e(b["action"])}</span>
<span class="state" data-f="state">{e(b["label"])}</span></div>
<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{pct:.0f}"><div class="fill" data-f="fill" style="width:{pct:.1f}%"></div></div>
<div class="bfoot"><span data-f="spent">{amt(b["spent"])}</span> of {amt(b["limit"])} (<span data-f="pct">{pct:.0f}</span>%) · reserved {amt(b["reserved"])} · resets {e(b["reset_local"])} · <span class="forecast">{out}</span></div>
</div>"""


def notices_html(items: list[dict[str, Any]], tz: Any) -> str:
    if not items:
        return '<ul id="notices" class="notices"><li class="empty">No notifications.</li></ul>'
    icon = {"critical": "✖", "warning": "⚠", "info": "ℹ"}
    rows = "".join(
        f'<li class="notice {e(n.get("level"))}"><span class="icon">{icon.get(n.get("level") or "", "•")}</span> '
        f"<time>{e(when(n.get('timestamp'), tz))}</time> {e(n.get('message'))}</li>"
        for n in items
    )
    return f'<ul id="notices" class="notices">{rows}</ul>'


def quota_html(q: dict[str, Any]) -> str:
    if not q["accounts"]:
        return '<p class="empty">No quota readings yet (configure `providers:` or send traffic through the proxy).</p>'

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.0f}%"

    rows = "".join(
        f"<tr><td>{e(a['backend'])}</td><td class='sev sev-{e(a['severity'])}'>{e(a['mark'])} {e(a['severity'])}</td>"
        f"<td>{pct(a['utilization_5h'])}</td><td>{pct(a['utilization_7d'])}</td><td>{e(a['reset_in'] or '–')}</td>"
        f"<td>{e('; '.join(a['reasons']))}</td></tr>"
        for a in q["accounts"]
    )
    use = ", ".join(q["use"]) or "none"
    avoid = ", ".join(q["avoid"]) or "none"
    return (
        f'<table class="quota"><thead><tr><th>Account</th><th>Severity</th><th>5h</th><th>7d</th><th>Resets in</th>'
        f"<th>Why</th></tr></thead><tbody>{rows}</tbody></table>"
        f'<p class="next">→ use <strong>{e(use)}</strong> next | avoid {e(avoid)}</p>'
    )


def totals_html(o: dict[str, Any]) -> str:
    t, m, f = o["today"], o["month"], o["forecast"]
    unpriced = ""
    if t["unpriced_calls"] or m["unpriced_calls"]:
        unpriced = (
            f'<p class="muted">* {m["unpriced_calls"]:,} unpriced calls this month are not in these sums</p>'
        )
    return f"""<section class="totals">
<div class="stat"><span class="k">Today</span><span class="v" id="today-cost" data-nano="{t["cost_nano"]}">{money(t["cost_nano"])}</span>
<span class="muted"><span id="today-calls">{t["calls"]:,}</span> calls · <span id="today-tokens">{t["tokens"]:,}</span> tokens</span></div>
<div class="stat"><span class="k">This month</span><span class="v" id="month-cost" data-nano="{m["cost_nano"]}">{money(m["cost_nano"])}</span>
<span class="muted"><span id="month-calls">{m["calls"]:,}</span> calls</span></div>
<div class="stat"><span class="k">Projected month-end</span><span class="v" id="projected" data-nano="{f["month_end_projected_nano"]}">{money(f["month_end_projected_nano"])}</span>
<span class="muted">at {money(round(float(f["per_day_usd"]) * 1e9))}/day ({e(f["rate_basis"])})</span></div>
</section>{unpriced}"""


def _signed(nano: int) -> str:
    return ("−" if nano < 0 else "+") + money(abs(nano))


def drift_html(b: dict[str, Any], tz: Any) -> str:
    """The drift between the counters and the ledger now, and what the last reconciliation corrected."""
    h = b["enforcement"]
    if not h["compared"]:
        now = "not compared: the counters are unreadable" if h["failing"] else "not compared"
    else:
        off = []
        for x in b["budgets"]:
            n = int(x.get("drift_nano", 0)) if x["unit"] == "usd" else int(x["drift"])
            if n:
                amount = _signed(n) if x["unit"] == "usd" else f"{n:+,} tokens"
                off.append(f"{x['name']}{' ' + x['value'] if x.get('value') else ''}: {amount}")
        now = (
            e("; ".join(off)) + " (the next reconciliation corrects it)"
            if off
            else "none: every counter agrees with the ledger"
        )
    last = h["last_reconcile"]
    if last is None:
        done = "none yet by this process"
    elif "error" in last:
        done = f"unknown ({e(last['error'])})"
    else:
        done = (
            f"{e(clock(last['reconciled_at'], tz))}: {last['counters']:,} counter{'' if last['counters'] == 1 else 's'}, "
            f"{last['drifted']:,} corrected"
            + (f" by {_signed(int(last['drift_nano']))}" if last["drift_nano"] else "")
        )
    return (
        f'<dt>Drift counters vs ledger (now)</dt><dd id="enf-drift">{now}</dd>'
        f'<dt>Last reconciliation</dt><dd id="enf-reconciled">{done}</dd>'
    )


def enforcement_html(b: dict[str, Any], tz: Any) -> str:
    h = b["enforcement"]
    if h["failing"]:
        state = f"✖ failing {'closed: calls are refused' if h['failing_closed'] else 'open: calls pass unchecked'} ({e(h['failing'])})"
    elif h["active"]:
        state = "✔ enforcing"
    else:
        state = "no budgets configured (pauses still apply)"
    drift_text = drift_html(b, tz)
    refusals = "".join(
        f"<tr><td>{e(when(r['timestamp'], tz))}</td><td>{e(r['agent'] or '–')}</td><td>{e(r['backend'])}</td>"
        f"<td>{e(r['model'])}</td><td>{e(r['reason'])}</td></tr>"
        for r in b["refusals"]
    )
    if not refusals:
        refusals = '<tr><td colspan="5" class="empty">No refused calls.</td></tr>'
    return f"""<dl class="health"><dt>State</dt><dd id="enf-state">{state}</dd>
<dt>Counters</dt><dd>{e(h["counters"])} (on error: {e(h["on_error"])})</dd>
<dt>Reserved (calls in flight)</dt><dd>{money(round(float(h["reserved_usd"]) * 1e9))}</dd>
<dt>Settled (spent)</dt><dd>{money(round(float(h["settled_usd"]) * 1e9))}</dd>
{drift_text}</dl>
<h3>Recent refusals</h3><table><thead><tr><th>When</th><th>Agent</th><th>Backend</th><th>Model</th><th>Reason</th></tr></thead>
<tbody>{refusals}</tbody></table>"""


# ---------------------------------------------------------------- pages
def overview_page(services: Services) -> str:
    now = utcnow()
    tz = services.config.zone()
    o = overview_data.overview(services, now)
    cards = (
        "".join(card_html(c, tz) for c in o["agents"])
        or '<p class="empty" id="no-agents">No agent calls yet.</p>'
    )
    budgets = "".join(progress(b) for b in o["budgets"]) or '<p class="empty">No budgets configured.</p>'
    # each chart is its own SVG request: the browser draws the page first and fetches them in parallel
    charts = "".join(
        f'<figure class="chartbox" id="chart-{n}"><figcaption>{e(title)}</figcaption>'
        f'<img src="/charts/{n}.svg" alt="{e(title)}" loading="lazy"></figure>'
        for n, title in ch.TITLES.items()
    )
    body = f"""<h1>Overview</h1>{totals_html(o)}
<section><h2>Budgets</h2><div id="budgets">{budgets}</div></section>
<section><h2>Agents</h2><div id="cards" class="cards">{cards}</div></section>
<section class="two"><div><h2>Notifications</h2>{notices_html(o["notifications"], tz)}</div>
<div><h2>Quota</h2>{quota_html(o["quota"])}</div></section>
<section><h2>Charts</h2><div class="charts">{charts}</div></section>"""
    return layout("Overview", "/", body, str(tz.key))


def sessions_page(services: Services) -> str:
    tz = services.config.zone()
    items = session_data.sessions(services)
    rows = (
        "".join(
            f'<tr class="srow" data-session="{e(s["session"])}" tabindex="0"><td><button type="button" class="linklike">{e(s["session"])}</button></td>'
            f"<td>{e(when(s['start'], tz))}</td><td>{e(when(s['end'], tz)) if s['end'] else 'active'}"
            f"{' (' + e(s['ended_by']) + ')' if s['ended_by'] else ''}</td>"
            f"<td>{tokens(s['tokens'])}</td><td>{money(s['cost_nano'])}</td><td>{e(', '.join(s['agents']))}</td></tr>"
            for s in items
        )
        or '<tr><td colspan="6" class="empty">No sessions yet.</td></tr>'
    )
    idle = services.config.dashboard.session_idle_minutes
    body = f"""<h1>Sessions</h1>
<p class="muted">The last {session_data.SESSIONS_SHOWN} sessions. A session ends when its client says so (<code>POST /api/sessions/ID/end</code>) or after {idle:g} minutes without a call. Click a row for the per-agent breakdown.</p>
<p><a id="csv" href="/api/dashboard/sessions.csv" download="sessions.csv">Download CSV</a></p>
<table id="sessions"><thead><tr><th>Session ID</th><th>Start</th><th>End</th><th>Tokens</th><th>Cost</th><th>Agents</th></tr></thead>
<tbody>{rows}</tbody></table>
<section id="breakdown" hidden><h2>Session <span id="bd-id"></span></h2><table><thead><tr><th>Agent</th><th>Calls</th><th>Tokens</th><th>Cost</th><th>First</th><th>Last</th></tr></thead><tbody id="bd-rows"></tbody></table></section>"""
    return layout("Sessions", "/sessions", body, str(tz.key))


def budgets_page(services: Services) -> str:
    now = utcnow()
    tz = services.config.zone()
    b = budget_data.budgets_panel(services, now)
    budgets = "".join(progress(x) for x in b["budgets"]) or '<p class="empty">No budgets configured.</p>'
    ths = list_thresholds(services.ledger)
    trows = (
        "".join(
            f'<tr data-scope="{e(t.scope)}" data-agent="{e(t.agent)}"><td>{e(t.scope)}</td><td>{e(t.agent)}</td>'
            f"<td>{money(t.limit_nano)}</td><td>{'yes' if t.auto_pause else 'no'}</td>"
            f'<td><button type="button" data-action="delete-threshold">Delete</button></td></tr>'
            for t in ths
        )
        or '<tr><td colspan="5" class="empty">No alert thresholds yet.</td></tr>'
    )
    paused = (
        "".join(
            f"<li>{e(p.get('agent'))}: {e(p.get('reason'))} <button type='button' data-action='resume' data-agent='{e(p.get('agent'))}'>Resume</button></li>"
            for p in b["paused_agents"]
        )
        or '<li class="empty">No paused agents.</li>'
    )
    body = f"""<h1>Budgets</h1>
<section><h2>Budgets and forecast</h2><div id="budgets">{budgets}</div></section>
<section><h2>Alert thresholds</h2>
<p class="muted">Alert when an agent's spend reaches the amount in its current session, or today (scope <em>agent</em>). Agent <code>*</code> applies to every agent without its own. With auto-pause the agent is paused and its next call refused. Applied within a second on every replica.</p>
<table id="thresholds"><thead><tr><th>Scope</th><th>Agent</th><th>Threshold</th><th>Auto-pause</th><th></th></tr></thead><tbody>{trows}</tbody></table>
<form id="threshold-form" class="row">
<label>Scope <select name="scope"><option value="session">per session</option><option value="agent">per agent (today)</option></select></label>
<label>Agent <input name="agent" value="*" required maxlength="200"></label>
<label>Threshold USD <input name="limit_usd" type="number" step="any" min="0" required></label>
<label><input name="auto_pause" type="checkbox"> auto-pause</label>
<button type="submit">Save threshold</button> <span id="threshold-msg" role="status"></span></form></section>
<section><h2>Paused agents</h2><ul id="paused">{paused}</ul></section>
<section><h2>Enforcement health</h2>{enforcement_html(b, tz)}</section>
<section><h2>Notifications</h2>{notices_html(list_notifications(services.ledger, limit=50), tz)}</section>"""
    return layout("Budgets", "/budgets", body, str(tz.key))


def events_page(services: Services, params: dict[str, str]) -> str:
    tz = services.config.zone()
    clean = {k: v for k, v in params.items() if k in (*event_data.EVENT_FILTERS, "since") and v}
    items = event_data.events_list(services, clean, limit=200)
    inputs = "".join(
        f'<label>{k} <input name="{k}" value="{e(clean.get(k, ""))}" size="10"></label>'
        for k in ("since", *event_data.EVENT_FILTERS)
    )
    rows = (
        "".join(
            f'<tr data-id="{e(x["id"])}"><td>{e(when(x["timestamp"], tz))}</td><td>{e(x["agent"])}</td><td>{e(x["session"])}</td>'
            f"<td>{e(x['backend'])}</td><td>{e(x['model'])}</td><td>{e(x['status'])}</td><td>{tokens(x['tokens'])}</td>"
            f"<td>{e(money(None if x['cost_usd'] is None else round(float(x['cost_usd']) * 1e9)))}</td>"
            f'<td><button type="button" data-action="explain">Explain</button></td></tr>'
            f'<tr class="explain" hidden><td colspan="9"></td></tr>'
            for x in items
        )
        or '<tr><td colspan="9" class="empty">No events match.</td></tr>'
    )
    qs = urlencode(clean)
    body = f"""<h1>Events</h1>
<form method="get" action="/events" class="row filters">{inputs}<button type="submit">Filter</button> <a href="/events">clear</a></form>
<p class="muted">{len(items)} newest events{" matching " + e(qs) if qs else ""}. “Explain” shows tokens by kind × the price in force on that date, and where the price came from.</p>
<table id="events"><thead><tr><th>When</th><th>Agent</th><th>Session</th><th>Backend</th><th>Model</th><th>Status</th><th>Tokens</th><th>Cost</th><th></th></tr></thead>
<tbody>{rows}</tbody></table>"""
    return layout("Events", "/events", body, str(tz.key))


def page_routes(services: Services) -> list[BaseRoute]:
    """The HTML pages, the sessions CSV and the static files."""

    async def overview(request: Request) -> HTMLResponse:
        return HTMLResponse(await run_in_threadpool(overview_page, services))

    async def sessions(request: Request) -> HTMLResponse:
        return HTMLResponse(await run_in_threadpool(sessions_page, services))

    async def budgets(request: Request) -> HTMLResponse:
        return HTMLResponse(await run_in_threadpool(budgets_page, services))

    async def events(request: Request) -> HTMLResponse:
        params = {k: v for k, v in request.query_params.items()}
        return HTMLResponse(await run_in_threadpool(events_page, services, params))

    async def chart_svg(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ch.CHARTS:
            raise NotFound(f"no chart {name!r}; one of {', '.join(ch.CHARTS)}")
        d = await run_in_threadpool(ch.chart_data, services, name, utcnow())
        return Response(
            ch.render(d, standalone=True), media_type="image/svg+xml", headers={"Cache-Control": "no-store"}
        )

    async def sessions_csv(request: Request) -> Response:
        items = await run_in_threadpool(session_data.sessions, services)

        def stream() -> Iterator[str]:
            buf = io.StringIO()
            write_rows_csv(session_data.session_csv_rows(items), session_data.SESSION_CSV_COLUMNS, buf)
            yield buf.getvalue()

        return StreamingResponse(
            stream(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="sessions.csv"'},
        )

    return [
        Route("/", overview, methods=["GET"]),
        Route("/sessions", sessions, methods=["GET"]),
        Route("/budgets", budgets, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/api/dashboard/sessions.csv", sessions_csv, methods=["GET"]),
        Route("/charts/{name}.svg", chart_svg, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
