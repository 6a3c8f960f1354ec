"""classify(): every row of the outcome table, for both provider types, plus rules and headers."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmgateway.config.settings import (
    ErrorParsing,
    ErrorParsingRule,
    GatewayPolicy,
    GeminiProvider,
    OpenAILikeProvider,
    ProviderSettings,
)
from llmgateway.core.classify import BODY_PREFIX_BYTES, classify, json_path
from llmgateway.core.egress import EgressError
from llmgateway.core.outcomes import Blame, ErrorReason, Outcome
from llmgateway.core.waits import parse_duration, retry_after_of
from llmgateway.transport.errors import classify_exchange

R = ErrorReason


def openai_provider(**policy: Any) -> OpenAILikeProvider:
    return OpenAILikeProvider(
        provider_type="openai_like",
        keys_path="keys/openai",
        api_base_url="https://api.openai.com/v1",
        default_model="gpt-4o-mini",
        models={"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
        **policy,
    )


def gemini_provider(**policy: Any) -> GeminiProvider:
    return GeminiProvider(
        provider_type="gemini",
        keys_path="keys/gemini",
        api_base_url="https://generativelanguage.googleapis.com",
        default_model="gemini-2.5-flash",
        models={"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
        **policy,
    )


OPENAI = openai_provider()
GEMINI = gemini_provider()

OPENAI_QUOTA = (
    b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",'
    b' "param": null, "code": "insufficient_quota"}}'
)
OPENAI_RATE = b'{"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}'
GEMINI_KEY_INVALID = (
    b'{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",'
    b' "status": "INVALID_ARGUMENT", "details": [{"@type":'
    b' "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}'
)


def gemini_429(quota_id: str, delay: str | None = None) -> bytes:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generate_content_requests", "quotaId": quota_id}],
        }
    ]
    if delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    error = {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": details}
    return orjson.dumps({"error": error})


def run(
    provider: ProviderSettings,
    status: int | None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    exc: BaseException | None = None,
    **kwargs: Any,
) -> Outcome:
    return classify_exchange(provider, status, headers or {}, body, exc, **kwargs)


BOTH = pytest.mark.parametrize("provider", [OPENAI, GEMINI], ids=["openai", "gemini"])


# --- status table: the rows both provider types share -----------------------------------------

SHARED_ROWS = [
    (200, R.__members__.get("X"), Blame.NONE),
    (204, None, Blame.NONE),
    (400, R.BAD_REQUEST, Blame.CLIENT),
    (413, R.BAD_REQUEST, Blame.CLIENT),
    (422, R.BAD_REQUEST, Blame.CLIENT),
    (409, R.BAD_REQUEST, Blame.CLIENT),
    # a 401/403 whose body does not say the key is refused: doubted / the client's
    (401, R.AUTH_REFUSED, Blame.KEY),
    (403, R.FORBIDDEN, Blame.CLIENT),
    (402, R.NO_QUOTA, Blame.KEY),
    (429, R.RATE_LIMITED, Blame.KEY),
    (408, R.TIMEOUT, Blame.PROVIDER),
    (500, R.SERVER_ERROR, Blame.PROVIDER),
    (502, R.SERVER_ERROR, Blame.PROVIDER),
    (503, R.OVERLOADED, Blame.PROVIDER),
    (504, R.TIMEOUT, Blame.PROVIDER),
    (529, R.OVERLOADED, Blame.PROVIDER),
    (599, R.SERVER_ERROR, Blame.PROVIDER),
    (302, R.UNKNOWN, Blame.CLIENT),
]


@BOTH
@pytest.mark.parametrize(("status", "reason", "blame"), SHARED_ROWS)
def test_status_rows(
    provider: ProviderSettings, status: int, reason: ErrorReason | None, blame: Blame
) -> None:
    outcome = run(provider, status, b'{"error": {"message": "x"}}')
    assert (outcome.reason, outcome.blame, outcome.status) == (reason, blame, status)
    assert outcome.ok is (reason is None)


@BOTH
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"error": {"code": 404, "message": "Requested entity was not found.",'
        b' "status": "NOT_FOUND"}}',
        b'{"error": {"message": "No such File object: file-abc", "type": "invalid_request_error"}}',
        b"<html>404</html>",
    ],
    ids=["empty", "gemini-entity", "openai-file", "html"],
)
def test_a_404_that_does_not_say_the_model_is_missing_is_the_clients(
    provider: ProviderSettings, body: bytes
) -> None:
    outcome = run(provider, 404, body)
    assert (outcome.reason, outcome.blame) == (R.BAD_REQUEST, Blame.CLIENT)


# --- the model does not exist upstream: no_model, the client's ---------------------------------

OPENAI_NO_MODEL = [
    (
        404,
        b'{"error": {"message": "The model `gpt-9` does not exist or you do not have access to'
        b' it.", "type": "invalid_request_error", "param": null, "code": "model_not_found"}}',
    ),
    (  # older wording, and no code
        404,
        b'{"error": {"message": "The model: `gpt-4` does not exist", "type":'
        b' "invalid_request_error", "param": null, "code": null}}',
    ),
    (  # vLLM, older: the error's fields at the top level
        404,
        b'{"object": "error", "message": "The model `llama-9` does not exist.", "type":'
        b' "NotFoundError", "param": null, "code": 404}',
    ),
    (
        404,
        b'{"error": {"message": "That model does not exist", "type": "invalid_request_error",'
        b' "param": null, "code": null}}',
    ),
    (  # DeepSeek
        400,
        b'{"error": {"message": "Model Not Exist", "type": "invalid_request_error", "param":'
        b' null, "code": "invalid_request_error"}}',
    ),
    (  # OpenRouter
        400,
        b'{"error": {"message": "openai/gpt-9 is not a valid model ID", "code": 400}, "user_id":'
        b' "user_x"}',
    ),
]
GEMINI_NO_MODEL = (
    b'{"error": {"code": 404, "message": "models/gemini-1.0-pro is not found for API version'
    b" v1beta, or is not supported for generateContent. Call ListModels to see the list of"
    b' available models and their supported methods.", "status": "NOT_FOUND"}}'
)
# Gemini's OpenAI-compatible endpoint: the same error in a JSON array
GEMINI_COMPAT_NO_MODEL = (
    b'[{"error": {"code": 404, "message": "models/gemini-x is not found for API version v1main,'
    b' or is not supported for generateContent.", "status": "NOT_FOUND"}}]'
)


@pytest.mark.parametrize(("status", "body"), OPENAI_NO_MODEL)
@pytest.mark.parametrize("probe", [False, True])
def test_openai_like_model_does_not_exist(status: int, body: bytes, probe: bool) -> None:
    outcome = run(OPENAI, status, body, probe=probe)
    assert (outcome.reason, outcome.blame) == (R.NO_MODEL, Blame.CLIENT)


@pytest.mark.parametrize(
    "body", [GEMINI_NO_MODEL, GEMINI_COMPAT_NO_MODEL], ids=["native", "compat"]
)
@pytest.mark.parametrize("probe", [False, True])
def test_gemini_model_does_not_exist(body: bytes, probe: bool) -> None:
    outcome = run(GEMINI, 404, body, probe=probe)
    assert (outcome.reason, outcome.blame) == (R.NO_MODEL, Blame.CLIENT)


def test_a_model_missing_means_nothing_in_the_other_dialect_or_status() -> None:
    assert run(OPENAI, 404, GEMINI_NO_MODEL).reason is R.BAD_REQUEST
    assert run(GEMINI, 400, OPENAI_NO_MODEL[0][1]).reason is R.BAD_REQUEST
    assert run(OPENAI, 400, OPENAI_NO_MODEL[0][1]).reason is R.BAD_REQUEST  # 404's words
    assert run(OPENAI, 500, OPENAI_NO_MODEL[0][1]).reason is R.SERVER_ERROR


def test_a_model_missing_only_from_the_start_of_the_message() -> None:
    """A phrase the upstream quotes from the request is not the upstream's verdict."""
    quoted = (
        b'{"error": {"code": 404, "message": "File files/x not found: models/gemini-x is not'
        b' found for API version v1beta", "status": "NOT_FOUND"}}'
    )
    assert run(GEMINI, 404, quoted).reason is R.BAD_REQUEST
    quoted = b'{"error": {"message": "Unknown field: The model `x` does not exist"}}'
    assert run(OPENAI, 404, quoted).reason is R.BAD_REQUEST
    quoted = b'{"error": {"message": "bad: x is not a valid model ID", "code": 400}}'
    assert run(OPENAI, 400, quoted).reason is R.BAD_REQUEST


