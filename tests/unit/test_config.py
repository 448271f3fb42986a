"""Configuration from flags and environment."""

from __future__ import annotations

import pytest

from imagegen_server.config import ConfigError, ServerConfig


def test_defaults_use_the_embedded_emulator() -> None:
    config = ServerConfig.from_args([], env={})
    assert config.uses_embedded_emulator
    assert config.default_model == "gemini-3.1-flash-image"
    assert config.port == 50051 and config.metrics_port is None


def test_flags_beat_environment_and_key_comes_from_env_only() -> None:
    env = {
        "IMAGEGEN_PORT": "6000",
        "IMAGEGEN_MAX_ATTEMPTS": "5",
        "IMAGEGEN_METRICS_PORT": "9100",
        "IMAGEGEN_STRICT_CONSTRAINTS": "false",
        "IMAGEGEN_ALLOWED_MODELS": "gemini-3-pro-image, gemini-3.1-flash-image",
        "IMAGEGEN_INITIAL_BACKOFF": "0.5",
        "GOOGLE_API_KEY": "k-from-google-env",
    }
    config = ServerConfig.from_args(["--port", "7000", "--upstream-url", "http://127.0.0.1:1"], env=env)
    assert config.port == 7000
    assert config.max_attempts == 5 and config.metrics_port == 9100 and config.initial_backoff == 0.5
    assert config.strict_constraints is False
    assert config.allowed_models == ("gemini-3-pro-image", "gemini-3.1-flash-image")
    assert config.api_key == "k-from-google-env"
    assert not config.uses_embedded_emulator
    assert "k-from-google-env" not in repr(config)


def test_gemini_api_key_wins_over_google_api_key() -> None:
    config = ServerConfig.from_args([], env={"GEMINI_API_KEY": "a", "GOOGLE_API_KEY": "b"})
    assert config.api_key == "a"


def test_there_is_no_api_key_flag() -> None:
    with pytest.raises(SystemExit):
        ServerConfig.from_args(["--api-key", "x"], env={})


def test_a_public_host_needs_tls_and_caller_auth_or_insecure() -> None:
    from imagegen_server.config import ConfigError, is_loopback

    for host in ("127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
        assert ServerConfig(host=host).problems() == []
    for host in ("0.0.0.0", "::", "10.0.0.5", "gateway.internal"):
        assert not is_loopback(host), host
    bare = ServerConfig(host="0.0.0.0")
    with pytest.raises(ConfigError) as refused:
        bare.check()
    message = str(refused.value)
    assert message.startswith("refusing to listen on 0.0.0.0 without TLS (--tls-cert/--tls-key) and caller auth")
    assert "--insecure" in message and "\n" not in message
    tls_only = ServerConfig(host="0.0.0.0", tls_cert="c", tls_key="k")
    assert "without caller authentication" in tls_only.problems()[0]
    tokens_only = ServerConfig(host="0.0.0.0", auth_tokens_file="t.toml")
    assert "without TLS (--tls-cert/--tls-key);" in tokens_only.problems()[0]
    assert ServerConfig(host="0.0.0.0", tls_cert="c", tls_key="k", auth_tokens_file="t").problems() == []
    assert ServerConfig(host="0.0.0.0", tls_cert="c", tls_key="k", tls_client_ca="ca").problems() == []
    assert ServerConfig(host="0.0.0.0", insecure=True).problems() == []
    assert ServerConfig.from_args(["--host", "0.0.0.0", "--insecure"]).insecure
    assert ServerConfig.from_args([], env={"IMAGEGEN_INSECURE": "true"}).insecure
    assert ServerConfig().metrics_host == "127.0.0.1"


def test_fallback_models_parse_in_order_from_flag_and_env() -> None:
    pairs = "gemini-3-pro-image=gemini-3.1-flash-image, gemini-3-pro-image=gemini-2.5-flash-image"
    from_flag = ServerConfig.from_args(["--fallback-models", pairs], env={})
    from_env = ServerConfig.from_args([], env={"IMAGEGEN_FALLBACK_MODELS": pairs})
    assert from_flag == from_env and from_flag.problems() == []
    assert from_flag.fallback_chains() == {"gemini-3-pro-image": ("gemini-3.1-flash-image", "gemini-2.5-flash-image")}
    # Preview aliases name the same models.
    aliased = ServerConfig(fallback_models=("gemini-3-pro-image-preview=gemini-3.1-flash-image-preview",))
    assert aliased.fallback_chains() == {"gemini-3-pro-image": ("gemini-3.1-flash-image",)}


@pytest.mark.parametrize(
    ("pairs", "allowed", "message"),
    [
        (("gemini-3-pro-image",), None, "is not MODEL=FALLBACK"),
        (("gemini-3-pro-image=",), None, "is not MODEL=FALLBACK"),
        (("gemini-3-pro-image=gemini-9-image",), None, "unknown model 'gemini-9-image'"),
        (("gemini-3-pro-image=gemini-3-pro-image-preview",), None, "falls back to itself"),
        (("gemini-3-pro-image=gemini-2.5-flash-image",), ("gemini-3-pro-image",), "is not in --allowed-models"),
    ],
)
def test_fallback_models_are_checked_at_startup(
    pairs: tuple[str, ...], allowed: tuple[str, ...] | None, message: str
) -> None:
    config = ServerConfig(fallback_models=pairs, **({"allowed_models": allowed} if allowed else {}))
    assert len(config.problems()) == 1 and message in config.problems()[0]
    with pytest.raises(ConfigError, match="--fallback-models"):
        config.check()
