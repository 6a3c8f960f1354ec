"""SOCKS5 egress in pieces: reading the proxy URL, python-socks' failures as egress faults with
messages of our own, and socks URLs accepted and masked wherever proxy URLs are (the traffic
itself is in tests/e2e/test_socks_proxy.py, the attacks in tests/security/test_socks_hostile.py)."""

from __future__ import annotations

import errno
import ssl

import aiohttp_socks
import pydantic
import pytest

from llmgateway.config.settings import ProxyConfig
from llmgateway.core.guard import egress_label
from llmgateway.core.outcomes import Blame, ErrorReason, outcome_of
from llmgateway.keeper.prober import describe_exception
from llmgateway.keyfiles import proxy_problem
from llmgateway.transport import http1
from llmgateway.transport.errors import exception_reason, is_transport_error
from llmgateway.transport.socks import (
    SocksError,
    SocksProxy,
    SocksTimeout,
    is_socks,
    parse_socks,
    socks_failure,
)


def test_a_socks_url_is_read_with_its_login_decoded() -> None:
    assert parse_socks("socks5://u%40corp:p%3Ass%2Fw@proxy.example:1081") == SocksProxy(
        "proxy.example", 1081, remote_dns=False, username="u@corp", password="p:ss/w"
    )
    assert parse_socks("socks5h://10.0.0.1") == SocksProxy("10.0.0.1", 1080, remote_dns=True)
    assert parse_socks("SOCKS5H://only@h:1").password is None  # no login is offered then
    assert "s3cret" not in repr(parse_socks("socks5://u:s3cret@h:1"))


LONG = "x" * 256


@pytest.mark.parametrize(
    "url",
    [
        "socks5://:1080",
        "socks5://u:secret-pw@h:99999",
        "http://h:1",
        f"socks5://u:secret-{LONG}@h:1",
        "socks5h://u:secret-p%C3%A4ss@h:1",  # not ASCII
    ],
)
def test_a_bad_socks_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(SocksError) as caught:
        parse_socks(url)
    assert "secret" not in str(caught.value)


def test_which_urls_are_socks() -> None:
    assert is_socks("socks5://h:1")
    assert is_socks("socks5h://u:p@h:1")
    assert is_socks("SOCKS5://h")
    assert not is_socks("http://h:3128")
    assert not is_socks("https://h")
    assert not is_socks("direct")


def _raised(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            aiohttp_socks.ProxyError("Username and password authentication failure"),
            "the SOCKS proxy refused: Username and password authentication failure",
        ),
        (
            _raised(
                aiohttp_socks.ProxyConnectionError("Couldn't connect to proxy 10.0.0.9:1080"),
                _raised(
                    OSError(errno.ECONNREFUSED, "Couldn't connect to proxy 10.0.0.9:1080"),
                    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
                ),
            ),
            "cannot connect to the SOCKS proxy (Connection refused)",
        ),
        (
            aiohttp_socks.ProxyConnectionError("Couldn't connect to proxy 10.0.0.9:1080"),
            "cannot connect to the SOCKS proxy",
        ),
    ],
)
def test_socks_failures_are_egress_faults_in_our_words(error: Exception, message: str) -> None:
    failure = socks_failure(error)
    assert isinstance(failure, SocksError)
    assert isinstance(failure, http1.ConnectError)
    assert str(failure) == message
    assert "10.0.0.9" not in str(failure)
    assert describe_exception(failure) == f"SocksError: {message}"
    assert is_transport_error(failure)
    reason = exception_reason(failure)
    assert reason is ErrorReason.EGRESS_ERROR
    assert outcome_of(reason, None, None).blame is Blame.EGRESS


def test_a_socks_handshake_timeout_is_an_egress_fault_not_a_read_timeout() -> None:
    failure = socks_failure(aiohttp_socks.ProxyTimeoutError("Proxy connection timed out: 5"))
    assert isinstance(failure, SocksTimeout)
    assert isinstance(failure, TimeoutError)
    assert exception_reason(failure) is ErrorReason.EGRESS_ERROR


def test_tls_with_the_upstream_through_the_tunnel_is_an_egress_fault() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed: llm.example")
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    failure = socks_failure(error)
    assert str(failure) == (
        "TLS with the upstream through the SOCKS proxy failed "
        "(SSLCertVerificationError: CERTIFICATE_VERIFY_FAILED)"
    )
    assert exception_reason(failure) is ErrorReason.EGRESS_ERROR


def test_anything_else_in_the_handshake_is_named_by_its_kind_only() -> None:
    failure = socks_failure(ConnectionResetError(errno.ECONNRESET, "reset by 10.0.0.9:1080"))
    assert str(failure) == "the SOCKS handshake failed (ConnectionResetError)"
    assert exception_reason(failure) is ErrorReason.EGRESS_ERROR


@pytest.mark.parametrize(
    "url", ["socks5h://u:p@10.0.0.1:1080", "socks5h://proxy.example:1080", "socks5://h:1"]
)
def test_socks5h_is_accepted_as_socks5_is(url: str) -> None:
    assert ProxyConfig.model_validate({"mode": "static", "static_url": url}).static_url == url
    assert proxy_problem(url) is None


@pytest.mark.parametrize("login", [f"{LONG}:pw", f"u:{LONG}", "u:p%C3%A4ss-secret", "%C3%BC:pw"])
def test_a_login_socks5_cannot_carry_is_refused_where_proxies_are_read(login: str) -> None:
    url = f"socks5h://{login}@10.0.0.1:1080"
    problem = "its SOCKS5 user and password must be ASCII, at most 255 characters each"
    with pytest.raises(pydantic.ValidationError, match=problem):
        ProxyConfig.model_validate({"mode": "static", "static_url": url})
    assert proxy_problem(url) == problem
    assert proxy_problem(f"http://{login}@10.0.0.1:3128") is None  # an HTTP proxy's is its own


def test_socks4_is_not_a_proxy_scheme() -> None:
    with pytest.raises(pydantic.ValidationError, match="socks5h://"):
        ProxyConfig.model_validate({"mode": "static", "static_url": "socks4://h:1080"})
    assert proxy_problem("socks4://h:1080") == (
        "must start with http://, https://, socks5:// or socks5h://"
    )


def test_a_socks_egress_is_labelled_without_its_login() -> None:
    assert egress_label("socks5h://gw:pa55-secret@10.0.0.1:1080") == "socks5h://10.0.0.1:1080"
    assert egress_label("socks5://gw:pa55-secret@proxy.example") == "socks5://proxy.example"
