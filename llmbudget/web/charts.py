"""Charts drawn on the server as inline SVG (no JavaScript library, nothing downloaded), and their data.

Data (`chart_data`) comes from the rollups only: daily spend for the last 30 days by backend,
tokens by model, cost by agent, cost by tier, and today by hour; days and hours in the
configured time zone. Each series is also served as JSON under `/api/charts/{name}`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape
from typing import Any

from ..errors import NotFound
from ..money import from_nano
from ..services import Services
from ..store.buckets import US_PER_HOUR, from_us, to_us
from ..store.dashboard import hourly_by_backend
from .data.spend import day_start, usd

TITLES = {
    "daily": "Daily spend, last 30 days, by backend",
    "models": "Tokens by model, last 30 days",
    "agents": "Cost by agent, last 30 days",
    "tiers": "Cost by tier, last 30 days",
    "hourly": "Today by hour",
}
CHARTS = tuple(TITLES)
#: text styles inside a standalone SVG (an <img> does not see the page's CSS)
_STYLE = (
    "<style>.lbl{font:11px system-ui,sans-serif;fill:#3b4252}.val{font:10px system-ui,sans-serif;fill:#5b6475}"
    ".axis{stroke:#8c95a6}.empty{font:12px system-ui,sans-serif;fill:#5b6475;font-style:italic}</style>"
)
#: a fixed palette that stays apart for colour-blind readers (Okabe-Ito), with patterns in the legend order
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def chart_data(services: Services, name: str, now: datetime) -> dict[str, Any]:
    """One chart's data as JSON-ready dict (money as exact decimal strings)."""
    ledger = services.ledger
    tz = services.config.zone()
    day = day_start(now, tz)
    until = day + timedelta(days=1)
    if name == "daily":
        start = day - timedelta(days=29)
        days = [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(30)]
        index = {d: i for i, d in enumerate(days)}
        series: dict[str, list[int]] = {}
        # hourly rollups, so days are the configured zone's days (a day rollup is a UTC day)
        for hour, backend, cost in hourly_by_backend(ledger, to_us(start), to_us(until)):
            d = from_us(hour * US_PER_HOUR).astimezone(tz).strftime("%Y-%m-%d")
            if d in index:
                series.setdefault(backend or "(none)", [0] * 30)[index[d]] += cost
        ranked = sorted(series, key=lambda b: -sum(series[b]))[:8]
        return {
            "name": name,
            "title": "Daily spend, last 30 days, by backend",
            "labels": days,
            "series": [
                {"name": k, "cost_nano": series[k], "cost_usd": [usd(x) for x in series[k]]} for k in ranked
            ],
        }
    if name == "hourly":
        by_hour = {r.key: r for r in ledger.costs(since=day, until=until, by="hour", tz=tz)}
        hours = [(day + timedelta(hours=i)).strftime("%Y-%m-%dT%H") for i in range(24)]
        return {
            "name": name,
            "title": "Today by hour",
            "labels": [h[-2:] for h in hours],
            "cost_nano": [by_hour[h].cost_nano if h in by_hour else 0 for h in hours],
            "calls": [by_hour[h].calls if h in by_hour else 0 for h in hours],
        }
    by = {"models": "model", "agents": "agent", "tiers": "tier"}.get(name)
    if by is None:
        raise NotFound(f"no chart {name!r}; one of {', '.join(CHARTS)}")
    start = day - timedelta(days=29)
    rows = ledger.costs(since=start, until=until, by=by, tz=tz)
    items: list[dict[str, Any]] = [
        {
            "key": r.key or "(none)",
            "tokens": r.input_tokens + r.output_tokens,
            "cost_nano": r.cost_nano,
            "cost_usd": usd(r.cost_nano),
            "calls": r.calls,
        }
        for r in rows
    ]
    metric = "tokens" if name == "models" else "cost_nano"
    items.sort(key=lambda d: -int(d[metric]))
    title = {"models": "Tokens by model", "agents": "Cost by agent", "tiers": "Cost by tier"}[name]
    return {"name": name, "title": f"{title}, last 30 days", "metric": metric, "items": items[:12]}


