"""The usage read from answers (`providers.usage`) and the `inject` rewrite and strip
(`core.stream_usage`): every format's fields, Gemini's cumulative counts (the last wins, never
a sum), usage objects cut anywhere by chunk boundaries, and the client's stream given back
byte for byte."""

from __future__ import annotations

import orjson
import pytest

from llmgateway.core.stream_usage import UsageStrip, inject_include_usage
from llmgateway.providers.usage import HEAD, TAIL, Tokens, UsageScan, scan_whole
from llmgateway.testing import anthropic_wire, wire


def streamed(surface: str, chunks: list[bytes]) -> Tokens | None:
    scan = UsageScan(surface)  # type: ignore[arg-type]
    for chunk in chunks:
        scan.feed(chunk)
    return scan.tokens()


def every_split(data: bytes, surface: str) -> set[Tokens | None]:
    """The tokens read when `data` arrives in two chunks, cut at every byte."""
    return {streamed(surface, [data[:cut], data[cut:]]) for cut in range(len(data) + 1)}


def test_openai_chat_with_details() -> None:
    body = orjson.dumps(
        {
            "choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 99}'}}],
            "usage": {
                "prompt_tokens": 120,
                "completion_tokens": 30,
                "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": None},
                "completion_tokens_details": {"reasoning_tokens": 12},
            },
        }
    )
    assert scan_whole("openai", body) == Tokens(120, 30, 100, 12)


def test_embeddings_and_answers_without_usage() -> None:
    assert scan_whole("openai", wire.openai_embeddings("e", 3, False)) == Tokens(15, 0, 0, 0)
    assert scan_whole("openai", b'{"object":"list","data":[]}') is None
    assert scan_whole("openai", b'{"usage":null}') is None
    assert scan_whole("openai", b"") is None


def test_responses_api_whole_and_streamed() -> None:
    usage = {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens": 25,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 65,
    }
    whole = orjson.dumps({"object": "response", "output": [], "usage": usage})
    assert scan_whole("openai", whole) == Tokens(40, 25, 8, 20)
    created = {"type": "response.created", "response": {"usage": None}}
    done = {"type": "response.completed", "response": {"output": [], "usage": usage}}
    events = [
        b"event: response.created\ndata: " + orjson.dumps(created) + b"\n\n",
        b"event: response.completed\ndata: " + orjson.dumps(done) + b"\n\n",
    ]
    assert streamed("openai", events) == Tokens(40, 25, 8, 20)


def test_a_usage_object_nested_two_levels_deep_is_read() -> None:
    # the Responses API's cache writes: input_tokens_details.cache_write_tokens_details
    details = {"cached_tokens": 8, "cache_write_tokens_details": {"ttl_30m_tokens": 4}}
    usage = {"input_tokens": 40, "input_tokens_details": details, "output_tokens": 25}
    whole = orjson.dumps({"object": "response", "output": [], "usage": usage})
    assert scan_whole("openai", whole) == Tokens(40, 25, 8, 0)
    deeper = {"input_tokens": 1, "a": {"b": {"c": {"d": 1}}}}  # three levels: not a usage object
    assert scan_whole("openai", orjson.dumps({"usage": deeper})) is None


def test_gemini_cumulative_stream_takes_the_last_never_the_sum() -> None:
    chunks = list(wire.gemini_chunks("g", 6, sse=True))
    # each chunk reports 5 prompt tokens and the candidates so far: 1, 2, … 6
    assert streamed("gemini", chunks) == Tokens(5, 6, 0, 0)
    assert streamed("gemini", list(wire.gemini_chunks("g", 6, sse=False))) == Tokens(5, 6, 0, 0)


def test_gemini_thoughts_count_as_output_and_cached_content() -> None:
    usage = {
        "promptTokenCount": 50,
        "cachedContentTokenCount": 30,
        "candidatesTokenCount": 5,
        "thoughtsTokenCount": 185,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 50}],
        "totalTokenCount": 240,
    }
    body = orjson.dumps({"candidates": [], "usageMetadata": usage})
    assert scan_whole("gemini", body) == Tokens(50, 190, 30, 185)
    early = orjson.dumps({"usageMetadata": {"promptTokenCount": 50, "totalTokenCount": 50}})
    assert streamed("gemini", [b"data: " + early + b"\n\n", b"data: " + body + b"\n\n"]) == (
        Tokens(50, 190, 30, 185)
    )


def test_anthropic_start_and_cumulative_delta() -> None:
    events = list(anthropic_wire.message_events("claude", 7))
    assert streamed("anthropic", events) == Tokens(5, 7, 0, 0)
    assert scan_whole("anthropic", anthropic_wire.message("claude", 7)) == Tokens(5, 7, 0, 0)
    start = {
        "type": "message_start",
        "message": {
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 200,
                "cache_read_input_tokens": 1000,
                "output_tokens": 1,
            }
        },
    }
    delta = {"type": "message_delta", "usage": {"output_tokens": 42}}
    chunks = [b"data: " + orjson.dumps(start) + b"\n\n", b"data: " + orjson.dumps(delta) + b"\n\n"]
    assert streamed("anthropic", chunks) == Tokens(1210, 42, 1000, 0)


