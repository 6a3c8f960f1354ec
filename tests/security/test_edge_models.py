"""Only configured models are served, and a request names exactly one, over a real socket
against the real gateway.

An unconfigured model is 404 `model_not_found` in the route's shape, whichever token format is
used; a request without a model is 400 `model_required` (the upstream never picks one); a body
that names `model` twice (in JSON, even escaped, or in a multipart form, or through two
boundaries) or names a model that is not a string is 400: the upstream might read the other
one. No key is taken for any of them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio

from tests.security.edge import (
    GEMINI_TOKEN,
    GENERATE,
    RawResponse,
    Rig,
    gemini_error,
    openai_error,
    running_rig,
)

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="module")]

UNCONFIGURED = "gpt-5-unconfigured"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path_factory.mktemp("models")) as rig:
        yield rig


@pytest.fixture(autouse=True)
def fresh(rig: Rig) -> None:
    rig.reset()


def chat(model: object) -> bytes:
    return orjson.dumps({"model": model, "messages": MESSAGES})


async def test_an_unconfigured_model_is_a_404_in_every_shape(rig: Rig) -> None:
    statuses: list[int] = []
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/images/generations"):
        refused = await rig.send("POST", path, body=chat(UNCONFIGURED))
        openai_error(refused, 404, "model_not_found")
        statuses.append(refused.status)
    # a Gemini token as a Bearer: Gemini's OpenAI-compatible endpoint
    refused = await rig.send(
        "POST", "/v1/chat/completions", body=chat("gemini-9-pro"), token="gemini"
    )
    openai_error(refused, 404, "model_not_found")
    statuses.append(refused.status)
    for version in ("/v1beta", "/v1"):
        for method in ("generateContent", "streamGenerateContent", "countTokens"):
            path = f"{version}/models/gemini-9-pro:{method}"
            refused = await rig.send("POST", path, body=GENERATE, token="gemini", as_google=True)
            gemini_error(refused, 404, "model_not_found")
            statuses.append(refused.status)
        refused = await rig.send(
            "GET", f"{version}/models/gemini-9-pro", token="gemini", as_google=True
        )
        gemini_error(refused, 404, "model_not_found")
    # the Gemini token as `?key=`
    path = f"/v1beta/models/gemini-9-pro:generateContent?key={GEMINI_TOKEN}"
    refused = await rig.send("POST", path, body=GENERATE, token=None)
    gemini_error(refused, 404, "model_not_found")
    assert set(statuses) == {404}
    rig.assert_untouched()


async def test_a_model_name_is_repeated_only_in_part(rig: Rig) -> None:
    refused = await rig.send("POST", "/v1/chat/completions", body=chat("x" * 100_000))
    error = openai_error(refused, 404, "model_not_found")
    assert len(error["message"]) < 300
    rig.assert_untouched()


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"messages": MESSAGES}),
        chat(None),
        chat(""),
        b"{}",
    ],
    ids=["absent", "null", "empty", "empty-object"],
)
async def test_a_request_without_a_model_is_refused(rig: Rig, body: bytes) -> None:
    refused = await rig.send("POST", "/v1/chat/completions", body=body)
    openai_error(refused, 400, "model_required")
    rig.assert_untouched()


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"gpt-4o-mini","messages":[],"model":"gpt-5-unconfigured"}',
        b'{"model":"gpt-5-unconfigured","messages":[],"model":"gpt-4o-mini"}',
        b'{"\\u006dodel":"gpt-5-unconfigured","model":"gpt-4o-mini","messages":[]}',
        b'{"model":"gpt-4o-mini","\\u006Dodel":"gpt-5-unconfigured","messages":[]}',
        b'{"mod\\u0065l":"gpt-5-unconfigured","model":"gpt-4o-mini","messages":[]}',
        b'{"model":"gpt-4o-mini","model":"gpt-4o-mini","messages":[]}',
    ],
    ids=["last-unconfigured", "first-unconfigured", "escaped-first", "escaped-last",
         "escaped-e", "same-twice"],
)  # fmt: skip
async def test_a_json_body_naming_model_twice_is_refused(rig: Rig, body: bytes) -> None:
    refused = await rig.send("POST", "/v1/chat/completions", body=body)
    openai_error(refused, 400, "invalid_request")
    rig.assert_untouched()


async def test_a_deeply_nested_body_naming_model_twice_is_refused_not_a_crash(rig: Rig) -> None:
    """orjson parses up to 1024 levels, the stdlib parser (which counts the keys) fewer."""
    nested = b'{"a":' * 1000 + b'{"model":"x"}' + b"}" * 1000
    body = b'{"model":"gpt-4o-mini","messages":[],"x":' + nested + b"}"
    refused = await rig.send("POST", "/v1/chat/completions", body=body)
    openai_error(refused, 400, "invalid_request")
    rig.assert_untouched()


async def test_a_model_named_once_in_a_nested_object_is_fine(rig: Rig) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[],"metadata":{"model":"anything"}}'
    answered = await rig.send("POST", "/v1/chat/completions", body=body)
    assert answered.status == 200
    assert rig.upstream.seen[0].body == body  # forwarded byte for byte
    rig.assert_intact()


@pytest.mark.parametrize("model", [5, 1.5, True, ["gpt-4o-mini"], {"id": "gpt-4o-mini"}])
async def test_a_model_that_is_not_a_string_is_refused(rig: Rig, model: object) -> None:
    refused = await rig.send("POST", "/v1/chat/completions", body=chat(model))
    openai_error(refused, 400, "invalid_request")
    rig.assert_untouched()


@pytest.mark.parametrize(
    "body", [b'[{"model":"gpt-4o-mini"}]', b'"gpt-4o-mini"', b"model=gpt-4o-mini", b'{"model":'],
    ids=["array", "string", "form", "truncated"],
)  # fmt: skip
async def test_a_body_that_is_not_a_json_object_is_refused(rig: Rig, body: bytes) -> None:
    refused = await rig.send("POST", "/v1/chat/completions", body=body)
    openai_error(refused, 400, "invalid_request")
    rig.assert_untouched()


BOUNDARY = "edge-boundary-7d1e"


def form(*parts: tuple[str, bytes], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body of (content-disposition parameters, value) parts."""
    body = b""
    for disposition, value in parts:
        body += f"--{boundary}\r\ncontent-disposition: form-data; {disposition}\r\n\r\n".encode()
        body += value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