@BOTH
def test_probe_404_is_no_model_whatever_the_body(provider: ProviderSettings) -> None:
    """The Keeper's probe names a model it was told exists."""
    assert run(provider, 404, b"<html>404</html>", probe=True).reason is R.NO_MODEL


# --- context length exceeded: context_length, the client's ------------------------------------

OPENAI_CONTEXT = [
    (
        400,
        b'{"error": {"message": "This model\'s maximum context length is 8192 tokens. However,'
        b' your messages resulted in 8227 tokens. Please reduce the length of the messages.",'
        b' "type": "invalid_request_error", "param": "messages", "code":'
        b' "context_length_exceeded"}}',
    ),
    (  # the code alone decides
        400,
        b'{"error": {"message": "Input tokens exceed the configured limit of 272000 tokens.",'
        b' "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded"}}',
    ),
    (  # DeepSeek: no code of its own
        400,
        b'{"error": {"message": "This model\'s maximum context length is 131072 tokens.'
        b" However, you requested 131134 tokens (122942 in the messages, 8192 in the"
        b' completion). Please reduce the length of the messages or completion.", "type":'
        b' "invalid_request_error", "param": null, "code": "invalid_request_error"}}',
    ),
    (  # vLLM, older: the error's fields at the top level
        400,
        b'{"object": "error", "message": "This model\'s maximum context length is 16384 tokens.'
        b" However, you requested 19591 tokens (9591 in the messages, 10000 in the"
        b' completion). Please reduce the length of the messages or completion. None", "type":'
        b' "BadRequestError", "param": null, "code": 400}',
    ),
    (  # vLLM, newer
        400,
        b'{"error": {"message": "This model\'s maximum context length is 4096 tokens. However,'
        b' you requested 5000 tokens.", "type": "BadRequestError", "param": null, "code": 400}}',
    ),
    (  # vLLM answering 413, or with the OpenAI code
        413,
        b'{"error": {"message": "too long", "type": "PayloadTooLarge", "code":'
        b' "context_length_exceeded"}}',
    ),
    (  # OpenRouter
        400,
        b'{"error": {"message": "This endpoint\'s maximum context length is 131072 tokens.'
        b" However, you requested about 138956 tokens (7884 of text input, 131072 in the"
        b' output). Please reduce the length of either one.", "code": 400}}',
    ),
    (  # llama.cpp server
        400,
        b'{"error": {"code": 400, "message": "the request exceeds the available context size,'
        b' try increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 5000,'
        b' "n_ctx": 4096}}',
    ),
    (  # Mistral
        400,
        b'{"object": "error", "message": "Prompt contains 40000 tokens and 0 draft tokens, too'
        b' large for model with 32768 maximum context length", "type": "invalid_request_error",'
        b' "param": null, "code": null}',
    ),
]
GEMINI_CONTEXT = (
    b'{"error": {"code": 400, "message": "The input token count (1200293) exceeds the maximum'
    b' number of tokens allowed (1048576).", "errors": [{"message": "The input token count'
    b' (1200293) exceeds the maximum number of tokens allowed (1048576).", "domain": "global",'
    b' "reason": "badRequest"}], "status": "INVALID_ARGUMENT"}}'
)
GEMINI_COMPAT_CONTEXT = (
    b'[{"error": {"code": 400, "message": "The input token count (81881) exceeds the maximum'
    b' number of tokens allowed (65536).", "status": "INVALID_ARGUMENT"}}]'
)