@pytest.mark.parametrize(
    ("surface", "data"),
    [
        ("openai", b"".join(wire.openai_chunks("m", 3, True))),
        ("gemini", b"".join(wire.gemini_chunks("g", 3, sse=True))),
        ("anthropic", b"".join(anthropic_wire.message_events("c", 3))),
    ],
)
def test_a_usage_object_cut_anywhere_is_still_read(surface: str, data: bytes) -> None:
    assert every_split(data, surface) == {streamed(surface, [data])}
    assert streamed(surface, [data]) is not None


def test_byte_by_byte() -> None:
    data = b"".join(wire.openai_chunks("m", 4, True))
    assert streamed("openai", [data[i : i + 1] for i in range(len(data))]) == Tokens(5, 4, 0, 0)


def test_a_stream_without_usage_is_missing() -> None:
    assert streamed("openai", list(wire.openai_chunks("m", 4, False))) is None


def test_an_unfinished_usage_object_holds_bounded_bytes() -> None:
    scan = UsageScan("openai")
    scan.feed(b'data: {"usage":{"prompt_tokens":1,' + b" " * 100_000)
    scan.feed(b" " * 100_000)
    for _ in range(100):
        scan.feed(b" " * 1000)
    held = sum(map(len, scan._head)) + sum(map(len, scan._tail))
    assert held <= HEAD + TAIL + 1000
    assert scan.tokens() is None


def test_long_streams_read_their_first_and_last_usage() -> None:
    """Only the beginning and the end of a long stream are kept: Anthropic's input side from
    `message_start`, its output and OpenAI's usage chunk from the end, whatever is between."""
    middle = [b'data: {"choices":[{"delta":{"content":"word"}}],"usage":null}\n\n'] * 2000
    chunks = list(wire.openai_chunks("m", 3, True))
    assert streamed("openai", chunks[:1] + middle + chunks[1:]) == Tokens(5, 3, 0, 0)
    events = list(anthropic_wire.message_events("c", 3))
    text = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{}}\n\n'
    long = [*events[:2], *[text] * 2000, *events[2:]]
    assert streamed("anthropic", long) == streamed("anthropic", events) == Tokens(5, 3, 0, 0)
    assert streamed("anthropic", [b"".join(long)]) == Tokens(5, 3, 0, 0)


def test_a_long_answer_read_whole_or_in_long_reads() -> None:
    usage = {"prompt_tokens": 9000, "total_tokens": 9000}
    body = orjson.dumps({"data": [{"embedding": [0.5] * 50_000}], "usage": usage})
    assert len(body) > 8 * TAIL
    assert scan_whole("openai", body) == Tokens(9000, 0, 0, 0)
    for size in (1000, TAIL - 1, TAIL + 1, 3 * TAIL, len(body)):
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        assert streamed("openai", pieces) == Tokens(9000, 0, 0, 0)
    done = {"type": "response.completed", "response": {"output": ["x" * 100_000]}}
    event = orjson.dumps(done)[:-2] + b',"usage":{"input_tokens":3,"output_tokens":4}}}'
    assert streamed("openai", [b"data: " + event + b"\n\n"]) == Tokens(3, 4, 0, 0)


def test_inject_splices_after_the_brace() -> None:
    body = b'{"model":"m","stream":true,"messages":[]}'
    injected = inject_include_usage(body)
    assert (
        injected
        == b'{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}'
    )
    assert orjson.loads(injected or b"")["stream_options"] == {"include_usage": True}
    assert inject_include_usage(b'  {  "model": "m"}') == (
        b'  {"stream_options":{"include_usage":true},  "model": "m"}'
    )
    assert inject_include_usage(b"{}") == b'{"stream_options":{"include_usage":true}}'
    assert inject_include_usage(b"[1]") is None


@pytest.mark.parametrize("chunks", [1, 2, 5])
@pytest.mark.parametrize("split", [None, 7, 61, 200])
def test_strip_gives_the_stream_without_usage_back(chunks: int, split: int | None) -> None:
    asked = b"".join(wire.openai_chunks("gpt", chunks, True))
    plain = b"".join(wire.openai_chunks("gpt", chunks, False))
    pieces = (
        [asked] if split is None else [asked[i : i + split] for i in range(0, len(asked), split)]
    )
    strip = UsageStrip()
    out = b"".join(strip.feed(piece) for piece in pieces) + strip.rest()
    assert out == plain


def test_strip_keeps_a_usage_chunk_with_choices() -> None:
    event = b'data: {"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}\n\n'
    assert UsageStrip().feed(event) == event


def test_absurd_counts_are_not_believed() -> None:
    body = b'{"usage":{"prompt_tokens":100000000000000000000000000000,"completion_tokens":-5,'
    body += b'"prompt_tokens_details":{"cached_tokens":"many"},"total_tokens":1e9}}'
    assert scan_whole("openai", body) is None
    body = b'{"usage":{"prompt_tokens":7,"completion_tokens":-5}}'
    assert scan_whole("openai", body) == Tokens(7, 0, 0, 0)


@pytest.mark.parametrize(
    ("surface", "data"),
    [
        ("gemini", b"".join(wire.gemini_chunks("g", 3, sse=True))),
        ("anthropic", b"".join(anthropic_wire.message_events("c", 3))),
    ],
)
def test_byte_by_byte_every_format(surface: str, data: bytes) -> None:
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert streamed(surface, pieces) == streamed(surface, [data])
