"""Pure tests of SSE framing of Gemini's streamed answers (:mod:`imagegen_server.gemini.sse`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegen_server.gemini.sse import SSEError, SSEParser


def envelope(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


# ---------------------------------------------------------------------------
# SSE framing
# ---------------------------------------------------------------------------


def _events(*chunks: bytes) -> list[str]:
    parser = SSEParser()
    out: list[str] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out + parser.close()


def test_sse_lf_and_crlf() -> None:
    assert _events(b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n') == ['{"a":1}', '{"b":2}']


def test_sse_multiline_data_is_joined_and_prefix_space_optional() -> None:
    assert _events(b'data: {"a":\ndata:1}\n\n') == ['{"a":\n1}']


def test_sse_last_event_needs_no_blank_line() -> None:
    assert _events(b'data: {"a":1}') == ['{"a":1}']
    assert _events(b'data: {"a":1}\r\n') == ['{"a":1}']


def test_sse_ignores_comments_and_other_fields() -> None:
    assert _events(b": keep-alive\nevent: message\nid: 3\nretry: 10\ndata: {}\n\n\n\n") == ["{}"]


def test_sse_raw_json_error_body_line_by_line() -> None:
    body = json.dumps(envelope(503, "UNAVAILABLE", "overloaded {really}"), indent=2).replace("\n", "\r\n")
    (event,) = _events(body.encode())
    assert json.loads(event)["error"]["message"] == "overloaded {really}"


def test_sse_raw_json_with_escaped_quotes_and_braces_in_strings() -> None:
    body = {"error": {"code": 500, "message": 'a "{[" b \\', "status": "INTERNAL"}}
    text = json.dumps(body, indent=1)
    (event,) = _events(text.encode() + b"\n")
    assert json.loads(event) == body


def test_sse_raw_json_after_data_events() -> None:
    events = _events(b'data: {"a":1}\n\n{"error": {"code": 500,\n "message": "data: x"}}\n')
    assert events[0] == '{"a":1}'
    assert json.loads(events[1])["error"]["message"] == "data: x"


def test_sse_stray_text_is_passed_on_for_the_caller_to_reject() -> None:
    assert _events(b"<html>Bad Gateway</html>\n") == ["<html>Bad Gateway</html>"]


def test_sse_errors() -> None:
    with pytest.raises(SSEError, match="unbalanced"):
        _events(b'{"error": {"code": 500,\n')
    with pytest.raises(SSEError, match="UTF-8"):
        _events(b"data: \xff\xfe\n\n")
    with pytest.raises(SSEError, match="longer"):
        SSEParser(max_event_bytes=10).feed(b"data: 0123456789abcdef")
    with pytest.raises(SSEError, match="larger"):
        SSEParser(max_event_bytes=10).feed(b"data: 012345\ndata: 6789abc\n")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=40), min_size=1, max_size=5),
    st.sampled_from([b"\n", b"\r\n"]),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_sse_chunk_boundaries_do_not_matter(payloads: list[str], eol: bytes, cuts: list[int]) -> None:
    stream = b"".join(b"data: " + json.dumps(p).encode() + eol + eol for p in payloads)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert [json.loads(e) for e in _events(*pieces)] == payloads
