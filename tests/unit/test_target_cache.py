"""The path verdict cache holds only short paths: many long hostile paths leave it as it was,
and a cached verdict is the same as a fresh one."""

from __future__ import annotations

from llmgateway.providers import target


def test_long_paths_are_checked_without_being_cached() -> None:
    before = target._cached_check.cache_info().currsize
    for i in range(50):
        long_path = b"/v1/" + b"a" * 10_000 + b"%d" % i
        assert target.checked_path(long_path) == long_path.decode()
        assert target.checked_path(long_path + b"/../x") is None
    assert target._cached_check.cache_info().currsize == before


def test_a_cached_verdict_is_the_fresh_one() -> None:
    for raw in (b"/v1/chat/completions", b"/v1/%2e%2e/admin", b"/v1/a%2Fb", b"/v1/ok%20"):
        assert target.checked_path(raw) == target.checked_path(raw) == target._check(raw)
    short = b"/v1/" + b"b" * (target.CACHED_PATH_BYTES - 4)
    hits = target._cached_check.cache_info().hits
    assert target.checked_path(short) == target.checked_path(short)
    assert target._cached_check.cache_info().hits == hits + 1