def _money(nano: int) -> str:
    v = from_nano(nano)
    return f"${v:,.2f}" if v >= 1 else f"${v:.4f}"


def _svg(w: int, h: int, body: str, title: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{_STYLE}{body}</svg>'
    )


def _empty(title: str, text: str) -> str:
    return _svg(560, 40, f'<text x="8" y="24" class="empty">{escape(text)}</text>', title)


def hbars(items: list[tuple[str, int, str]], title: str) -> str:
    """Horizontal bars: (label, value, text shown)."""
    if not items:
        return _empty(title, "No data yet.")
    w, row = 560, 22
    h = row * len(items) + 8
    top = max(v for _, v, _ in items) or 1
    parts = []
    for i, (label, v, text) in enumerate(items):
        y = 4 + i * row
        bw = int(300 * v / top)
        parts.append(
            f'<text x="150" y="{y + 15}" text-anchor="end" class="lbl">{escape(label[:24])}</text>'
            f'<rect x="156" y="{y + 3}" width="{max(bw, 1)}" height="{row - 8}" fill="{PALETTE[i % len(PALETTE)]}">'
            f"<title>{escape(label)}: {escape(text)}</title></rect>"
            f'<text x="{160 + bw}" y="{y + 15}" class="val">{escape(text)}</text>'
        )
    return _svg(w, h, "".join(parts), title)


def columns(labels: list[str], series: list[tuple[str, list[int]]], title: str, *, every: int = 1) -> str:
    """Stacked columns: one column per label, one colour (and legend entry) per series."""
    if not labels or not any(any(v) for _, v in series):
        return _empty(title, "No spend yet.")
    w, h, left, bottom = 620, 220, 56, 28
    n = len(labels)
    totals = [sum(s[1][i] for s in series) for i in range(n)]
    top = max(totals) or 1
    cw = (w - left - 8) / n
    plot_h = h - bottom - 24
    parts = [
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 4}" y2="{h - bottom}" class="axis"/>',
        f'<text x="{left - 4}" y="{24 + 4}" text-anchor="end" class="val">{_money(top)}</text>',
        f'<text x="{left - 4}" y="{h - bottom}" text-anchor="end" class="val">$0</text>',
    ]
    for i in range(n):
        x = left + i * cw
        y = float(h - bottom)
        for si, (name, values) in enumerate(series):
            v = values[i]
            if not v:
                continue
            bh = plot_h * v / top
            y -= bh
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(cw - 2, 1):.1f}" height="{bh:.1f}" '
                f'fill="{PALETTE[si % len(PALETTE)]}"><title>{escape(labels[i])} {escape(name)}: {_money(v)}</title></rect>'
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + cw / 2:.1f}" y="{h - bottom + 14}" text-anchor="middle" class="lbl">{escape(labels[i])}</text>'
            )
    if len(series) > 1 or series[0][0]:
        lx = left
        for si, (name, _) in enumerate(series):
            parts.append(
                f'<rect x="{lx}" y="4" width="10" height="10" fill="{PALETTE[si % len(PALETTE)]}"/>'
                f'<text x="{lx + 14}" y="13" class="lbl">{escape(name)}</text>'
            )
            lx += 24 + 7 * len(name)
    return _svg(w, h, "".join(parts), title)


def render(data: dict[str, Any], *, standalone: bool = False) -> str:
    """The SVG of one chart's data (`standalone`: with the XML declaration, for `/charts/NAME.svg`)."""
    svg = _render(data)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + svg if standalone else svg


def _render(data: dict[str, Any]) -> str:
    name = data["name"]
    title = data["title"]
    if name == "daily":
        labels = [d[5:] for d in data["labels"]]
        series = [(s["name"], s["cost_nano"]) for s in data["series"]]
        return columns(labels, series, title, every=5)
    if name == "hourly":
        return columns(data["labels"], [("", data["cost_nano"])], title, every=3)
    if data["metric"] == "tokens":
        items = [(d["key"], int(d["tokens"]), f"{d['tokens']:,} tokens") for d in data["items"]]
    else:
        items = [(d["key"], int(d["cost_nano"]), _money(int(d["cost_nano"]))) for d in data["items"]]
    return hbars(items, title)
