"""Test-scoped scenarios: which step each request gets, and what was seen.

A test registers a scenario (a list of steps) and puts its marker, e.g.
``[emulator:1a2b3c4d]``, anywhere in the prompt, or sends the
``x-emulator-scenario`` header. Request n of that scenario (1-based) gets step
n; past the end of the list the last step repeats. Each scenario counts its
own requests, so parallel tests never see each other's traffic. A marker or
header naming no registered scenario is answered with a 400 that names it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .steps import Step, parse_steps

#: Header that selects a scenario for direct HTTP callers.
SCENARIO_HEADER = "x-emulator-scenario"

#: A marker in prompt text; the id is what :meth:`ScenarioRegistry.create` issued.
MARKER_RE = re.compile(r"\[emulator:([A-Za-z0-9_-]{1,64})\]")


def make_marker(scenario_id: str) -> str:
    """The prompt marker for a scenario id."""
    return f"[emulator:{scenario_id}]"


def strip_markers(text: str) -> str:
    """``text`` without scenario markers (and the blanks they leave at the ends)."""
    return MARKER_RE.sub("", text).strip()


@dataclass(slots=True)
class ScenarioStats:
    """What one scenario (or the unmarked traffic) has seen so far.

    ``received`` counts requests routed here; each one ends as ``completed``
    (the whole response was written), ``aborted`` (the client went away
    first), or ``cut`` (the ``cut_body`` step closed the connection on
    purpose). ``received - completed - aborted - cut`` are still in flight.
    """

    received: int = 0
    completed: int = 0
    aborted: int = 0
    cut: int = 0
    #: The parsed JSON body of each request, in arrival order (``None`` if it
    #: was not JSON). Bounded for the unmarked traffic of a long-running emulator.
    bodies: list[Any] | deque[Any] = field(default_factory=list)
    #: The request path of each request (shows the API version and method used).
    paths: list[str] | deque[str] = field(default_factory=list)

    @property
    def in_flight(self) -> int:
        """Requests received but not finished yet."""
        return self.received - self.completed - self.aborted - self.cut

    def to_json(self, *, include_bodies: bool = True) -> dict[str, Any]:
        """A JSON-ready view, as served by the admin API."""
        out: dict[str, Any] = {
            "received": self.received,
            "completed": self.completed,
            "aborted": self.aborted,
            "cut": self.cut,
            "inFlight": self.in_flight,
            "paths": list(self.paths),
        }
        if include_bodies:
            out["bodies"] = list(self.bodies)
        return out


class Scenario:
    """A registered list of steps plus the stats of the requests that followed it."""

    def __init__(self, scenario_id: str, steps: tuple[Step, ...]) -> None:
        self.id = scenario_id
        #: Put this anywhere in a prompt's text to follow this scenario.
        self.marker = make_marker(scenario_id)
        #: Alternative selection for direct HTTP callers.
        self.header: tuple[str, str] = (SCENARIO_HEADER, scenario_id)
        self.steps = steps
        self.stats = ScenarioStats()

    def __repr__(self) -> str:
        return f"Scenario({self.id!r}, steps={[s.source for s in self.steps]!r})"

    def mark(self, prompt: str) -> str:
        """``prompt`` with this scenario's marker in front."""
        return f"{self.marker} {prompt}"

    def next_step(self) -> Step:
        """Count a received request and return the step it gets."""
        self.stats.received += 1
        return self.steps[min(self.stats.received, len(self.steps)) - 1]

    async def wait_for(self, predicate: Callable[[ScenarioStats], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate(stats)`` holds; raise ``TimeoutError`` after ``timeout`` s.

        Aborts are noticed asynchronously (when the server sees the socket
        close), so tests poll rather than assert right after cancelling.
        """
        deadline = time.monotonic() + timeout
        while not predicate(self.stats):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"scenario {self.id}: condition not met, stats={self.stats.to_json()}")
            await asyncio.sleep(0.01)

    def to_json(self, *, include_bodies: bool = True) -> dict[str, Any]:
        """The admin API's view of this scenario."""
        return {
            "id": self.id,
            "marker": self.marker,
            "steps": [s.source for s in self.steps],
            **self.stats.to_json(include_bodies=include_bodies),
        }


#: How many unmarked request bodies a long-running emulator keeps for inspection.
UNMARKED_HISTORY = 32


class ScenarioRegistry:
    """All scenarios of one emulator, plus counters for unmarked traffic."""

    def __init__(self) -> None:
        self._scenarios: dict[str, Scenario] = {}
        #: Stats of requests that follow no scenario.
        self.unmarked = ScenarioStats(bodies=deque(maxlen=UNMARKED_HISTORY), paths=deque(maxlen=UNMARKED_HISTORY))
        #: Every generate request the emulator received, marked or not.
        self.total_requests = 0

    def create(self, steps: Iterable[str]) -> Scenario:
        """Register a scenario; :class:`ValueError` if a step does not parse."""
        parsed = parse_steps(list(steps))
        scenario_id = secrets.token_hex(4)
        while scenario_id in self._scenarios:
            scenario_id = secrets.token_hex(4)
        scenario = Scenario(scenario_id, parsed)
        self._scenarios[scenario_id] = scenario
        return scenario

    def get(self, scenario_id: str) -> Scenario | None:
        """The scenario with this id, if registered."""
        return self._scenarios.get(scenario_id)

    def remove(self, scenario_id: str) -> bool:
        """Forget a scenario (long-running emulators); True if it existed."""
        return self._scenarios.pop(scenario_id, None) is not None

    def __len__(self) -> int:
        return len(self._scenarios)

    def find_in_texts(self, texts: Iterable[tuple[str, str]]) -> MarkerLookup:
        """The first registered scenario whose marker appears in ``texts`` (``(where, text)`` pairs).

        Markers naming no registered scenario are reported too, so that a typo
        or a scenario of another emulator fails loudly instead of answering ``ok``.
        """
        unknown: list[tuple[str, str]] = []
        for where, text in texts:
            for match in MARKER_RE.finditer(text):
                scenario = self._scenarios.get(match.group(1))
                if scenario is not None:
                    return MarkerLookup(scenario, tuple(unknown))
                unknown.append((where, match.group(0)))
        return MarkerLookup(None, tuple(unknown))


@dataclass(frozen=True, slots=True)
class MarkerLookup:
    """What the scenario markers in a request resolved to."""

    #: The scenario of the first registered marker, newest turn first.
    scenario: Scenario | None
    #: ``(field path, marker)`` of every marker seen before it that names no scenario.
    unknown: tuple[tuple[str, str], ...] = ()
