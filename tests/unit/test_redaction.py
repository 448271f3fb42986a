from __future__ import annotations

import pytest

from imagegen_server.gemini.errors import ErrorKind, FieldViolation, QuotaViolation, UpstreamError
from imagegen_server.gemini.redaction import REDACTED, KeyScrubber
from imagegen_server.gemini.types import InlineImage, Part, UpstreamResult, Usage

KEY = "AIzaSyCANARY-0123456789abcdef"


def _result(**overrides: object) -> UpstreamResult:
    values: dict[str, object] = {
        "image": InlineImage(b"\x89PNG...", "image/png"),
        "width": 1,
        "height": 1,
        "thought_signature": b"sig",
        "text": f"here is your cat, {KEY}",
        "finish_reason": f"STOP {KEY}",
        "usage": Usage(),
        "model_version": f"gemini-3 {KEY}",
        "response_id": KEY,
        "parts": (Part(text=f"text {KEY}"), Part(image=InlineImage(b"img", "image/png"))),
    }
    values.update(overrides)
    return UpstreamResult(**values)  # type: ignore[arg-type]


def test_every_string_of_an_answer_is_scrubbed() -> None:
    clean = KeyScrubber(KEY).answer(_result())
    assert KEY not in repr(clean)
    assert clean.text == f"here is your cat, {REDACTED}"
    assert clean.response_id == REDACTED
    assert clean.parts[0].text == f"text {REDACTED}"
    assert clean.image.data == b"\x89PNG..."


def test_the_key_inside_image_bytes_refuses_the_answer() -> None:
    poisoned = _result(image=InlineImage(b"\x89PNG tEXt " + KEY.encode(), "image/png"))
    with pytest.raises(UpstreamError) as info:
        KeyScrubber(KEY).answer(poisoned, model="m")
    assert info.value.kind is ErrorKind.MALFORMED
    assert KEY not in info.value.message


def test_every_attribute_of_an_error_is_scrubbed() -> None:
    error = UpstreamError(
        ErrorKind.RATE_LIMITED,
        f"quota for {KEY}",
        upstream_status=f"RESOURCE_EXHAUSTED {KEY}",
        upstream_reason=KEY,
        quota_violations=(QuotaViolation(quota_metric=KEY, quota_id=f"PerMinute-{KEY}", description=KEY),),
        field_violations=(FieldViolation(field=KEY, description=f"bad {KEY}"),),
        model_text=KEY,
        block_reason=KEY,
        finish_reason=KEY,
        model=KEY,
    )
    scrubbed = KeyScrubber(KEY).error(error)
    assert scrubbed is error
    assert KEY not in repr(vars(error))
    assert KEY not in str(error)
    assert error.quota_violations[0].quota_id == f"PerMinute-{REDACTED}"


def test_short_placeholder_keys_are_left_alone() -> None:
    result = _result(text="the latest test")
    assert KeyScrubber("test").answer(result) is result
    assert KeyScrubber(None).answer(result) is result
