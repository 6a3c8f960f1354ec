"""What an exception raised while calling upstream means: the transport's half of classifying.

The direct path raises `http1`'s errors, the proxied path aiohttp's, both OSError, TimeoutError,
and our own code `EgressError`; each maps to a reason here. `classify_exchange()` is the outcome
of a whole exchange: the exception's when it raised, else `classify()` of the answer.
"""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Mapping
from typing import Any

from llmgateway.core.classify import Classified, classify
from llmgateway.core.egress import EgressError
from llmgateway.core.outcomes import ErrorReason, Outcome, outcome_of
from llmgateway.transport import http1


def classify_exchange(
    provider: Classified,
    status: int | None,
    headers: Mapping[str, str],
    body_prefix: bytes,
    exc: BaseException | None,
    *,
    probe: bool = False,
    key_route: bool = True,
    now: float | None = None,
) -> Outcome:
    """Say what one upstream exchange meant: `exc` (when it failed or broke mid-body) wins over
    the answer, which `classify()` reads with the same keyword arguments."""
    if exc is not None:
        return outcome_of(exception_reason(exc), status, None)
    return classify(
        provider, status, headers, body_prefix, probe=probe, key_route=key_route, now=now
    )


def is_transport_error(exc: BaseException) -> bool:
    """Whether `exc` is a failure of the wire (either transport, a timeout, a fault of our
    egress) and so has an outcome; anything else raised while calling upstream is a bug of the
    gateway's own code, which is nobody else's fault."""
    if isinstance(exc, OSError | EgressError | http1.InvalidRequest):
        return True
    client = sys.modules.get("aiohttp")  # loaded only once a proxy is used
    return client is not None and isinstance(exc, client.ClientError)


def exception_reason(exc: BaseException) -> ErrorReason:
    """The reason for an exception raised while calling upstream (http1, aiohttp, asyncio)."""
    if isinstance(exc, http1.ConnectError):
        return ErrorReason.EGRESS_ERROR  # connect or connection-pool wait: never reached upstream
    if isinstance(exc, http1.InvalidRequest):
        return ErrorReason.BAD_REQUEST  # refused by the seam before a byte was sent
    if isinstance(exc, http1.ProtocolError):
        return ErrorReason.SERVER_ERROR  # not a valid HTTP/1.1 answer, or too large
    # aiohttp carries only proxied traffic and is loaded on its first use: until then, no
    # exception can be one of its own (a gateway without proxies never loads it)
    client = sys.modules.get("aiohttp")
    if client is not None and isinstance(exc, client.ClientError):
        return _aiohttp_reason(client, exc)
    if isinstance(exc, TimeoutError):  # ours, asyncio's
        return ErrorReason.TIMEOUT
    if isinstance(exc, ConnectionResetError):
        return ErrorReason.STREAM_DISCONNECT
    if isinstance(exc, EgressError | ssl.SSLError | socket.gaierror | ConnectionRefusedError):
        return ErrorReason.EGRESS_ERROR
    if isinstance(exc, OSError):
        return ErrorReason.NETWORK_ERROR
    # Anything else is a fault of our own code or a cancellation: never count it against a key.
    return ErrorReason.EGRESS_ERROR


def _aiohttp_reason(client: Any, exc: BaseException) -> ErrorReason:
    # Order matters: aiohttp's timeout errors are OSErrors and TimeoutErrors at once.
    if isinstance(exc, client.ConnectionTimeoutError):
        return ErrorReason.EGRESS_ERROR  # connect or connection-pool wait: never reached upstream
    if isinstance(exc, TimeoutError):  # SocketTimeoutError, ServerTimeoutError
        return ErrorReason.TIMEOUT
    if isinstance(exc, client.ServerDisconnectedError | client.ClientPayloadError):
        return ErrorReason.STREAM_DISCONNECT
    if isinstance(exc, client.ClientConnectionResetError):
        return ErrorReason.STREAM_DISCONNECT
    egress = (client.ClientConnectorError, client.ServerFingerprintMismatch, client.InvalidURL)
    if isinstance(exc, egress):  # refused, DNS, TLS, certificate, proxy connection
        return ErrorReason.EGRESS_ERROR
    if isinstance(exc, client.ClientConnectionError | OSError):
        return ErrorReason.NETWORK_ERROR
    return ErrorReason.EGRESS_ERROR  # not about the far side: never the key's
