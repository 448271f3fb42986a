from __future__ import annotations

import logging

from imagegen_server import errors
from imagegen_server.errors import FieldViolation
from imagegen_server.logs import SafeLogFilter
from imagegen_server.quoting import cut, escape_controls, shown


def test_escape_controls_makes_one_line() -> None:
    text = "a\nb\r\tc\x1b[31md\x00\x7f\x85e\u2028f\u202eg"
    escaped = escape_controls(text)
    assert escaped == "a\\nb\\r\\tc\\x1b[31md\\x00\\x7f\\x85e\\u2028f\\u202eg"
    assert escaped.isprintable()
    assert escape_controls("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


def test_cut_says_how_long_the_text_was() -> None:
    assert cut("short", 10) == "short"
    long = cut("x" * 20_000, 80)
    assert len(long) == 80
    assert long.endswith("…(20000 chars)")


def test_shown_quotes_escapes_and_cuts() -> None:
    assert shown("gemini-x") == "'gemini-x'"
    assert shown("a\nb") == "'a\\nb'"
    assert len(shown("m" * 20_000)) <= 82


def test_status_texts_are_capped_whoever_wrote_them() -> None:
    huge = "z" * 50_000
    err = errors.build(
        errors.grpc.StatusCode.INVALID_ARGUMENT,
        huge,
        errors.ErrorReason.ERROR_REASON_INVALID_REQUEST,
        {"requestId": "r\n" + huge, "modelText": huge},
        field_violations=[FieldViolation(f"history[{i}].parts", huge) for i in range(5_000)],
    )
    status = err.status
    assert len(status.message) <= errors.MAX_MESSAGE_CHARS
    assert status.ByteSize() < 8 * 1024, "the trailer stays far below gRPC's 16 KiB"
    info = err.error_info()
    assert info.metadata["requestId"].startswith("r\\nzzz")
    assert len(info.metadata["requestId"]) <= errors.MAX_DETAIL_CHARS
    assert len(info.metadata["modelText"]) == 1000


def test_many_violations_are_counted_in_the_message() -> None:
    err = errors.invalid_request(
        [FieldViolation(f"history[{i}].parts", "a turn needs at least one part") for i in range(500)]
    )
    assert err.status.message.startswith("500 invalid fields: history[0].parts, history[1].parts")
    assert "more violations not listed" in err.status.message


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, exc_info)


def test_safe_log_filter_escapes_and_redacts() -> None:
    secret = "AIzaSyCANARY-0123456789"
    record = _record("Generate OK requestId=%s key=%s", "x\nGenerate OK requestId=forged", secret)
    assert SafeLogFilter([secret]).filter(record)
    line = logging.Formatter("%(message)s").format(record)
    assert "\n" not in line
    assert secret not in line
    assert line == "Generate OK requestId=x\\nGenerate OK requestId=forged key=[REDACTED]"


def test_safe_log_filter_redacts_tracebacks_but_keeps_their_lines() -> None:
    secret = "AIzaSyCANARY-0123456789"
    try:
        raise ValueError(f"upstream said {secret}")
    except ValueError as exc:
        record = _record("failed", exc=exc)
    SafeLogFilter([secret]).filter(record)
    text = logging.Formatter("%(message)s").format(record)
    assert "Traceback" in text and "\n" in text
    assert secret not in text
    assert "[REDACTED]" in text


def test_short_placeholder_keys_are_not_redacted() -> None:
    record = _record("latest test")
    SafeLogFilter(["test"]).filter(record)
    assert record.getMessage() == "latest test"
