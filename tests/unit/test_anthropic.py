"""Anthropic as a provider type, in pure parts: what its documented errors mean (`classify`), a
stream's first event (`FirstEvent`), where requests go and how the key travels (`providers`),
and the surface a request is on."""

from __future__ import annotations

import orjson
import pytest

from llmgateway import providers
from llmgateway.config.settings import AnthropicProvider, ModelSettings
from llmgateway.core.classify import classify
from llmgateway.core.outcomes import Blame, ErrorReason
from llmgateway.core.stream_commit import Decision, FirstEvent, outcome_of_peek
from llmgateway.providers import anthropic
from llmgateway.providers.routes import shape_of, surface_of, tables
from llmgateway.testing import anthropic_wire

R = ErrorReason

CLAUDE = AnthropicProvider(
    provider_type="anthropic",
    keys_path="keys/claude",
    api_base_url="https://api.anthropic.com/v1",
    default_model="claude-sonnet-4-5",
    models={"claude-sonnet-4-5": {"endpoint_suffix": "/messages"}},
)


def error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


NO_CREDIT = error("invalid_request_error", anthropic_wire.NO_CREDIT)
TOO_LONG = error("invalid_request_error", "prompt is too long: 212345 tokens > 200000 maximum")


# --- classify: every documented error ------------------------------------------------------

ROWS = [
    (401, error("authentication_error", "invalid x-api-key"), R.INVALID_KEY, Blame.KEY),
    (
        403,
        error("permission_error", "Your API key does not have permission"),
        R.NO_ACCESS,
        Blame.KEY,
    ),
    (429, error("rate_limit_error", "Number of requests has exceeded"), R.RATE_LIMITED, Blame.KEY),
    (402, error("billing_error", "Billing issue"), R.NO_QUOTA, Blame.KEY),
    (400, NO_CREDIT, R.NO_QUOTA, Blame.KEY),
    (529, error("overloaded_error", "Overloaded"), R.OVERLOADED, Blame.PROVIDER),
    (500, error("api_error", "Internal server error"), R.SERVER_ERROR, Blame.PROVIDER),
    (
        413,
        error("request_too_large", "Request exceeds the maximum size"),
        R.BAD_REQUEST,
        Blame.CLIENT,
    ),
    (400, TOO_LONG, R.CONTEXT_LENGTH, Blame.CLIENT),
    (
        400,
        error(
            "invalid_request_error", "input length and `max_tokens` exceed context limit: 1 + 2 > 3"
        ),
        R.CONTEXT_LENGTH,
        Blame.CLIENT,
    ),
    (404, error("not_found_error", "model: claude-nonexistent"), R.NO_MODEL, Blame.CLIENT),
    (404, error("not_found_error", "File not found"), R.BAD_REQUEST, Blame.CLIENT),
    (400, error("invalid_request_error", "messages: Field required"), R.BAD_REQUEST, Blame.CLIENT),
    (504, error("timeout_error", "Request timed out"), R.TIMEOUT, Blame.PROVIDER),
]


@pytest.mark.parametrize(("status", "body", "reason", "blame"), ROWS)
def test_documented_errors(status: int, body: bytes, reason: ErrorReason, blame: Blame) -> None:
    outcome = classify(CLAUDE, status, {}, body)
    assert (outcome.reason, outcome.blame) == (reason, blame)


def test_a_429_names_its_wait_in_retry_after() -> None:
    body = error("rate_limit_error", "slow down")
    outcome = classify(CLAUDE, 429, {"retry-after": "17"}, body)
    assert outcome.reason is R.RATE_LIMITED
    assert outcome.retry_after == 17


def test_an_overload_is_never_the_keys_fault() -> None:
    outcome = classify(CLAUDE, 529, {"retry-after": "3"}, error("overloaded_error", "Overloaded"))
    assert outcome.blame is Blame.PROVIDER
    assert outcome.reason.is_retryable if outcome.reason else False


def test_a_401_that_is_not_anthropics_word_on_the_key_is_only_doubted() -> None:
    assert classify(CLAUDE, 401, {}, b"<html>nope</html>").reason is R.AUTH_REFUSED
    # the probe's own answer decides: a 401 there is the key
    assert classify(CLAUDE, 401, {}, b"<html>nope</html>", probe=True).reason is R.INVALID_KEY


def test_a_403_about_something_else_is_the_clients() -> None:
    assert classify(CLAUDE, 403, {}, b'{"error": "blocked"}').reason is R.FORBIDDEN


def test_the_credit_message_counts_only_from_its_start() -> None:
    quoted = error("invalid_request_error", f"bad input: {anthropic_wire.NO_CREDIT}")
    assert classify(CLAUDE, 400, {}, quoted).reason is R.BAD_REQUEST


def test_probe_answers() -> None:
    assert classify(CLAUDE, 404, {}, b"{}", probe=True).reason is R.NO_MODEL
    assert classify(CLAUDE, 400, {}, NO_CREDIT, probe=True).reason is R.NO_QUOTA
    assert classify(CLAUDE, 400, {}, error("invalid_request_error", "x"), probe=True).reason is (
        R.INVALID_KEY
    )


# --- streams ----------------------------------------------------------------------------------


def peek(*chunks: bytes, end: bool = False) -> Decision:
    first = FirstEvent()
    decided = Decision.NEED_MORE
    for chunk in chunks:
        decided = first.feed(chunk).decision
    return first.end().decision if end else decided


