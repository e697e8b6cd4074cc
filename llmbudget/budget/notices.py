"""Budget notices: a warning at each threshold spent money crosses, then the limit alert, once each.

Mixed into `BudgetEnforcer`; the store's `claim_once` keeps two processes (or two batches) from
sending the same notice twice.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from ..alerts import Notice, Notifier
from ..money import format_usd, from_nano
from .booking import Booked
from .counters import CounterStore, Refusal
from .rules import Budget
from .windows import format_reset


def amount_text(b: Budget, value: int) -> str:
    """An amount in a budget's unit: dollars, or tokens."""
    return format_usd(from_nano(value), 4) if b.unit == "usd" else f"{value:,} tokens"


class BudgetNotices:
    """Part of `BudgetEnforcer`: threshold warnings and the limit alert."""

    # set by BudgetEnforcer
    notifier: Notifier | None
    tz: ZoneInfo
    fallback: str | None
    store: CounterStore

    def _check_warnings(
        self, booked: list[Booked], totals: dict[str, tuple[int, int]], *, exhausted: bool = False
    ) -> None:
        """Warnings for thresholds that spent money crossed, in order, then the limit alert.

        The limit alert fires when spent reaches the limit, or (`exhausted`) when spent money alone
        refused a call; never from reservations of calls in flight.
        """
        if self.notifier is None:
            return
        missing = sorted({k for x in booked for k in x.charge.read_keys if k not in totals})
        if missing and not exhausted:  # buckets of a rolling window this batch did not touch
            totals = {**totals, **self.store.totals(missing)}
        for x in booked:
            b = x.budget
            if b.limit <= 0:
                continue
            spent = sum(totals.get(k, (0, 0))[0] for k in x.charge.read_keys)
            for t in (*b.warn, 1.0):
                if t >= 1.0:
                    if spent >= b.limit or exhausted:
                        self._announce_limit(
                            x, Refusal(b.name, spent, 0, b.limit, 0), format_reset(x.window.reset, self.tz)
                        )
                    continue
                if spent < t * b.limit:
                    continue
                if not self.store.claim_once(f"warn|{x.charge.key}|{t}"):
                    continue
                scope = self._scope_text(x)
                reset = format_reset(x.window.reset, self.tz)
                self.notifier.notify(
                    Notice(
                        kind="budget_warning",
                        level="warning",
                        budget=b.name,
                        scope=scope,
                        spent_usd=from_nano(spent) if b.unit == "usd" else None,
                        limit_usd=from_nano(b.limit) if b.unit == "usd" else None,
                        threshold=t,
                        reset=reset,
                        message=(
                            f"Budget '{b.name}'{' for ' + scope if scope else ''} is at {spent / b.limit:.0%}: "
                            f"{amount_text(b, spent)} of {b.describe_limit()} (warning at {t:.0%}); "
                            f"resets {reset}."
                        ),
                    )
                )

    def _announce_limit(self, x: Booked, r: Refusal, reset: str) -> None:
        if self.notifier is None or not self.store.claim_once(f"limit|{x.charge.key}"):
            return
        b = x.budget
        scope = self._scope_text(x)
        what = {
            "alert": "calls continue (action: alert)",
            "fallback": f"calls go to {self.fallback}" if self.fallback else "calls are refused",
            "block": "calls are refused",
            "pause": "the agent is paused",
        }[b.action]
        if b.action == "fallback" and not self.fallback:
            what = "calls are refused"
        self.notifier.notify(
            Notice(
                kind="budget_exhausted",
                level="critical",
                budget=b.name,
                scope=scope,
                spent_usd=from_nano(r.spent) if b.unit == "usd" else None,
                limit_usd=from_nano(b.limit) if b.unit == "usd" else None,
                threshold=1.0,
                reset=reset,
                message=(
                    f"Budget '{b.name}'{' for ' + scope if scope else ''} reached its limit: "
                    f"{amount_text(b, r.spent)} spent"
                    + (f" and {amount_text(b, r.reserved)} reserved by calls in flight" if r.reserved else "")
                    + f" of {b.describe_limit()}; {what} until {reset}."
                ),
            )
        )

    @staticmethod
    def _scope_text(x: Booked) -> str | None:
        value = x.prefix.split("|")[1]
        return None if x.budget.scope == "global" else f"{x.budget.scope} {value}"