AUDIO = ('name="file"; filename="a.wav"', b"RIFF\x00\x00\x00\x00WAVE")


async def send_form(rig: Rig, body: bytes, content_type: str | None = None) -> RawResponse:
    content_type = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    headers = [("content-type", content_type)]
    return await rig.send("POST", "/v1/audio/transcriptions", headers, body)


async def test_an_upload_naming_a_configured_model_reaches_the_upstream(rig: Rig) -> None:
    body = form(AUDIO, ('name="model"', b"whisper-1"))
    answered = await send_form(rig, body)
    assert answered.status == 200
    assert rig.upstream.seen[0].body == body
    rig.assert_intact()


@pytest.mark.parametrize(
    "disposition", ['name="model"', "name=model", "NAME=model", "name*=utf-8''model"]
)
async def test_an_upload_naming_an_unconfigured_model_is_a_404(rig: Rig, disposition: str) -> None:
    refused = await send_form(rig, form(AUDIO, (disposition, UNCONFIGURED.encode())))
    openai_error(refused, 404, "model_not_found")
    rig.assert_untouched()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('name="model"', "name=model"),
        ("name=model", 'name="model"'),
        ('name="model"', "name*=utf-8''model"),
        ('name="model"', 'NAME="model"'),
        ('name="model"', 'name="model"'),
    ],
)
async def test_an_upload_naming_model_twice_is_refused(rig: Rig, first: str, second: str) -> None:
    body = form((first, b"whisper-1"), AUDIO, (second, UNCONFIGURED.encode()))
    refused = await send_form(rig, body)
    openai_error(refused, 400, "invalid_request")
    rig.assert_untouched()


async def test_an_upload_with_two_boundaries_is_refused(rig: Rig) -> None:
    """Read with the first boundary the form names whisper-1, with the second (what a parser
    keeping the last parameter uses) an unconfigured model."""
    body = form(AUDIO, ('name="model"', b"whisper-1"), boundary="first")
    body += form(AUDIO, ('name="model"', UNCONFIGURED.encode()), boundary="second")
    for content_type in (
        "multipart/form-data; boundary=first; boundary=second",
        'multipart/form-data; boundary="first"; boundary=second',
        "multipart/form-data; boundary=first; BOUNDARY=second",
        "multipart/form-data; boundary=first; boundary*=utf-8''second",
    ):
        refused = await send_form(rig, body, content_type)
        openai_error(refused, 400, "invalid_request")
    rig.assert_untouched()


async def test_an_upload_without_a_model_is_refused(rig: Rig) -> None:
    refused = await send_form(rig, form(AUDIO))
    openai_error(refused, 400, "model_required")
    refused = await send_form(rig, form(AUDIO), "multipart/form-data")  # no boundary
    openai_error(refused, 400, "invalid_request")
    rig.assert_untouched()
