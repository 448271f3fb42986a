"""The tokens file and the authenticator's decisions, without a server."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from imagegen_server.auth import Authenticator, Quota, TokensFile, TokensFileError, parse_tokens
from imagegen_server.caller import ANONYMOUS
from imagegen_server.errors import ServiceError

GEN = "/imagegen.v1.ImageGenerationService/Generate"
LIST = "/imagegen.v1.ImageGenerationService/ListModels"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


FILE = f"""
[[callers]]
name = "farm"
token_sha256 = ["{sha("t1")}", "{sha("t2")}"]
methods = ["imagegen.v1.ImageGenerationService/Generate*"]
requests_per_minute = 30
burst = 5
max_concurrent = 2

[[callers]]
name = "ops"
token_sha256 = "{sha("t3")}"
"""


def test_parse_entries_tokens_methods_and_quotas() -> None:
    tokens = parse_tokens(FILE, "tokens.toml")
    farm = tokens.by_token("t2")
    assert farm is not None and farm.name == "farm"
    assert farm.quota == Quota(requests_per_minute=30.0, burst=5, max_concurrent=2)
    assert farm.allows(GEN) and farm.allows(GEN + "Stream") and not farm.allows(LIST)
    ops = tokens.by_token("t3")
    assert ops is not None and ops.allows(LIST) and ops.quota == Quota()
    assert tokens.by_token("t4") is None and tokens.by_token("") is None
    assert tokens.caller("farm").label == "farm" and tokens.caller("stranger").label == "other"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[callers]\n", "not valid TOML"),
        ("users = []\n", "unknown top-level key"),
        ('[[callers]]\nname = "a b"\n', "name must be"),
        ('[[callers]]\nname = "a"\ntoken_sha256 = "abc"\n', "64 lowercase hex"),
        (f'[[callers]]\nname = "a"\ntoken_sha256 = "{sha("x").upper()}"\n', "64 lowercase hex"),
        ('[[callers]]\nname = "a"\nmethods = []\n', "methods must be"),
        ('[[callers]]\nname = "a"\nrequests_per_minute = 0\n', "positive"),
        ('[[callers]]\nname = "a"\nmax_concurrent = 1.5\n', "whole number"),
        ('[[callers]]\nname = "a"\ntokens = "x"\n', "unknown key"),
        ('[[callers]]\nname = "a"\n[[callers]]\nname = "a"\n', "more than once"),
        (
            f'[[callers]]\nname = "a"\ntoken_sha256 = "{sha("x")}"\n'
            f'[[callers]]\nname = "b"\ntoken_sha256 = "{sha("x")}"\n',
            "more than one caller",
        ),
    ],
)
def test_invalid_tokens_files_are_named_in_one_line(text: str, message: str) -> None:
    with pytest.raises(TokensFileError, match=message) as caught:
        parse_tokens(text, "tokens.toml")
    assert str(caught.value).startswith("tokens.toml") and "\n" not in str(caught.value)


def test_a_missing_tokens_file_is_a_config_error(tmp_path: object) -> None:
    with pytest.raises(TokensFileError, match="cannot read the tokens file"):
        TokensFile("/nonexistent/tokens.toml")


def _reason(err: pytest.ExceptionInfo[ServiceError]) -> tuple[grpc.StatusCode, str]:
    return err.value.code, err.value.error_info().reason


def test_authenticator_decisions(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "tokens.toml"  # type: ignore[operator]
    path.write_text(FILE)
    auth = Authenticator(TokensFile(str(path)), client_certificates=False)
    assert auth.enabled
    verdict = auth.by_metadata(GEN, [("authorization", "Bearer t1")])
    assert verdict is not None and verdict.caller.name == "farm" and verdict.quota.max_concurrent == 2
    # Health stays open, anonymous.
    assert auth.by_metadata("/grpc.health.v1.Health/Check", []) is not None
    with pytest.raises(ServiceError) as missing:
        auth.by_metadata(GEN, [])
    assert _reason(missing) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING")
    with pytest.raises(ServiceError) as invalid:
        auth.by_metadata(GEN, [("authorization", "bearer nope")])
    assert _reason(invalid) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")
    with pytest.raises(ServiceError) as denied:
        auth.by_metadata(LIST, [("authorization", "Bearer t1")])
    assert _reason(denied) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")
    assert denied.value.error_info().metadata["method"] == LIST


def test_without_tokens_or_client_certificates_everyone_is_anonymous() -> None:
    auth = Authenticator(None, client_certificates=False)
    assert not auth.enabled
    verdict = auth.by_metadata(GEN, [("authorization", "Bearer anything")])
    assert verdict is not None and verdict.caller is ANONYMOUS


def test_certificate_identities_are_cleaned_and_labelled_other() -> None:
    auth = Authenticator(None, client_certificates=True)
    assert auth.by_metadata(GEN, []) is None  # the certificate decides
    verdict = auth.by_certificate(GEN, "evil\nname" + "x" * 500)
    assert verdict.caller.name.startswith("evil?name") and len(verdict.caller.name) == 128
    assert verdict.caller.label == "other"
    with pytest.raises(ServiceError):
        auth.by_certificate(GEN, None)
