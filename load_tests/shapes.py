"""A locust LoadTestShape that runs named phases: load it beside the locustfile.

    locust -f load_tests/locustfile.py,load_tests/shapes.py --headless --host 127.0.0.1:8001 \
        --phases baseline:1:10,overload:64:20,eased:1:10 --name-by-outcome --csv out/overload --json-file out/overload

Each phase sets the number of closed-loop users (all started or stopped at once); the run ends after
the last phase. The current phase's name is `PhasedShape.phase`, which the locustfile puts in its
request names with `--name-by-outcome`, so locust's statistics come out per phase. Run from the
checkout's root (locust puts the working directory on the import path).
"""
from __future__ import annotations

from locust import LoadTestShape, events

from load_tests.phases import PhaseClock, parse_phases

# Users started (or stopped) per second when a phase begins: effectively all at once.
SPAWN_RATE = 1000.0


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    parser.add_argument("--phases", default="", env_var="LOCUST_PHASES",
                        help="name:users:seconds,... e.g. baseline:1:10,overload:64:20,eased:1:10")


class PhasedShape(LoadTestShape):
    """Users per named phase, from `--phases` (the logic is load_tests.phases.PhaseClock's)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock: PhaseClock | None = None

    @property
    def phase(self) -> str | None:
        """The phase requests are attributed to (see PhaseClock.current)."""
        return self.clock.current if self.clock else None

    def tick(self) -> tuple[int, float] | None:
        if self.clock is None:
            environment = self.runner.environment
            self.clock = PhaseClock(parse_phases(environment.parsed_options.phases))
            environment.events.spawning_complete.add_listener(lambda **_: self.clock.users_changed())
        users = self.clock.tick(self.get_run_time())
        return None if users is None else (users, SPAWN_RATE)
