"""Query-parameter checks shared by every JSON API module: one behaviour, one error shape."""

from __future__ import annotations

from collections.abc import Collection

from starlette.requests import Request

from ..errors import ValidationError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def query_params(request: Request, allowed: Collection[str]) -> dict[str, str]:
    """Query parameters as a plain dict; an unknown or repeated one is a 400 naming it."""
    qp = request.query_params
    out: dict[str, str] = {}
    for name in qp:
        if name not in allowed:
            accepted = ", ".join(sorted(allowed)) or "none"
            raise ValidationError(name, f"unknown query parameter; accepted: {accepted}")
        values = qp.getlist(name)
        if len(values) > 1:
            raise ValidationError(name, "given more than once")
        out[name] = values[0]
    return out


def flag(params: dict[str, str], name: str, default: bool = False) -> bool:
    """A boolean query parameter (`1/true/yes/on`, `0/false/no/off`); anything else is a 400 naming it."""
    if name not in params:
        return default
    value = params[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValidationError(name, f"must be true or false, got {params[name]!r}")