def test_message_start_and_ping_hold_the_stream_until_output() -> None:
    events = anthropic_wire.message_events("claude-sonnet-4-5", 3)
    assert peek(events[0]) is Decision.NEED_MORE  # message_start: no output yet
    assert peek(events[0], events[2]) is Decision.NEED_MORE  # ping
    assert peek(*events[:2]) is Decision.COMMIT  # content_block_start


@pytest.mark.parametrize(
    ("status", "reason"),
    [(529, R.OVERLOADED), (500, R.SERVER_ERROR), (429, R.RATE_LIMITED), (400, R.BAD_REQUEST)],
)
def test_an_error_event_after_message_start_is_decided_as_an_error(
    status: int, reason: ErrorReason
) -> None:
    start = anthropic_wire.message_events("claude-sonnet-4-5", 3)[0]
    first = FirstEvent()
    first.feed(start)
    decided = first.feed(anthropic_wire.stream_error_event(status))
    assert decided.decision is Decision.ERROR
    assert decided.status == status
    assert outcome_of_peek(CLAUDE, decided).reason is reason


def test_an_error_event_split_anywhere_decides_the_same() -> None:
    event = anthropic_wire.stream_error_event(529)
    for cut in range(1, len(event)):
        first = FirstEvent()
        first.feed(event[:cut])
        assert first.feed(event[cut:]).decision is Decision.ERROR


# --- adapters ---------------------------------------------------------------------------------


def test_native_requests_carry_the_key_as_x_api_key_and_a_version() -> None:
    url = providers.upstream_url(CLAUDE, "anthropic", "/v1/messages", "beta=true")
    assert url == "https://api.anthropic.com/v1/messages?beta=true"
    headers = providers.upstream_headers(CLAUDE, "anthropic", {"anthropic-beta": "b"}, "sk-k")
    assert headers == {
        "anthropic-beta": "b",
        "x-api-key": "sk-k",
        "anthropic-version": "2023-06-01",
    }
    kept = providers.upstream_headers(CLAUDE, "anthropic", {"anthropic-version": "v"}, "sk-k")
    assert kept["anthropic-version"] == "v"


def test_the_openai_format_goes_to_the_openai_endpoint_with_a_bearer_key() -> None:
    url = providers.upstream_url(CLAUDE, "openai", "/v1/chat/completions", "")
    assert url == "https://api.anthropic.com/v1/chat/completions"
    headers = providers.upstream_headers(CLAUDE, "openai", {}, "sk-k")
    assert headers == {"authorization": "Bearer sk-k"}


def test_probes_list_models_and_send_one_token_at_most() -> None:
    auth = providers.auth_probe_request(CLAUDE, "sk-k")
    assert auth.url == "https://api.anthropic.com/v1/models?limit=1000"
    assert auth.headers == {"x-api-key": "sk-k", "anthropic-version": "2023-06-01"}
    probe = providers.probe_request(CLAUDE, "claude-sonnet-4-5", "sk-k")
    assert probe.url == "https://api.anthropic.com/v1/messages"
    assert orjson.loads(probe.body)["max_tokens"] == 1
    assert orjson.loads(probe.body)["model"] == "claude-sonnet-4-5"


def test_a_configured_probe_payload_is_sent() -> None:
    payload = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 2}
    url, body = anthropic.probe_target(
        "https://api.anthropic.com/v1/",
        "m",
        ModelSettings(endpoint_suffix="/messages", test_payload=payload),
    )
    assert url == "https://api.anthropic.com/v1/messages"
    assert orjson.loads(body) == {**payload, "model": "m"}


def test_errors_in_anthropics_shape() -> None:
    body = orjson.loads(providers.error_body("anthropic", 529, "busy", code="x"))
    assert body == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    event = providers.sse_error_event("anthropic", 502, "broke off")
    assert event.startswith(b"event: error\ndata: ")
    assert orjson.loads(event.split(b"data: ", 1)[1])["error"]["type"] == "api_error"


def test_routes_per_surface() -> None:
    routes = tables(CLAUDE)
    assert set(routes) == {"openai", "anthropic"}
    native = routes["anthropic"]
    assert native.match("POST", "/v1/messages") is not None
    assert native.match("POST", "/v1/messages/count_tokens") is not None
    assert native.match("POST", "/v1/chat/completions") is None
    assert native.match("GET", "/v1/models").route.answer == "models"  # type: ignore[union-attr]
    openai = routes["openai"]
    assert openai.match("POST", "/v1/chat/completions") is not None
    assert openai.match("POST", "/v1/messages") is None
    assert openai.match("POST", "/v1/embeddings") is None


def test_the_shape_of_an_answer_before_the_provider_is_known() -> None:
    assert shape_of("anthropic", b"/v1/chat/completions") == "anthropic"
    assert shape_of("openai", b"/v1/messages") == "anthropic"
    assert shape_of("openai", b"/v1beta/models") == "gemini"
    assert shape_of("openai", b"/v1/chat/completions") == "openai"


def test_the_surface_of_a_request() -> None:
    assert surface_of("openai", b"/v1/messages") == "anthropic"  # however the token came
    assert surface_of("anthropic", b"/v1/models") == "anthropic"
    assert surface_of("anthropic", b"/v1/models/claude-x") == "anthropic"
    # Anthropic's OpenAI-compatible endpoint, whichever way the token came
    assert surface_of("anthropic", b"/v1/chat/completions") == "openai"
    assert surface_of("openai", b"/v1/models") == "openai"
    assert surface_of("gemini", b"/v1/models") == "gemini"
