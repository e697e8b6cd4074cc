"""A call's bookings: the budget counters its reservation went to, kept until it settles.

`Booked` is one budget's charge for one call (its window and scope value, to seed and reconcile
the counter and to word notices); `Pending` is an admitted call's bookings until it settles or is
released.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..admission import CallInfo
from .counters import Charge
from .rules import Budget
from .windows import Window


@dataclass(slots=True)
class Booked:
    budget: Budget
    charge: Charge
    window: Window
    prefix: str
    value: str


@dataclass(slots=True)
class Pending:
    booked: list[Booked]
    call: CallInfo
    charges: list[Charge]