@pytest.mark.parametrize(("status", "body"), OPENAI_CONTEXT)
@pytest.mark.parametrize("probe", [False, True])
def test_openai_like_context_length(status: int, body: bytes, probe: bool) -> None:
    """Never the key's, not even on a probe (vLLM counts a probe's `max_tokens` in)."""
    outcome = run(OPENAI, status, body, probe=probe)
    assert (outcome.reason, outcome.blame) == (R.CONTEXT_LENGTH, Blame.CLIENT)
    assert not R.CONTEXT_LENGTH.is_retryable


@pytest.mark.parametrize("body", [GEMINI_CONTEXT, GEMINI_COMPAT_CONTEXT], ids=["native", "compat"])
@pytest.mark.parametrize("probe", [False, True])
def test_gemini_context_length(body: bytes, probe: bool) -> None:
    outcome = run(GEMINI, 400, body, probe=probe)
    assert (outcome.reason, outcome.blame) == (R.CONTEXT_LENGTH, Blame.CLIENT)


def test_context_length_needs_a_client_status_and_the_upstreams_own_words() -> None:
    words = OPENAI_CONTEXT[0][1]
    assert run(OPENAI, 500, words).reason is R.SERVER_ERROR  # a 500 is the upstream's
    assert run(OPENAI, 429, words).reason is R.RATE_LIMITED
    assert run(GEMINI, 400, words).reason is R.BAD_REQUEST  # OpenAI's words, to Gemini
    assert run(OPENAI, 400, GEMINI_CONTEXT).reason is R.BAD_REQUEST
    echoed = (
        b'{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid value at'
        b' "contents": The input token count (5) exceeds the maximum number of tokens'
        b' allowed (1)"}}'
    )
    assert run(GEMINI, 400, echoed).reason is R.BAD_REQUEST
    echoed = b'{"error": {"message": "x", "metadata": {"code": "context_length_exceeded"}}}'
    assert run(OPENAI, 400, echoed).reason is R.BAD_REQUEST


