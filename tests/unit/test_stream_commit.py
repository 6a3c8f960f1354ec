"""The first-event detector: real-shaped streams of each provider, split anywhere, decide the
same; the hold is bounded; hostile bytes never raise."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmgateway.config.settings import GeminiProvider, OpenAILikeProvider
from llmgateway.core.outcomes import Blame, ErrorReason
from llmgateway.core.stream_commit import (
    EMPTY_STREAM,
    NEED_MORE,
    PEEK_LIMIT_BYTES,
    Decision,
    FirstEvent,
    Peek,
    outcome_of_peek,
)

R = ErrorReason
D = Decision

OPENAI = OpenAILikeProvider(
    provider_type="openai_like",
    keys_path="keys/openai",
    api_base_url="https://api.openai.com/v1",
    default_model="gpt-4o-mini",
    models={"gpt-4o-mini": {"endpoint_suffix": "/chat/completions"}},
)
GEMINI = GeminiProvider(
    provider_type="gemini",
    keys_path="keys/gemini",
    api_base_url="https://generativelanguage.googleapis.com",
    default_model="gemini-2.5-flash",
    models={"gemini-2.5-flash": {"endpoint_suffix": ":generateContent"}},
)

OPENAI_CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}'
    b"\n\n"
)
GEMINI_CHUNK = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 5},"modelVersion": "gemini-2.5-flash"}\r\n\r\n'
)
OPENAI_ERROR = (
    b'data: {"error": {"message": "The server had an error while processing your request.",'
    b' "type": "server_error", "param": null, "code": null}}\n\n'
)
OPENAI_CONTEXT = (
    b'data: {"error": {"message": "This model\'s maximum context length is 8192 tokens.",'
    b' "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}'
    b"\n\n"
)
GEMINI_ERROR = (
    b'data: {"error": {"code": 429, "message": "Resource has been exhausted.", "status":'
    b' "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",'
    b' "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},'
    b' {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}}\r\n\r\n'
)
GEMINI_UNAVAILABLE = (
    b'data: {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",'
    b' "status": "UNAVAILABLE"}}\r\n\r\n'
)
OPENROUTER_ERROR = (
    b'data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m","provider":"p",'
    b'"error":{"code":502,"message":"Provider returned error"},'
    b'"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n'
)
ANTHROPIC_ERROR = (
    b"event: error\n"
    b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
)
RESPONSES_PREAMBLE = (
    b"event: response.created\n"
    b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1",'
    b'"status":"in_progress","error":null}}\n\n'
    b"event: response.in_progress\n"
    b'data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_1"}}\n\n'
)
RESPONSES_FAILED = (
    b"event: response.failed\n"
    b'data: {"type":"response.failed","sequence_number":2,"response":{"id":"resp_1",'
    b'"status":"failed","error":{"code":"server_error","message":"The model failed."}}}\n\n'
)
RESPONSES_DELTA = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","sequence_number":2,"delta":"Hi"}\n\n'
)
RESPONSES_ERROR = (
    b"event: error\n"
    b'data: {"type":"error","code":"rate_limit_exceeded","message":"Slow down.","param":null,'
    b'"sequence_number":2}\n\n'
)
VLLM_ERROR = (
    b'data: {"error": {"object": "error", "message": "This model\'s maximum context length is 4096'
    b' tokens. However, you requested 5000 tokens.", "type": "BadRequestError", "param": null,'
    b' "code": 400}}\n\n'
)
VLLM_OLD_ERROR = (
    b'data: {"object": "error", "message": "boom", "type": "InternalServerError", "code": 500}\n\n'
)
KEEP_ALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    stream: bytes
    decision: Decision
    status: int | None = None
    reason: ErrorReason | None = None  # outcome_of_peek's, for ERROR
    gemini: bool = False


CASES = [
    Case("openai-data", OPENAI_CHUNK + DONE, D.COMMIT),
    Case("keep-alives-then-data", KEEP_ALIVE * 3 + OPENAI_CHUNK, D.COMMIT),
    Case("openrouter-comments", b": OPENROUTER PROCESSING\n\n" * 2 + OPENAI_CHUNK, D.COMMIT),
    Case("retry-id-lines", b"retry: 3000\nid: 7\n\n" + OPENAI_CHUNK, D.COMMIT),
    Case("gemini-data-crlf", GEMINI_CHUNK * 2, D.COMMIT, gemini=True),
    Case("done-first", DONE, D.EMPTY),
    Case("keep-alives-then-done", KEEP_ALIVE + DONE, D.EMPTY),
    Case("keep-alives-then-eof", KEEP_ALIVE * 4, D.EMPTY),
    Case("nothing", b"", D.EMPTY),
    Case("openai-error", OPENAI_ERROR + DONE, D.ERROR, 500, R.SERVER_ERROR),
    Case("openai-context", KEEP_ALIVE + OPENAI_CONTEXT, D.ERROR, 400, R.CONTEXT_LENGTH),
    Case("gemini-429", GEMINI_ERROR, D.ERROR, 429, R.RATE_LIMITED, gemini=True),
    Case("gemini-503", GEMINI_UNAVAILABLE, D.ERROR, 503, R.OVERLOADED, gemini=True),
    Case("openrouter-error", OPENROUTER_ERROR, D.ERROR, 502, R.SERVER_ERROR),
    Case("anthropic-event-error", ANTHROPIC_ERROR, D.ERROR, 529, R.OVERLOADED),
    Case("event-error-crlf", b"event: error\r\ndata: upstream gone\r\n\r\n", D.ERROR, 500),
    Case("vllm-error", VLLM_ERROR, D.ERROR, 400, R.CONTEXT_LENGTH),
    Case("vllm-old-error", VLLM_OLD_ERROR, D.ERROR, 500, R.SERVER_ERROR),
    Case("responses-failed", RESPONSES_PREAMBLE + RESPONSES_FAILED, D.ERROR, 500, R.SERVER_ERROR),
    Case("responses-error", RESPONSES_PREAMBLE + RESPONSES_ERROR, D.ERROR, 429, R.RATE_LIMITED),
    Case("responses-delta", RESPONSES_PREAMBLE + RESPONSES_DELTA, D.COMMIT),
    Case("responses-preamble-only", RESPONSES_PREAMBLE, D.EMPTY),
    Case("event-error-not-json", b"event: error\ndata: upstream gone\n\n", D.ERROR, 500),
    Case("error-string", b'data: {"error": "Internal error"}\n\n', D.ERROR, 500),
    Case(
        "multi-line-data",
        b'data: {"error":\ndata: {"code": 503, "status": "UNAVAILABLE"}}\n\n',
        D.ERROR,
        503,
        R.OVERLOADED,
    ),
    Case(
        "gemini-compat-array",
        b'data: [{"error": {"code": 400, "message": "The input token count (9) exceeds the maximum'
        b' number of tokens allowed (1).", "status": "INVALID_ARGUMENT"}}]\n\n',
        D.ERROR,
        400,
        R.CONTEXT_LENGTH,
        gemini=True,
    ),
    Case("null-error-is-data", b'data: {"error": null, "choices": []}\n\n', D.COMMIT),
    Case("not-json-data", b"data: hello\n\n", D.COMMIT),
    Case("deeply-nested", b"data: " + b"[" * 1500 + b'{"error": 1}\n\n', D.COMMIT),
    Case("type-but-no-error", b'data: {"type": "message", "x": 1}\n\n', D.COMMIT),
    Case("not-utf8", b'data: {"error": "\xff"}\n\n', D.COMMIT),
    Case("no-space-after-colon", b'data:{"choices":[]}\n\n', D.COMMIT),
    Case("cut-by-eof", b'data: {"choices": []}', D.COMMIT),
    Case("error-cut-by-eof", OPENAI_ERROR.rstrip(b"\n"), D.ERROR, 500, R.SERVER_ERROR),
    Case("cr-only", b": ping\r\r" + b'data: {"choices": []}\r\r', D.COMMIT),
    Case("bom", b"\xef\xbb\xbf" + OPENAI_CHUNK, D.COMMIT),
    Case("bom-then-error", b"\xef\xbb\xbf" + OPENAI_ERROR, D.ERROR, 500),
    Case("error-in-a-comment", b': data: {"error": "x"}\n\n' + OPENAI_CHUNK, D.COMMIT),
    Case("event-without-data", b"event: error\n\n" + OPENAI_CHUNK, D.COMMIT),
    Case("ping-event", b'event: ping\ndata: {"type": "ping"}\n\n' + OPENAI_ERROR, D.ERROR, 500),
    Case("ping-type", b'data: {"type": "ping"}\n\n' + OPENAI_CHUNK, D.COMMIT),
    Case("empty-object-is-data", b"data: {}\n\n" + OPENAI_ERROR, D.COMMIT),
]


def whole(stream: bytes, chunks: list[bytes]) -> tuple[Peek, bytes]:
    """Feed `chunks` until decided, then end; the peek and the bytes not fed."""
    detector = FirstEvent()
    fed = 0
    for chunk in chunks:
        peek = detector.feed(chunk)
        fed += len(chunk)
        if peek.decision is not D.NEED_MORE:
            return peek, stream[fed:]
    return detector.end(), b""


def expect(case: Case, peek: Peek, rest: bytes) -> None:
    assert (peek.decision, peek.status) == (case.decision, case.status)
    assert peek.held + rest == case.stream  # replaying `held` then the rest loses nothing
    if case.decision is D.ERROR:
        outcome = outcome_of_peek(GEMINI if case.gemini else OPENAI, peek)
        if case.reason is not None:
            assert outcome.reason is case.reason
        assert outcome.blame is not Blame.NONE


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_stream_decides(case: Case) -> None:
    peek, rest = whole(case.stream, [case.stream])
    expect(case, peek, rest)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_split_at_every_byte_decides_the_same(case: Case) -> None:
    stream = case.stream
    reference, _ = whole(stream, [stream])
    for cut in range(len(stream) + 1):
        peek, rest = whole(stream, [stream[:cut], stream[cut:]])
        expect(case, peek, rest)
        assert peek.error == reference.error
    peek, rest = whole(stream, [stream[i : i + 1] for i in range(len(stream))])
    expect(case, peek, rest)
    assert peek.error == reference.error


@given(data=st.data(), case=st.sampled_from(CASES))
def test_any_chunking_decides_the_same(data: st.DataObject, case: Case) -> None:
    stream = case.stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    edges = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(edges)]
    peek, rest = whole(stream, chunks)
    expect(case, peek, rest)


def test_it_decides_at_the_end_of_the_first_event() -> None:
    detector = FirstEvent()
    assert detector.feed(KEEP_ALIVE) is NEED_MORE
    assert detector.feed(OPENAI_CHUNK[:-1]) is NEED_MORE  # the blank line not yet come
    peek = detector.feed(b"\n" + OPENAI_ERROR)
    assert peek.decision is D.COMMIT
    assert peek.held == KEEP_ALIVE + OPENAI_CHUNK + OPENAI_ERROR


def test_the_error_body_is_what_classify_reads() -> None:
    peek, _ = whole(OPENAI_CONTEXT, [OPENAI_CONTEXT])
    assert orjson.loads(peek.error)["error"]["code"] == "context_length_exceeded"
    peek, _ = whole(RESPONSES_FAILED, [RESPONSES_FAILED])
    assert orjson.loads(peek.error) == {
        "error": {"code": "server_error", "message": "The model failed."}
    }
    peek, _ = whole(GEMINI_ERROR, [GEMINI_ERROR])
    assert outcome_of_peek(GEMINI, peek).retry_after == 7.0


def test_outcomes_of_commit_and_empty() -> None:
    committed, _ = whole(OPENAI_CHUNK, [OPENAI_CHUNK])
    assert outcome_of_peek(OPENAI, committed).ok
    empty, _ = whole(DONE, [DONE])
    assert outcome_of_peek(OPENAI, empty) is EMPTY_STREAM
    assert (EMPTY_STREAM.reason, EMPTY_STREAM.blame) == (R.SERVER_ERROR, Blame.PROVIDER)


# --- the hold is bounded, and the caller may give up ---------------------------------------------


def test_keep_alives_past_the_limit_commit_undecided() -> None:
    detector = FirstEvent(limit=1024)
    fed = b""
    while True:
        peek = detector.feed(KEEP_ALIVE)
        fed += KEEP_ALIVE
        if peek.decision is not D.NEED_MORE:
            break
    assert peek.decision is D.COMMIT
    assert peek.held == fed
    assert 1024 <= len(fed) < 1024 + len(KEEP_ALIVE)


def test_one_huge_line_commits_at_the_default_limit() -> None:
    detector = FirstEvent()
    assert detector.feed(b"data: " + b"x" * (PEEK_LIMIT_BYTES - 100)) is NEED_MORE
    peek = detector.feed(b"x" * 200)
    assert (peek.decision, len(peek.held)) == (D.COMMIT, PEEK_LIMIT_BYTES + 106)


def test_commit_gives_up_waiting_with_what_came() -> None:
    detector = FirstEvent()
    detector.feed(KEEP_ALIVE + b"data: {")
    peek = detector.commit()
    assert (peek.decision, peek.held) == (D.COMMIT, KEEP_ALIVE + b"data: {")


def test_a_decision_stands() -> None:
    detector = FirstEvent()
    peek = detector.feed(OPENAI_ERROR)
    assert peek.decision is D.ERROR
    assert detector.feed(OPENAI_CHUNK) is peek
    assert detector.end() is peek
    assert detector.commit() is peek
    done = FirstEvent()
    empty = done.end()
    assert empty.decision is D.EMPTY
    assert done.feed(OPENAI_CHUNK) is empty


# --- hostile bytes -------------------------------------------------------------------------------


@given(chunks=st.lists(st.binary(max_size=300), max_size=20), limit=st.integers(1, 2048))
def test_any_bytes_never_raise_and_the_hold_is_bounded(chunks: list[bytes], limit: int) -> None:
    detector = FirstEvent(limit=limit)
    stream = b"".join(chunks)
    fed = 0
    peek = NEED_MORE
    for chunk in chunks:
        peek = detector.feed(chunk)
        fed += len(chunk)
        if peek.decision is not D.NEED_MORE:
            break
        assert fed < limit
    else:
        peek = detector.end()
    assert peek.held == stream[: len(peek.held)]
    outcome_of_peek(OPENAI, peek)
    outcome_of_peek(GEMINI, peek)


@given(
    lines=st.lists(
        st.sampled_from(
            [
                b": keep-alive",
                b"",
                b"retry: 10",
                b"id: 1",
                b"event: error",
                b"event: ping",
                b'data: {"error": {"code": "42"}}',
                b'data: {"error": {"code": true}}',
                b'data: {"choices": []}',
                b"data: [DONE]",
                b"data: [",
                b"data",
                b"\xff\xfe",
            ]
        ),
        max_size=12,
    ),
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_any_event_sequence_decides_the_same_whole_or_byte_by_byte(
    lines: list[bytes], ending: bytes
) -> None:
    stream = b"".join(line + ending for line in lines)
    once, _ = whole(stream, [stream])
    byte, rest = whole(stream, [stream[i : i + 1] for i in range(len(stream))])
    assert (byte.decision, byte.status, byte.error) == (once.decision, once.status, once.error)
    assert byte.held + rest == stream
    if once.decision is D.ERROR:
        assert once.status is not None
        assert 400 <= once.status <= 599


_FIELDS = st.sampled_from(
    [b'"error":{"code":429}', b'"type":"ping"', b'"type":"response.created"', b'"choices":[]']
)


@given(
    fields=st.lists(_FIELDS, max_size=3),
    text=st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
    ending=st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n", b"\ndata: more\n\n", b""]),
    after=st.sampled_from([b"", b"data: [DONE]\n\n", b": keep-alive\n\n"]),
)
def test_a_first_event_decided_at_once_decides_as_line_by_line(
    fields: list[bytes], text: bytes, ending: bytes, after: bytes
) -> None:
    """A whole `data: {…}` first event in the first chunk is decided without reading it line
    by line: the decision, the held bytes and the error are those of the byte-by-byte read."""
    stream = b"data: {" + b",".join(fields) + text + b"}" + ending + after
    at_once, rest = whole(stream, [stream])
    by_byte, rest_by_byte = whole(stream, [stream[i : i + 1] for i in range(len(stream))])
    assert (at_once.decision, at_once.status, at_once.error) == (
        by_byte.decision,
        by_byte.status,
        by_byte.error,
    )
    assert at_once.held + rest == stream == by_byte.held + rest_by_byte
