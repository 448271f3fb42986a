"""A local Gemini REST API emulator with fault injection.

It speaks Gemini's exact wire format (unary and SSE ``generateContent``,
errors, thought signatures) on a loopback port, renders deterministic PNGs at
the models' real pixel sizes, and follows test-scoped *scenarios* of faults:

    async with Emulator() as emu:
        flaky = emu.scenario("rate_limit:0.2", "ok")
        # send a prompt containing flaky.marker to emu.base_url with emu.api_key
        assert flaky.stats.received == 2

See :mod:`.steps` for the step vocabulary.
"""

from __future__ import annotations

from .app import DEFAULT_API_KEY, EmulatorState, create_app
from .cli import emulator_main
from .scenarios import SCENARIO_HEADER, Scenario, ScenarioStats
from .server import Emulator
from .signatures import SKIP_SENTINEL, image_signature, text_signature
from .steps import Step, parse_step

__all__ = [
    "DEFAULT_API_KEY",
    "SCENARIO_HEADER",
    "SKIP_SENTINEL",
    "Emulator",
    "EmulatorState",
    "Scenario",
    "ScenarioStats",
    "Step",
    "create_app",
    "emulator_main",
    "image_signature",
    "parse_step",
    "text_signature",
]