def test_a_fast_status_mapping_wins_over_context_length() -> None:
    provider = openai_provider(gateway_policy={"fast_status_mapping": {400: "bad_request"}})
    assert run(provider, 400, OPENAI_CONTEXT[0][1]).reason is R.BAD_REQUEST


# --- probe mode -------------------------------------------------------------------------------


@BOTH
def test_probe_400_blames_the_key(provider: ProviderSettings) -> None:
    outcome = run(provider, 400, b'{"error": {"message": "bad"}}', probe=True)
    assert (outcome.reason, outcome.blame) == (R.INVALID_KEY, Blame.KEY)


@BOTH
def test_probe_404_is_no_model(provider: ProviderSettings) -> None:
    assert run(provider, 404, probe=True).reason is R.NO_MODEL


@BOTH
def test_probe_401_403_blame_the_key_whatever_the_body(provider: ProviderSettings) -> None:
    """The Keeper's probe sends its own known-good request: a refusal is the key's."""
    assert run(provider, 401, b"{}", probe=True).reason is R.INVALID_KEY
    assert run(provider, 403, b"{}", probe=True).reason is R.NO_ACCESS


OPENAI_401_BODIES = [
    b'{"error": {"message": "Incorrect API key provided: sk-...abcd.", "code": "invalid_api_key"}}',
    b'{"error": {"message": "Authentication Fails, Your api key: ****abcd is invalid"}}',
    b'{"error": {"message": "No auth credentials found", "code": 401}}',
    b'{"error": "Unauthorized"}',
    b'{"error": {"message": "User not found.", "code": 401}}',
]


@pytest.mark.parametrize("body", OPENAI_401_BODIES)
def test_openai_401_that_speaks_of_the_key_is_invalid_key(body: bytes) -> None:
    assert run(OPENAI, 401, body).reason is R.INVALID_KEY


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>nope</html>",
        b'{"error": {"message": "You didn\'t provide an API key.", "code": "missing_api_key"}}',
    ],
    ids=["empty", "html", "missing-key"],
)
def test_openai_401_that_does_not_say_why_is_only_doubted(body: bytes) -> None:
    """A key always travels with our request: "no key" or silence cannot condemn it."""
    outcome = run(OPENAI, 401, body)
    assert (outcome.reason, outcome.blame) == (R.AUTH_REFUSED, Blame.KEY)


def test_openai_403_blames_the_key_only_when_its_project_lacks_access() -> None:
    project = b'{"error": {"message": "Project `proj_x` does not have access to model `o3`"}}'
    assert run(OPENAI, 403, project).reason is R.NO_ACCESS
    named = b'{"error": {"message": "No such File object: file-abc", "type": "invalid_request"}}'
    outcome = run(OPENAI, 403, named)
    assert (outcome.reason, outcome.blame) == (R.FORBIDDEN, Blame.CLIENT)


@BOTH
def test_a_401_403_on_a_route_the_operator_added_never_blames_the_key(
    provider: ProviderSettings,
) -> None:
    body = b'{"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}'
    for status in (401, 403):
        outcome = run(provider, status, body, key_route=False)
        assert (outcome.reason, outcome.blame) == (R.FORBIDDEN, Blame.CLIENT)


