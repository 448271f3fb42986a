"""The emulator's aiohttp application: Gemini's REST routes plus an admin API.

Gemini routes: ``POST /{v1,v1beta,v1alpha}/{models,tunedModels}/{id}:generateContent``
and ``:streamGenerateContent`` (``?alt=sse`` for SSE, else a JSON array),
``:countTokens``, and ``GET /{version}/models[/{id}]``. Admin routes under ``/emulator/`` let
out-of-process users register scenarios and read their stats.

All state lives in the application (``app[STATE]``), never in module globals,
so several emulators can run in one process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..models import MODELS, ModelSpec, find_model
from . import errors
from .delivery import ClientGone, Delivery, Reply
from .echo import echo_answer, echo_error
from .errors import ApiError
from .outcomes import build_answer, http_fault
from .render import Renderer
from .responses import Answer, count_tokens_body, encode_chunk, encode_json_array, encode_unary
from .scenarios import SCENARIO_HEADER, Scenario, ScenarioRegistry, ScenarioStats
from .steps import DEFAULT_STEP, Step
from .wire import MAX_REQUEST_BYTES, check_size, iter_texts, parse_count_tokens, parse_request

log = logging.getLogger(__name__)

API_VERSIONS = frozenset({"v1", "v1beta", "v1alpha"})
METHODS = frozenset({"generateContent", "streamGenerateContent"})
DEFAULT_API_KEY = "emulator-key"
_JSON = "application/json; charset=UTF-8"


@dataclass(slots=True)
class EmulatorState:
    """Everything one emulator instance knows."""

    #: The key clients must send; None accepts any key, or none (see :func:`_check_key`).
    api_key: str | None
    registry: ScenarioRegistry = field(default_factory=ScenarioRegistry)
    renderer: Renderer = field(default_factory=Renderer)


STATE: web.AppKey[EmulatorState] = web.AppKey("imagegen_emulator_state", EmulatorState)


def create_app(*, api_key: str | None = DEFAULT_API_KEY, state: EmulatorState | None = None) -> web.Application:
    """Build the emulator app; ``api_key=None`` accepts any key, or none.

    To notice clients that hang up mid-request, run it with
    ``handler_cancellation=True`` (``web.AppRunner(app, handler_cancellation=True)``),
    as :class:`~imagegen_server.emulator.Emulator` does.
    """
    # Gemini takes up to 100 MB of inline data; aiohttp's default cap is 1 MB.
    # Past the cap aiohttp stops reading and _generate answers Gemini's JSON 400.
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[STATE] = state or EmulatorState(api_key=api_key)
    app.router.add_get("/emulator/health", _health)
    app.router.add_get("/emulator/stats", _global_stats)
    app.router.add_post("/emulator/scenarios", _create_scenario)
    app.router.add_get("/emulator/scenarios/{id}", _get_scenario)
    app.router.add_delete("/emulator/scenarios/{id}", _delete_scenario)
    app.router.add_get("/{version}/models", _list_models)
    app.router.add_get("/{version}/models/{model}", _get_model)
    app.router.add_post("/{version}/{resource:.+}", _model_method)
    return app


# --- admin API -------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _global_stats(request: web.Request) -> web.Response:
    registry = request.app[STATE].registry
    return _json(
        {
            "totalRequests": registry.total_requests,
            "scenarios": len(registry),
            "unmarked": registry.unmarked.to_json(include_bodies=request.query.get("bodies") != "0"),
        }
    )


async def _create_scenario(request: web.Request) -> web.Response:
    try:
        payload = await request.json()
    except ValueError:
        return _json({"error": 'body must be JSON: {"steps": [...]}'}, 400)
    steps = payload.get("steps", []) if isinstance(payload, dict) else None
    if not isinstance(steps, list):
        return _json({"error": "'steps' must be a list of strings"}, 400)
    try:
        scenario = request.app[STATE].registry.create(steps)
    except ValueError as exc:
        return _json({"error": str(exc)}, 400)
    return _json(
        {"id": scenario.id, "marker": scenario.marker, "header": list(scenario.header), "steps": steps or ["ok"]}
    )


def _scenario_or_404(request: web.Request) -> Scenario:
    scenario = request.app[STATE].registry.get(request.match_info["id"])
    if scenario is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such scenario"}), content_type="application/json")
    return scenario


async def _get_scenario(request: web.Request) -> web.Response:
    scenario = _scenario_or_404(request)
    return _json(scenario.to_json(include_bodies=request.query.get("bodies") != "0"))


async def _delete_scenario(request: web.Request) -> web.Response:
    scenario = _scenario_or_404(request)
    request.app[STATE].registry.remove(scenario.id)
    return web.Response(status=204)


# --- Gemini API ------------------------------------------------------------


def _error_response(error: ApiError) -> web.Response:
    return web.Response(
        status=error.http_status, body=error.body(), headers={**error.headers, "Content-Type": error.content_type}
    )


def _received_key(request: web.Request) -> str:
    """The API key the client sent (header or ``?key=``), or ``""``."""
    return request.headers.get("x-goog-api-key") or request.query.get("key") or ""


def _check_key(request: web.Request) -> None:
    """Gemini's auth: ``x-goog-api-key`` header or ``?key=``; 403 if absent, 400 if wrong.

    An emulator without a key of its own (``api_key=None``, the
    ``imagegen emulator`` default) lets every caller in, so a gateway paired
    with it needs no made-up key; the ``no_key`` and ``bad_key`` steps still
    answer Gemini's auth errors on demand.
    """
    expected = request.app[STATE].api_key
    if expected is None:
        return
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if not key:
        raise errors.no_key()
    if key != expected:
        raise errors.bad_key()


def _model_json(spec: ModelSpec, name: str) -> dict[str, Any]:
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name,
        "inputTokenLimit": 131072 if name.startswith("gemini-3") else 32768,
        "outputTokenLimit": 32768,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1,
        "topP": 0.95,
        "maxTemperature": 2,
    }


async def _list_models(request: web.Request) -> web.Response:
    try:
        _check_key(request)
    except ApiError as error:
        return _error_response(error)
    models = [_model_json(spec, name) for spec in MODELS for name in (spec.name, *spec.aliases)]
    return _json({"models": models})


async def _get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    try:
        _check_key(request)
        spec = find_model(name)
        if spec is None:
            raise errors.model_not_found(f"models/{name}", request.match_info["version"], "get")
    except ApiError as error:
        return _error_response(error)
    return _json(_model_json(spec, name))


@dataclass(frozen=True, slots=True)
class _Target:
    """What the URL asks for."""

    version: str
    resource: str  # "models/X" or "tunedModels/X", as sent
    model: str  # the bare id
    method: str
    sse: bool


def _target(request: web.Request) -> _Target:
    resource, _, method = request.match_info["resource"].rpartition(":")
    kind, _, model = resource.partition("/")
    return _Target(
        version=request.match_info["version"],
        resource=resource or request.match_info["resource"],
        model=model if kind in {"models", "tunedModels"} else "",
        method=method,
        sse=request.query.get("alt") == "sse",
    )


@dataclass(frozen=True, slots=True)
class _Selection:
    """The scenario a request follows, the step it gets, and where it is counted."""

    scenario: Scenario | None
    stats: ScenarioStats
    step: Step
    #: The answer for a header or marker that names no registered scenario.
    unknown: ApiError | None = None


def _select(request: web.Request, body: Any) -> _Selection:
    """The scenario this request follows (header first, then prompt marker).

    A header or marker naming no registered scenario is the test author's
    mistake (a typo, or another emulator's scenario): it is answered with a
    400 naming it rather than a silent ``ok``, and counted as unmarked.
    """
    registry = request.app[STATE].registry
    wanted = request.headers.get(SCENARIO_HEADER)
    unknown: ApiError | None = None
    scenario = registry.get(wanted) if wanted else None
    if wanted and scenario is None:
        unknown = errors.unknown_scenario_header(SCENARIO_HEADER, wanted)
    elif scenario is None:
        found = registry.find_in_texts(iter_texts(body))
        scenario = found.scenario
        if scenario is None and found.unknown:
            where, marker = found.unknown[0]
            unknown = errors.unknown_scenario_marker(marker, where)
    if scenario is not None:
        return _Selection(scenario, scenario.stats, scenario.next_step())
    registry.unmarked.received += 1
    return _Selection(None, registry.unmarked, DEFAULT_STEP, unknown)


async def _model_method(request: web.Request) -> web.StreamResponse:
    """``POST /{version}/models/{id}:{method}``: countTokens, or a generate call."""
    target = _target(request)
    if target.method == "countTokens":
        return await _count_tokens(request, target)
    return await _generate(request, target)


async def _count_tokens(request: web.Request, target: _Target) -> web.Response:
    """``countTokens``: the prompt's token count, as ``usageMetadata`` would report it.

    Not a generation, so it follows no scenario and is not counted in the stats.
    """
    not_found = errors.model_not_found(target.resource, target.version, target.method)
    try:
        if target.version not in API_VERSIONS:
            raise not_found
        _check_key(request)
        spec = find_model(target.model) if target.model else None
        if spec is None:
            raise not_found
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise errors.payload_too_large(MAX_REQUEST_BYTES) from None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise errors.invalid_json("Unexpected token.") from None
        call = parse_count_tokens(body, spec, target.version)
    except ApiError as error:
        return _error_response(error)
    return web.Response(body=encode_unary(count_tokens_body(call)), headers={"Content-Type": _JSON})


async def _generate(request: web.Request, target: _Target) -> web.StreamResponse:
    state = request.app[STATE]
    state.registry.total_requests += 1
    body: Any = None
    json_error: ApiError | None = None
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        # aiohttp's own answer would be a plain-text 413; Gemini answers a
        # JSON 400 (check_size in _answer), so only note the size here.
        size = max(request.content_length or 0, MAX_REQUEST_BYTES + 1)
    else:
        size = len(raw)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            json_error = errors.invalid_json("Unexpected token.")
    selection = _select(request, body)
    scenario, stats, step = selection.scenario, selection.stats, selection.step
    stats.bodies.append(body)
    stats.paths.append(request.path + ("?alt=sse" if target.sse else ""))
    delivery = Delivery(request, step, stats)
    try:
        await delivery.pause(step.latency)
        try:
            if selection.unknown is not None:
                raise selection.unknown
            reply = await _answer(request, target, body, json_error, size, step)
        except ApiError as error:
            if step.echo_key:
                error = echo_error(error, _received_key(request))
            body_bytes = error.body()
            if step.corruption == "bad_json":
                body_bytes = body_bytes[: len(body_bytes) // 2]
            reply = Reply(error.http_status, error.content_type, (body_bytes,), error.headers)
        if step.corruption == "garbage":
            reply = _garbage(reply)
        log.debug(
            "emulator: %s %s scenario=%s step=%s -> %d",
            request.method,
            request.path,
            scenario.id if scenario else "-",
            step.source,
            reply.status,
        )
        return await delivery.send(reply)
    except ClientGone:
        delivery.aborted()
        log.debug("emulator: client went away during %s", request.path)
    except asyncio.CancelledError:
        delivery.aborted()
        raise
    # The client is gone; aiohttp needs a response object, which nobody reads.
    return delivery.response or web.Response(status=499)


async def _answer(
    request: web.Request, target: _Target, body: Any, json_error: ApiError | None, size: int, step: Step
) -> Reply:
    """Decide the answer; raise :class:`ApiError` for every error answer."""
    not_found = errors.model_not_found(target.resource, target.version, target.method or "generateContent")
    if step.is_http_fault:
        raise http_fault(
            step, model=target.model, resource=target.resource, version=target.version, method=target.method
        )
    if target.version not in API_VERSIONS:
        raise not_found
    _check_key(request)
    spec = find_model(target.model) if target.model else None
    if spec is None or target.method not in METHODS:
        raise not_found
    check_size(size)
    if json_error is not None:
        raise json_error
    call = parse_request(body, spec, target.version)
    state = request.app[STATE]
    answer = await build_answer(step, call, spec=spec, model_version=target.model, renderer=state.renderer)
    if step.echo_key:
        echo_answer(answer, _received_key(request))
    return _encode(answer, target, step)


def _garbage(reply: Reply) -> Reply:
    """``reply`` with every byte replaced by random ones (at least 64 per piece), status and headers kept."""
    pieces = tuple(b"\x00\xff" + os.urandom(max(len(p), 64)) for p in reply.pieces)
    return dataclasses.replace(reply, pieces=pieces)


def _encode(answer: Answer, target: _Target, step: Step) -> Reply:
    corrupt = step.corruption == "bad_json"
    if target.method == "generateContent":
        return Reply(200, _JSON, (encode_unary(answer.merged(), corrupt=corrupt),))
    if target.sse:
        last = len(answer.chunks) - 1
        events = tuple(encode_chunk(c, corrupt=corrupt and i == last) for i, c in enumerate(answer.chunks))
        return Reply(200, "text/event-stream", events, chunked=True)
    return Reply(200, _JSON, (encode_json_array(answer.chunks, corrupt=corrupt),), chunked=True)
