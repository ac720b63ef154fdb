"""A load plan of named phases, each a number of closed-loop users for a number of seconds.

Written `baseline:1:10,overload:64:20,eased:1:10` on the command line (`--phases`), run by the
`PhasedShape` of load_tests/shapes.py. Kept free of locust so that tools can build and read a plan
without importing locust (which monkey-patches the process for gevent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Phase:
    name: str
    users: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.name}:{self.users}:{self.seconds:g}"


def parse_phases(text: str) -> list[Phase]:
    """`name:users:seconds,...` -> phases; a ValueError says which part is wrong."""
    phases = []
    for part in filter(None, (part.strip() for part in text.split(","))):
        try:
            name, users, seconds = part.split(":")
            phase = Phase(name.strip(), int(users), float(seconds))
        except ValueError:
            raise ValueError(f"phase {part!r}: expected name:users:seconds, e.g. overload:64:20") from None
        if not phase.name or phase.users < 1 or phase.seconds <= 0:
            raise ValueError(f"phase {part!r}: needs a name, at least 1 user and a positive duration")
        phases.append(phase)
    if not phases:
        raise ValueError("no phases given; e.g. --phases baseline:1:10,overload:64:20,eased:1:10")
    if len({phase.name for phase in phases}) < len(phases):
        raise ValueError(f"phase names must differ: {text}")
    return phases


def format_phases(phases: Sequence[Phase]) -> str:
    return ",".join(str(phase) for phase in phases)


def phase_at(phases: Sequence[Phase], elapsed_s: float) -> Phase | None:
    """The phase running `elapsed_s` seconds into the plan; None once it is over."""
    end = 0.0
    for phase in phases:
        end += phase.seconds
        if elapsed_s < end:
            return phase
    return None


class PhaseClock:
    """Which phase runs, for a shape that locust ticks about once a second; free of locust to be testable.

    `tick(elapsed_s)` gives the users wanted now (None once the plan is over). `current` is the phase
    requests are attributed to: it moves on only when `users_changed()` says locust has started or
    stopped the users for the next phase (users being stopped finish their request in flight first, and
    a request sent meanwhile still belongs to the phase that is ending), or at once when the next phase
    has as many users as the last.
    """

    def __init__(self, phases: Sequence[Phase]):
        self.phases = list(phases)
        self.current: str | None = None
        self._next: Phase | None = None

    def tick(self, elapsed_s: float) -> int | None:
        phase = phase_at(self.phases, elapsed_s)
        if phase is None:
            return None
        if self._next is None or phase.users == self._next.users:
            self.current = phase.name  # no users to start or stop: the phase begins now
        self._next = phase
        return phase.users

    def users_changed(self) -> None:
        if self._next is not None:
            self.current = self._next.name
