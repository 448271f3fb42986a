"""Progress reporting for the CLI's ``--stream``: a live status line, plain lines, or JSON lines."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Protocol, TextIO

from imagegen import (
    Accepted,
    AttemptFailed,
    AttemptStarted,
    Completed,
    ContentPolicyError,
    GenerationResult,
    Heartbeat,
    ImagegenError,
    ModelFallback,
    Preview,
    StreamEvent,
)

_SPINNER_UNICODE = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_SPINNER_ASCII = "|/-\\"


def event_to_dict(event: StreamEvent, *, preview_path: Path | None = None) -> dict[str, Any]:
    """A JSON-ready dict for one event (``event`` names its kind; images are referenced by path)."""
    if isinstance(event, Accepted):
        return {
            "event": event.kind,
            "generation_id": event.generation_id,
            "seed": event.seed,
            "model": event.model,
            "max_attempts": event.max_attempts,
            "aspect_ratio": event.aspect_ratio,
            "image_size": event.image_size,
            "requested_model": event.requested_model,
            "fallback_reason": event.fallback_reason,
            "fallback_models": list(event.fallback_models),
        }
    if isinstance(event, AttemptStarted):
        return {"event": event.kind, "attempt": event.attempt, "max_attempts": event.max_attempts}
    if isinstance(event, AttemptFailed):
        return {
            "event": event.kind,
            "attempt": event.attempt,
            "code": event.code.name,
            "reason": event.reason,
            "message": event.message,
            "retry_delay": event.retry_delay,
            "will_retry": event.will_retry,
            "stop_reason": event.stop_reason,
        }
    if isinstance(event, ModelFallback):
        return {"event": event.kind, "from_model": event.from_model, "to_model": event.to_model, "reason": event.reason}
    if isinstance(event, Heartbeat):
        return {"event": event.kind, "elapsed": round(event.elapsed, 3)}
    if isinstance(event, Preview):
        return {
            "event": event.kind,
            "index": event.index,
            "path": str(preview_path) if preview_path else None,
            "mime_type": event.image.mime_type,
            "width": event.image.width,
            "height": event.image.height,
        }
    return result_to_dict(event.result)


def result_to_dict(
    result: GenerationResult,
    *,
    path: Path | None = None,
    sidecar: Path | None = None,
    elapsed: float | None = None,
) -> dict[str, Any]:
    """A JSON-ready summary of a result (the ``completed`` event of ``--json``)."""
    data: dict[str, Any] = {
        "event": "completed",
        "path": str(path) if path else None,
        "sidecar": str(sidecar) if sidecar else None,
        "generation_id": result.generation_id,
        "seed": result.seed,
        "width": result.width,
        "height": result.height,
        "mime_type": result.image.mime_type,
        "model": result.model,
        "requested_model": result.requested_model,
        "fallback_reason": result.fallback_reason,
        "model_version": result.model_version,
        "attempts": result.attempts,
        "aspect_ratio": result.aspect_ratio,
        "image_size": result.image_size,
        "finish_reason": result.finish_reason,
        "inference_time": round(result.inference_time, 3),
        "text": result.text,
        "request_id": result.request_id,
    }
    if elapsed is not None:
        data["time"] = round(elapsed, 3)
    return data


def error_to_dict(error: ImagegenError, exit_code: int) -> dict[str, Any]:
    """A JSON-ready description of a failure (the ``error`` event of ``--json``)."""
    data: dict[str, Any] = {
        "event": "error",
        "exit_code": exit_code,
        "error": type(error).__name__,
        "code": error.code.name,
        "reason": error.reason,
        "message": error.message,
        "retry_after": error.retry_after,
        "generation_id": error.generation_id,
        "metadata": error.metadata,
    }
    if isinstance(error, ContentPolicyError):
        data["block_side"] = error.block_side
        data["block_reason"] = error.block_reason
    return data


def describe_event(event: StreamEvent, *, preview_path: Path | None = None) -> str | None:
    """One human line for an event (``None`` for events not worth a line, like heartbeats)."""
    if isinstance(event, Accepted):
        size = f", {event.image_size}" if event.image_size else ""
        return (
            f"accepted: generation {event.generation_id}, model {event.model}, seed {event.seed}, "
            f"{event.aspect_ratio}{size}, up to {event.max_attempts} attempts"
        )
    if isinstance(event, AttemptStarted):
        return f"attempt {event.attempt}/{event.max_attempts} started"
    if isinstance(event, AttemptFailed):
        why = f"{event.code.name} {event.reason}".strip()
        message = event.message if len(event.message) <= 100 else event.message[:97] + "..."
        stop = f" ({event.stop_reason})" if event.stop_reason else ""
        tail = f"; retry in {event.retry_delay:.1f} s" if event.will_retry else f"; giving up{stop}"
        return f"attempt {event.attempt} failed: {why} ({message}){tail}"
    if isinstance(event, ModelFallback):
        return f"{event.from_model} {event.reason.replace('_', ' ')}: falling back to {event.to_model}"
    if isinstance(event, Preview):
        where = f" saved to {preview_path}" if preview_path else ""
        size = f" ({event.image.width}x{event.image.height})" if event.image.width else ""
        return f"preview {event.index}{size}{where}"
    if isinstance(event, Completed):
        r = event.result
        return f"completed: {r.width}x{r.height}, seed {r.seed}, {r.attempts} attempt(s), {r.inference_time:.2f} s"
    return None


class Reporter(Protocol):
    """Receives stream events as they arrive."""

    def event(self, event: StreamEvent, *, preview_path: Path | None = None) -> None:
        """Report one event."""

    def close(self) -> None:
        """Stop reporting (clears any live line)."""


class JsonReporter:
    """One JSON object per line for every event except ``completed`` (the CLI prints that one itself)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def event(self, event: StreamEvent, *, preview_path: Path | None = None) -> None:
        """Print the event as JSON."""
        if isinstance(event, Completed):
            return
        print(json.dumps(event_to_dict(event, preview_path=preview_path)), file=self._out, flush=True)

    def close(self) -> None:
        """Nothing to clean up."""


