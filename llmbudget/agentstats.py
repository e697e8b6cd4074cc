"""What an agent card says about an agent, as pure functions: colour, cost per request, trend, runaway.

Runaway rule: an agent is flagged when its spend in the last 5 minutes is at least
`RUNAWAY_FACTOR` (5) times its own baseline and at least `RUNAWAY_MIN_USD` ($0.50). The baseline
is the median of its spend in each of the eleven 5-minute slots before that (the rest of the past
hour; idle slots count as $0). So an agent that always spends steadily is never flagged however
much it spends, and one that jumps from a trickle to a torrent is flagged within 5 minutes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

NANO = 1_000_000_000
#: session cost colours: green below $1, yellow $1 to $5, red above $5
YELLOW_FROM_NANO = 1 * NANO
RED_ABOVE_NANO = 5 * NANO
#: cost per request above which an agent is marked high cost
HIGH_COST_NANO = 50_000_000  # $0.05
#: requests the cost-per-request average and trend look at
TREND_WINDOW = 10
#: relative change between the older and newer half of the window counted as flat
FLAT_BAND = 0.10

RUNAWAY_SLOT_US = 5 * 60 * 1_000_000
RUNAWAY_SLOTS = 11
RUNAWAY_FACTOR = 5
RUNAWAY_MIN_NANO = 500_000_000  # $0.50


def cost_level(session_cost_nano: int) -> str:
    """green (< $1), yellow ($1 to $5), red (> $5)."""
    if session_cost_nano > RED_ABOVE_NANO:
        return "red"
    if session_cost_nano >= YELLOW_FROM_NANO:
        return "yellow"
    return "green"


def avg_cost(costs: Sequence[int]) -> int | None:
    """Mean cost per request in nano-USD of the newest TREND_WINDOW costs (oldest first); None if none."""
    window = list(costs)[-TREND_WINDOW:]
    if not window:
        return None
    return sum(window) // len(window)


def trend(costs: Sequence[int]) -> str:
    """rising | falling | flat: the newer half of the last TREND_WINDOW costs (oldest first) against the older."""
    window = list(costs)[-TREND_WINDOW:]
    if len(window) < 2:
        return "flat"
    half = len(window) // 2
    older, newer = window[: len(window) - half], window[len(window) - half :]
    a = sum(older) / len(older)
    b = sum(newer) / len(newer)
    if a == 0:
        return "rising" if b > 0 else "flat"
    change = (b - a) / a
    if change > FLAT_BAND:
        return "rising"
    if change < -FLAT_BAND:
        return "falling"
    return "flat"


ARROWS = {"rising": "↗", "falling": "↘", "flat": "→"}


def runaway(spend: Sequence[tuple[int, int]], now_us: int) -> tuple[bool, int, int]:
    """(flagged, last 5 minutes' spend, baseline) from (ts_us, cost_nano) pairs of the past hour."""
    slots = [0] * (RUNAWAY_SLOTS + 1)
    for ts, cost in spend:
        age = now_us - ts
        if age < 0:
            age = 0
        i = age // RUNAWAY_SLOT_US
        if i <= RUNAWAY_SLOTS:
            slots[int(i)] += cost
    current = slots[0]
    baseline = int(statistics.median(slots[1:]))
    flagged = current >= RUNAWAY_MIN_NANO and current >= RUNAWAY_FACTOR * baseline
    return flagged, current, baseline