@BOTH
def test_probe_keeps_other_rows(provider: ProviderSettings) -> None:
    assert run(provider, 429, probe=True).reason is R.RATE_LIMITED
    assert run(provider, 500, probe=True).reason is R.SERVER_ERROR
    assert run(provider, 200, probe=True).ok


# --- bodies: keys, quotas, egress regions ------------------------------------------------------


def test_gemini_api_key_invalid_is_the_key() -> None:
    outcome = run(GEMINI, 400, GEMINI_KEY_INVALID)
    assert (outcome.reason, outcome.blame) == (R.INVALID_KEY, Blame.KEY)


def test_api_key_invalid_means_nothing_to_openai() -> None:
    assert run(OPENAI, 400, GEMINI_KEY_INVALID).reason is R.BAD_REQUEST


def test_gemini_api_key_invalid_in_a_stream_array() -> None:
    wrapped = b"[" + GEMINI_KEY_INVALID + b"]"
    assert run(GEMINI, 400, wrapped).reason is R.INVALID_KEY


def test_a_truncated_or_echoing_body_blames_no_key() -> None:
    """Only the error's own fields count: a body that cannot be read as JSON, or a phrase the
    upstream quotes from the request, says nothing about the key."""
    assert run(GEMINI, 400, GEMINI_KEY_INVALID[:-3]).reason is R.BAD_REQUEST
    echoed = (
        b'{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid JSON payload'
        b' received. Unknown name \\"API key not valid\\": Cannot find field."}}'
    )
    assert run(GEMINI, 400, echoed).reason is R.BAD_REQUEST
    quoted = b'{"error": {"message": "flagged", "metadata": {"code": "invalid_api_key"}}}'
    assert run(OPENAI, 403, quoted).reason is R.FORBIDDEN


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"error": {"code": 403, "message": "The caller does not have permission",'
            b' "status": "PERMISSION_DENIED"}}',
            R.FORBIDDEN,  # about a cached content or file of another project, not the key
        ),
        (
            b'{"error": {"code": 403, "message": "Generative Language API has not been used in'
            b' project 123 before or it is disabled.", "status": "PERMISSION_DENIED",'
            b' "details": [{"reason": "SERVICE_DISABLED"}]}}',
            R.NO_ACCESS,
        ),
        (
            b'{"error": {"code": 403, "message": "Your API key was reported as leaked.",'
            b' "status": "PERMISSION_DENIED"}}',
            R.INVALID_KEY,
        ),
        (
            b'{"error": {"code": 403, "status": "PERMISSION_DENIED", "details": [{"reason":'
            b' "API_KEY_INVALID"}]}}',
            R.INVALID_KEY,
        ),
    ],
    ids=["named-resource", "service-disabled", "leaked", "api-key-invalid"],
)
def test_gemini_403(body: bytes, reason: ErrorReason) -> None:
    outcome = run(GEMINI, 403, body)
    blame = Blame.CLIENT if reason is R.FORBIDDEN else Blame.KEY
    assert (outcome.reason, outcome.blame) == (reason, blame)


def test_openai_insufficient_quota_is_no_quota() -> None:
    outcome = run(OPENAI, 429, OPENAI_QUOTA)
    assert (outcome.reason, outcome.blame) == (R.NO_QUOTA, Blame.KEY)


def test_openai_rate_limit_is_rate_limited() -> None:
    assert run(OPENAI, 429, OPENAI_RATE).reason is R.RATE_LIMITED


@pytest.mark.parametrize(
    ("quota_id", "reason"),
    [
        ("GenerateRequestsPerDayPerProjectPerModel-FreeTier", R.NO_QUOTA),
        ("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", R.RATE_LIMITED),
        ("GenerateContentInputTokensPerModelPerMinute", R.RATE_LIMITED),
    ],
)
def test_gemini_429_per_day_vs_per_minute(quota_id: str, reason: ErrorReason) -> None:
    outcome = run(GEMINI, 429, gemini_429(quota_id))
    assert (outcome.reason, outcome.blame) == (reason, Blame.KEY)


