"""What the dashboard shows, as JSON-ready dicts: one builder per page or panel, shared by the HTML
pages and the `/api/...` JSON routes (so both always say the same thing).

Totals come from the ledger's rollups (`Ledger.costs`); raw events are read only through an index
and a limit (the last hour's activity, one session's events, the newest refusals).

- `spend.py`: money as exact strings, today's and this month's totals and the month-end forecast;
- `budgets.py`: every budget's progress and run-out forecast, enforcement health, refusals;
- `agents.py`: the live agent cards;
- `overview.py`: the overview page (with the quota panel), put together from the others;
- `sessions.py`: the sessions table, one session's breakdown, their CSV rows;
- `events.py`: the newest events and why one call cost what it did.
"""
