"""The pure parts of clients: the secret's shape and checksum, expiry and grace parsing, the
address ranges, the client address behind trusted proxies, and the `gateway.tokens` fields."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from llmgateway.config.route_settings import GatewayToken
from llmgateway.core.clients import (
    ClientRules,
    networks,
    new_secret,
    parse_span,
    parse_when,
    shown,
    well_formed,
)
from llmgateway.observe.access import client_address


def test_a_secret_has_its_shape_and_a_checksum_that_catches_a_typo() -> None:
    secret = new_secret()
    assert secret.startswith("sk-lgw_")
    assert len(secret) == len("sk-lgw_") + 43 + 1 + 6
    assert well_formed(secret)
    flipped = secret[:10] + ("A" if secret[10] != "A" else "B") + secret[11:]
    assert not well_formed(flipped)
    assert not well_formed(secret + "x")
    assert new_secret() != secret
    assert shown(secret) == (secret[:11], secret[-4:])


def test_expiries_and_spans() -> None:
    now = 1_000_000.0
    assert parse_when("30d", now) == now + 30 * 86_400
    assert parse_when("12h", now) == now + 12 * 3600
    assert parse_when("2027-01-01", now) == 1798761600.0
    assert parse_when("2027-01-01T12:00:00+02:00", now) == 1798761600.0 + 10 * 3600
    assert parse_when("someday", now) is None
    assert parse_span("24h") == 86_400
    assert parse_span("0h") == 0
    assert parse_span("1y") is None


def test_address_ranges() -> None:
    rules = ClientRules("a", allow_ips=networks(["10.0.0.0/8", "2001:db8::/32"]))
    assert rules.admits("10.9.8.7")
    assert rules.admits("::ffff:10.0.0.1")  # an IPv4 peer on a dual-stack socket
    assert rules.admits("2001:db8::1")
    assert not rules.admits("11.0.0.1")
    assert not rules.admits("not-an-address")
    assert ClientRules("b").admits("anything")
    with pytest.raises(ValueError, match="not an IP address"):
        networks(["10.0.0.0/33"])


def _scope(peer: str, *forwarded: str) -> dict[str, object]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"client": (peer, 5000), "headers": headers}


def test_the_client_address_behind_trusted_proxies() -> None:
    trusted = networks(["192.0.2.0/24"])
    assert client_address(_scope("198.51.100.1", "10.0.0.1")) == "198.51.100.1"  # none trusted
    assert client_address(_scope("198.51.100.1", "10.0.0.1"), trusted) == "198.51.100.1"
    assert client_address(_scope("192.0.2.5", "10.0.0.1"), trusted) == "10.0.0.1"
    assert client_address(_scope("192.0.2.5", "10.0.0.1, 192.0.2.9"), trusted) == "10.0.0.1"
    assert client_address(_scope("192.0.2.5", "10.0.0.1", "203.0.113.4"), trusted) == (
        "203.0.113.4"
    )
    assert client_address(_scope("192.0.2.5", "10.0.0.1, bogus"), trusted) == "192.0.2.5"
    assert client_address(_scope("192.0.2.5"), trusted) == "192.0.2.5"


def test_a_config_token_gives_one_of_token_and_token_sha256() -> None:
    digest = hashlib.sha256(b"t").hexdigest()
    by_hash = GatewayToken(name="a", token_sha256=digest.upper())
    assert by_hash.digest() == hashlib.sha256(b"t").digest()
    assert by_hash.rules() is None
    with pytest.raises(ValidationError, match="exactly one"):
        GatewayToken(name="a", token="t", token_sha256=digest)
    with pytest.raises(ValidationError, match="exactly one"):
        GatewayToken(name="a")
    with pytest.raises(ValidationError, match="64 hex"):
        GatewayToken(name="a", token_sha256="abc")
    with pytest.raises(ValidationError, match="not an IP address"):
        GatewayToken(name="a", token="t", allow_ips=("office",))
    limited = GatewayToken(name="a", token="t", rpm=5, quota=100, period="week")
    rules = limited.rules()
    assert rules is not None
    assert (rules.rpm, rules.quota_tokens, rules.period) == (5, 100, "week")