def test_gemini_429_without_details_is_a_rate_limit_not_no_quota() -> None:
    # The original mapped every Gemini 429 to no_quota.
    assert run(GEMINI, 429, b"").reason is R.RATE_LIMITED
    body = b'[{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}]'
    assert run(GEMINI, 429, body).reason is R.RATE_LIMITED


def test_region_refusals_blame_egress_not_the_key() -> None:
    openai_body = b'{"error": {"code": "unsupported_country_region_territory"}}'
    gemini_body = b'{"error": {"code": 400, "message": "User location is not supported"}}'
    assert run(OPENAI, 403, openai_body).blame is Blame.EGRESS
    assert run(GEMINI, 400, gemini_body, probe=True).blame is Blame.EGRESS


# --- retry_after -----------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"Retry-After": "7"}, 7.0),
        ({"RETRY-AFTER": "2.5"}, 2.5),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, 1.0),
        (
            {
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-reset-tokens": "6m0s",
                "x-ratelimit-remaining-tokens": "0",
            },
            360.0,
        ),
        ({"x-ratelimit-reset-requests": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(
    provider: ProviderSettings, headers: dict[str, str], expected: float | None
) -> None:
    outcome = run(provider, 429, b"", headers)
    assert outcome.retry_after == (pytest.approx(expected) if expected is not None else None)


def test_gemini_retry_delay_from_body() -> None:
    body = gemini_429("GenerateRequestsPerMinutePerProjectPerModel", "37s")
    assert run(GEMINI, 429, body).retry_after == 37.0
    body = gemini_429("GenerateRequestsPerMinutePerProjectPerModel", "1.5s")
    assert run(GEMINI, 429, body).retry_after == 1.5
    assert run(GEMINI, 429, body[:-3]).retry_after == 1.5  # truncated prefix


def test_headers_win_over_retry_delay() -> None:
    body = gemini_429("GenerateRequestsPerMinutePerProjectPerModel", "37s")
    assert run(GEMINI, 429, body, {"retry-after": "4"}).retry_after == 4.0


def test_retry_after_http_date_needs_now() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert run(OPENAI, 429, b"", {"retry-after": date}).retry_after is None
    assert run(OPENAI, 429, b"", {"retry-after": date}, now=now).retry_after == 30.0
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert run(OPENAI, 429, b"", {"retry-after": past}, now=now).retry_after == 0.0
    assert run(OPENAI, 429, b"", {"retry-after": "Tue, 99 Foo"}, now=now).retry_after is None


def test_retry_after_on_503_but_not_on_500_or_success() -> None:
    assert run(OPENAI, 503, b"", {"retry-after": "5"}).retry_after == 5.0
    assert run(OPENAI, 500, b"", {"retry-after": "5"}).retry_after is None
    assert run(OPENAI, 200, b"", {"retry-after": "5"}).retry_after is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("", None),
        ("5min", None),
        ("s", None),
        ("1x", None),
        ("-1s", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_of_reads_plain_mappings() -> None:
    assert retry_after_of({"Retry-After-Ms": "100"}, b"") == pytest.approx(0.1)


# --- exceptions ------------------------------------------------------------------------------


def _conn_key() -> aiohttp.client_reqrep.ConnectionKey:
    # ssl=True is aiohttp's default ("ssl:default" in the message); None is no valid value
    return aiohttp.client_reqrep.ConnectionKey("api.example", 443, True, True, None, None, None)


EXCEPTIONS = [
    (
        aiohttp.ClientConnectorError(_conn_key(), ConnectionRefusedError(111, "refused")),
        R.EGRESS_ERROR,
    ),
    (
        aiohttp.ClientConnectorDNSError(_conn_key(), socket.gaierror(-2, "unknown name")),
        R.EGRESS_ERROR,
    ),
    (aiohttp.ClientProxyConnectionError(_conn_key(), OSError(111, "proxy down")), R.EGRESS_ERROR),
    (aiohttp.ClientConnectorSSLError(_conn_key(), ssl.SSLError("handshake")), R.EGRESS_ERROR),
    (
        aiohttp.ClientConnectorCertificateError(_conn_key(), ssl.SSLCertVerificationError("bad")),
        R.EGRESS_ERROR,
    ),
    (aiohttp.ConnectionTimeoutError("connect timeout"), R.EGRESS_ERROR),
    (EgressError("no connection slot within 5.0 s"), R.EGRESS_ERROR),
    (socket.gaierror(-2, "Name or service not known"), R.EGRESS_ERROR),
    (ConnectionRefusedError(111, "refused"), R.EGRESS_ERROR),
    (asyncio.CancelledError(), R.EGRESS_ERROR),
    (RuntimeError("our own bug"), R.EGRESS_ERROR),
    (aiohttp.SocketTimeoutError("read timeout"), R.TIMEOUT),
    (aiohttp.ServerTimeoutError("timeout"), R.TIMEOUT),
    (TimeoutError(), R.TIMEOUT),
    (aiohttp.ServerDisconnectedError(), R.STREAM_DISCONNECT),
    (aiohttp.ClientPayloadError("Response payload is not completed"), R.STREAM_DISCONNECT),
    (ConnectionResetError(104, "reset"), R.STREAM_DISCONNECT),
    (aiohttp.ClientOSError(32, "broken pipe"), R.NETWORK_ERROR),
]


@BOTH
@pytest.mark.parametrize(("exc", "reason"), EXCEPTIONS, ids=lambda v: type(v).__name__)
def test_exceptions(provider: ProviderSettings, exc: BaseException, reason: ErrorReason) -> None:
    outcome = run(provider, None, exc=exc)
    assert outcome.reason is reason
    never_the_key = {R.EGRESS_ERROR: Blame.EGRESS}.get(reason, Blame.PROVIDER)
    assert outcome.blame is never_the_key


def test_exception_wins_over_a_200_status() -> None:
    outcome = run(OPENAI, 200, exc=aiohttp.ClientPayloadError("cut"))
    assert (outcome.reason, outcome.status) == (R.STREAM_DISCONNECT, 200)


def test_no_status_no_exception_is_unknown() -> None:
    assert run(OPENAI, None).reason is R.UNKNOWN


# --- fast_status_mapping and error_parsing ------------------------------------------------------


def test_fast_status_mapping_picks_gateway_or_worker_policy() -> None:
    provider = openai_provider(
        gateway_policy={"fast_status_mapping": {400: "invalid_key", 503: "service_unavailable"}},
        worker_health_policy={"fast_status_mapping": {500: "overloaded"}},
    )
    assert run(provider, 400).reason is R.INVALID_KEY
    assert run(provider, 503, b"", {"retry-after": "3"}).retry_after == 3.0
    assert run(provider, 503).reason is R.SERVICE_UNAVAILABLE
    assert run(provider, 500).reason is R.SERVER_ERROR
    assert run(provider, 500, probe=True).reason is R.OVERLOADED
    assert run(provider, 400, probe=True).reason is R.INVALID_KEY


def test_fast_status_mapping_wins_over_the_body() -> None:
    provider = gemini_provider(gateway_policy={"fast_status_mapping": {400: "bad_request"}})
    assert run(provider, 400, GEMINI_KEY_INVALID).reason is R.BAD_REQUEST


def _rules(*rules: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
    return {"error_parsing": {"enabled": enabled, "rules": list(rules)}}


def test_error_parsing_rules_by_priority() -> None:
    provider = gemini_provider(
        gateway_policy=_rules(
            {
                "status_code": 400,
                "error_path": "error.status",
                "match_pattern": "invalid_argument",
                "map_to": "bad_request",
                "priority": 1,
            },
            {
                "status_code": 400,
                "error_path": "error.details.0.reason",
                "match_pattern": "^API_KEY",
                "map_to": "no_access",
                "priority": 5,
            },
            {
                "status_code": 429,
                "error_path": "error.status",
                "match_pattern": "RESOURCE",
                "map_to": "no_quota",
            },
        )
    )
    assert run(provider, 400, GEMINI_KEY_INVALID).reason is R.NO_ACCESS
    other = b'{"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": []}}'
    assert run(provider, 400, other).reason is R.BAD_REQUEST
    assert run(provider, 400, b"[" + GEMINI_KEY_INVALID + b"]").reason is R.NO_ACCESS
    assert run(provider, 429, gemini_429("PerMinute")).reason is R.NO_QUOTA
    # no rule matches: the provider default applies
    assert run(provider, 400, b'{"error": {"status": "FAILED_PRECONDITION"}}').reason is (
        R.BAD_REQUEST
    )
    assert run(provider, 400, b"not json").reason is R.BAD_REQUEST


def test_error_parsing_disabled_is_ignored() -> None:
    provider = openai_provider(
        gateway_policy=_rules(
            {
                "status_code": 400,
                "error_path": "error.message",
                "match_pattern": ".",
                "map_to": "invalid_key",
            },
            enabled=False,
        )
    )
    assert run(provider, 400, b'{"error": {"message": "x"}}').reason is R.BAD_REQUEST


def test_error_parsing_bad_regex_never_raises() -> None:
    # Settings reject a bad pattern; classify() stays safe even when one slips past them.
    rule = ErrorParsingRule.model_construct(
        status_code=400,
        error_path="error.message",
        match_pattern="(",
        map_to=R.INVALID_KEY,
        priority=0,
        description="",
    )
    policy = GatewayPolicy.model_construct(
        error_parsing=ErrorParsing.model_construct(enabled=True, rules=(rule,))
    )
    provider = OPENAI.model_copy(update={"gateway_policy": policy})
    assert run(provider, 400, b'{"error": {"message": "("}}').reason is R.BAD_REQUEST


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("error.code", "429"),
        ("error.details.0.reason", "R"),
        ("error.details.-1.reason", "R"),
        ("error.details.5.reason", None),
        ("error.details.x", None),
        ("error.missing", None),
        ("error.details", '[{"reason":"R"}]'),
        ("error.code.deeper", None),
    ],
)
def test_json_path(path: str, value: str | None) -> None:
    assert json_path({"error": {"code": 429, "details": [{"reason": "R"}]}}, path) == value


# --- robustness --------------------------------------------------------------------------------

RULED = gemini_provider(
    gateway_policy=_rules(
        {
            "status_code": 400,
            "error_path": "error.details.0.reason",
            "match_pattern": "X",
            "map_to": "invalid_key",
        },
    )
)


@given(
    status=st.one_of(st.none(), st.integers(min_value=-1000, max_value=100_000)),
    headers=st.dictionaries(st.text(max_size=30), st.text(max_size=40), max_size=6),
    body=st.binary(max_size=300),
    probe=st.booleans(),
    now=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    which=st.sampled_from([OPENAI, GEMINI, RULED]),
)
def test_classify_never_raises(
    status: int | None,
    headers: dict[str, str],
    body: bytes,
    probe: bool,
    now: float | None,
    which: ProviderSettings,
) -> None:
    outcome = classify(which, status, headers, body, probe=probe, now=now)
    assert outcome.retry_after is None or outcome.retry_after >= 0


HOSTILE_BODIES = [
    b"x" * (8 * 1024 * 1024),
    b"[" * 200_000,
    b'{"error": ' * 100_000,
    b'{"error": {"message": "' + b"This model's maximum context length is 1" * 200_000 + b'"}}',
    b"\xff\xfe" * 100_000,
    b'{"error": {"code": "context_length_exceeded", "message": "' + b"a" * (64 * 1024) + b'"}}',
]


@BOTH
@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 429])
@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=lambda b: f"{len(b)}:{b[:12]!r}")
def test_hostile_bodies_never_raise_and_only_a_prefix_is_read(
    provider: ProviderSettings, status: int, body: bytes
) -> None:
    outcome = run(provider, status, body)
    assert outcome.reason is not None
    # what lies past the prefix is never read: the verdict is the prefix's
    prefix = body[:BODY_PREFIX_BYTES]
    assert outcome == run(provider, status, prefix)


def test_a_verdict_past_the_prefix_is_not_read() -> None:
    padding = b" " * BODY_PREFIX_BYTES
    assert run(OPENAI, 400, OPENAI_CONTEXT[0][1]).reason is R.CONTEXT_LENGTH
    assert run(OPENAI, 400, padding + OPENAI_CONTEXT[0][1]).reason is R.BAD_REQUEST


@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "retry-after",
                "retry-after-ms",
                "x-ratelimit-reset-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-tokens",
            ]
        ),
        st.text(max_size=40),
    ),
    body=st.binary(max_size=200),
    now=st.one_of(st.none(), st.floats(min_value=-1e12, max_value=1e12)),
)
def test_retry_after_never_raises_never_negative(
    headers: dict[str, str], body: bytes, now: float | None
) -> None:
    seconds = retry_after_of(headers, b'{"retryDelay": "1s"}' + body, now)
    assert seconds is not None
    assert seconds >= 0
