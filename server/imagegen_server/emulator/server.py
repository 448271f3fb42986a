"""The :class:`Emulator`: the app served on a real loopback port."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from .app import DEFAULT_API_KEY, EmulatorState, create_app
from .render import Renderer
from .scenarios import Scenario, ScenarioStats

#: Handlers still running at shutdown (long latency steps) get this long.
_SHUTDOWN_TIMEOUT = 1.0
#: Pending connections the listening socket holds (the kernel caps it at somaxconn).
_BACKLOG = 4096


class Emulator:
    """A local Gemini API on loopback, for tests, demos and offline serving.

    Use as ``async with Emulator() as emu:``; point a Gemini client at
    ``emu.base_url`` with ``emu.api_key``. ``emu.scenario("rate_limit:0.1", "ok")``
    scripts the answers of the requests that carry the scenario's marker.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = DEFAULT_API_KEY,
        image_profile: str | None = None,
    ) -> None:
        self.host = host
        #: The key clients must send (``emulator-key`` unless given); None accepts any key, or none.
        self.api_key = api_key
        self._requested_port = port
        # image_profile: "realistic" (Gemini-sized PNGs) or "small"; None reads
        # $IMAGEGEN_EMULATOR_IMAGE_PROFILE, else realistic. ValueError if unknown.
        self._state = EmulatorState(api_key=api_key, renderer=Renderer(image_profile))
        #: The aiohttp application (shared state included), for embedding elsewhere.
        self.app = create_app(api_key=api_key, state=self._state)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (only once started)."""
        if self._port is None:
            raise RuntimeError("Emulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` with no trailing slash and no API version."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def image_profile(self) -> str:
        """``realistic`` (Gemini-sized PNGs) or ``small``."""
        return self._state.renderer.profile

    @property
    def unmarked(self) -> ScenarioStats:
        """Stats of the requests that followed no scenario."""
        return self._state.registry.unmarked

    @property
    def total_requests(self) -> int:
        """Every generate request received, with or without a scenario."""
        return self._state.registry.total_requests

    @property
    def requests_received(self) -> int:
        """Alias of :attr:`total_requests`."""
        return self._state.registry.total_requests

    def scenario(self, *steps: str) -> Scenario:
        """Register a scenario; raise :class:`ValueError` for a step that does not parse."""
        return self._state.registry.create(steps)

    def forget(self, scenario: Scenario) -> bool:
        """Drop a finished scenario (long runs register many); True if it was registered."""
        return self._state.registry.remove(scenario.id)

    def get_scenario(self, scenario_id: str) -> Scenario | None:
        """A scenario registered here or through the admin API."""
        return self._state.registry.get(scenario_id)

    async def start(self) -> None:
        """Bind the port and start serving."""
        if self._runner is not None:
            return
        # handler_cancellation: a client hanging up cancels its handler, which
        # is how aborts are counted during latency and slow bodies.
        runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            # Gemini accepts any number of connections; aiohttp's default backlog
            # of 128 drops the SYNs of a larger burst, which then wait out TCP's
            # 1-3-7-15 s retransmits and make the emulator the bottleneck.
            site = web.TCPSite(runner, self.host, self._requested_port, backlog=_BACKLOG)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
