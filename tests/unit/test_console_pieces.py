"""Small pieces of the console: proxy URLs shown without credentials, the time filters, the
session seal (the socket-level attacks are in tests/security/test_console_*.py)."""

from __future__ import annotations

import pytest

from llmgateway.console.session import Session, SessionKeys, token_matches
from llmgateway.console.templating import ago, when
from llmgateway.observe.masking import shown_proxy


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pass@10.0.0.1:3128", "http://***@10.0.0.1:3128"),
        ("socks5://only-user@proxy.example:1080", "socks5://***@proxy.example:1080"),
        ("socks5h://u:p%40ss-secret@proxy.example:1080", "socks5h://***@proxy.example:1080"),
        ("http://us@r:p@ss@10.0.0.1:3128/x@y", "http://***@10.0.0.1:3128/x@y"),
        ("https://10.0.0.1:8443", "https://10.0.0.1:8443"),
        ("not a url with secret-password-inside", "no…side"),
    ],
)
def test_shown_proxy(url: str, shown: str) -> None:
    assert shown_proxy(url) == shown


def test_the_time_filters() -> None:
    assert ago(None, 100.0) == "—"
    assert ago(100.0, 112.0) == "12 s ago"
    assert ago(0.0, 600.0) == "10 min ago"
    assert ago(0.0, 3 * 3600.0) == "3 h ago"
    assert ago(0.0, 3 * 86400.0) == "3 d ago"
    assert ago(200.0, 100.0) == "in 1 min"
    assert when(0.0) == "1970-01-01 00:00:00 UTC"
    assert when(None) == "—"


def test_a_sealed_session_opens_only_with_its_keys() -> None:
    keys = SessionKeys.of("token-a-0123456789abcdef")
    session = Session("sid", 1000, 1200)
    assert keys.open(keys.seal(session)) == session
    assert SessionKeys.of("token-b-0123456789abcdef").open(keys.seal(session)) is None
    assert keys.csrf_ok(session, keys.csrf_token(session))
    assert not keys.csrf_ok(Session("other", 1000, 1200), keys.csrf_token(session))
    assert not keys.csrf_ok(session, None)


def test_the_token_compare() -> None:
    assert token_matches("right-token", "right-token")
    assert not token_matches("right-token ", "right-token")
    assert not token_matches("", "")  # no token: nothing logs in
    assert not token_matches("\udcff", "x")  # an undecodable byte is no crash


@pytest.mark.parametrize(
    ("now", "why"),
    [(1000.0, None), (1000.0 + 3599, None), (1000.0 + 3600, "idle"), (1000.0 - 61, "absolute")],
)
def test_expiry(now: float, why: str | None) -> None:
    assert Session("s", 1000, 1000).expired(now) == why
    assert Session("s", 1000, 40_000).expired(1000 + 12 * 3600) == "absolute"
