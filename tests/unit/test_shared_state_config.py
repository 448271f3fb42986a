"""The shared-state settings: flags and environment, refused values, and the URL's password kept out of logs."""

from __future__ import annotations

import pytest

from imagegen_server.config import ConfigError, ServerConfig
from imagegen_server.sharedstate.connection import redacted


def test_the_state_url_and_fail_mode_come_from_flags_or_the_environment() -> None:
    config = ServerConfig.from_args(
        [], env={"IMAGEGEN_STATE_URL": "redis://r:6379/0", "IMAGEGEN_STATE_FAIL_MODE": "closed"}
    )
    assert (config.state_url, config.state_fail_mode) == ("redis://r:6379/0", "closed")
    flagged = ServerConfig.from_args(["--state-url", "redis://other:6379/1", "--state-timeout", "0.2"], env={})
    assert (flagged.state_url, flagged.state_fail_mode, flagged.state_timeout) == ("redis://other:6379/1", "open", 0.2)
    assert ServerConfig.from_args([], env={}).state_url is None, "in-process state by default"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"state_fail_mode": "sometimes"}, "--state-fail-mode"),
        ({"state_url": "http://redis:6379"}, "--state-url"),
        ({"state_url": "redis://r:6379/0", "state_timeout": 0.0}, "--state-timeout"),
    ],
)
def test_unusable_values_are_refused_naming_the_flag(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**overrides).check()  # type: ignore[arg-type]


def test_the_password_never_shows() -> None:
    url = "redis://:s3cret@redis.internal:6379/0"
    assert "s3cret" not in redacted(url) and redacted(url) == "redis://:***@redis.internal:6379/0"
    assert redacted("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
    assert "s3cret" not in repr(ServerConfig(state_url=url))