class PlainReporter:
    """Plain progress lines, for logs and pipes."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def event(self, event: StreamEvent, *, preview_path: Path | None = None) -> None:
        """Print a line for the event, if it merits one."""
        if isinstance(event, Completed):
            return
        line = describe_event(event, preview_path=preview_path)
        if line:
            print(line, file=self._out, flush=True)

    def close(self) -> None:
        """Nothing to clean up."""


class LiveReporter:
    """A single status line redrawn ten times a second: spinner, elapsed time, attempt, retry countdown.

    Lasting events (failed attempts, saved previews) are printed above the line.
    """

    def __init__(self, out: TextIO, *, interval: float = 0.1) -> None:
        self._out = out
        self._interval = interval
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._status = "connecting"
        self._attempt = ""
        self._retry_until: float | None = None
        self._retry_why = ""
        self._frame = 0
        encoding = (getattr(out, "encoding", None) or "ascii").lower()
        self._spinner = _SPINNER_UNICODE if "utf" in encoding else _SPINNER_ASCII
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imagegen-progress", daemon=True)
        self._thread.start()

    def _line(self) -> str:
        now = time.monotonic()
        spin = self._spinner[self._frame % len(self._spinner)]
        parts = [spin, f"{now - self._start:5.1f}s"]
        if self._attempt:
            parts.append(self._attempt)
        if self._retry_until is not None and now < self._retry_until:
            parts.append(f"retry in {self._retry_until - now:.1f} s because {self._retry_why}")
        else:
            parts.append(self._status)
        return "  ".join(parts)

    def _draw(self) -> None:
        self._out.write("\r\x1b[2K" + self._line())
        self._out.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                self._frame += 1
                self._draw()

    def _print_above(self, text: str) -> None:
        self._out.write("\r\x1b[2K" + text + "\n")
        self._draw()

    def event(self, event: StreamEvent, *, preview_path: Path | None = None) -> None:
        """Update the status line (and print lasting events above it)."""
        with self._lock:
            if isinstance(event, Accepted):
                self._status = f"accepted ({event.model}, seed {event.seed})"
            elif isinstance(event, AttemptStarted):
                self._attempt = f"attempt {event.attempt}/{event.max_attempts}"
                self._retry_until = None
                self._status = "generating"
            elif isinstance(event, AttemptFailed):
                line = describe_event(event)
                if event.will_retry:
                    self._retry_until = time.monotonic() + event.retry_delay
                    self._retry_why = event.code.name + (f" ({event.reason})" if event.reason else "")
                if line:
                    self._print_above(line)
            elif isinstance(event, ModelFallback):
                self._attempt = ""
                self._status = f"falling back to {event.to_model}"
                line = describe_event(event)
                if line:
                    self._print_above(line)
            elif isinstance(event, Preview):
                self._status = f"preview {event.index}"
                line = describe_event(event, preview_path=preview_path)
                if line:
                    self._print_above(line)
            elif isinstance(event, Completed):
                self._status = "done"
            self._draw()

    def close(self) -> None:
        """Stop the redraw thread and clear the status line."""
        self._stop.set()
        self._thread.join(timeout=1.0)
        with self._lock:
            self._out.write("\r\x1b[2K")
            self._out.flush()


def make_reporter(out: TextIO, *, json_lines: bool, live: bool | None = None) -> Reporter:
    """JSON lines with ``json_lines``; a live status line when ``out`` is a terminal; plain lines otherwise."""
    if json_lines:
        return JsonReporter(out)
    if live is None:
        isatty = getattr(out, "isatty", None)
        live = bool(isatty and isatty())
    return LiveReporter(out) if live else PlainReporter(out)
