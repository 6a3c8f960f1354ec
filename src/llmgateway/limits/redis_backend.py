"""The `redis` backend: per-key limits counted in Redis, shared by every gateway process.

One acquire is one round trip: a Lua script (`_ACQUIRE`) checks and counts both limits
atomically on the server's clock (Redis `TIME`, so gateway clocks need not agree):

- `max_concurrent`: a sorted set of the slot's leases, scored by their expiry. A lease lives
  `lease_ttl_sec` unless its gateway renews it (every third of the TTL, one pipelined call for
  all its leases), so a killed gateway's leases free their slots by themselves.
- `rpm`: a sorted set of the slot's request start times; at most `rpm` in any 60 s window
  (an exact sliding window, not fixed minutes).
- `tpm`: a sorted set of the slot's token spends by time, their amounts in a hash and their sum
  in a counter (spends that leave the window are subtracted as the next acquire drops them);
  a request is let through when the sum plus its reservation stays within `tpm`. Its real
  usage replaces the reservation afterwards (`spent`, one fire-and-forget call).

Release is one more call, fire-and-forget: if it fails, the lease expires with its TTL.
The keys of a slot share a hash tag (`{provider:key_id:scope}`), so they stay together on
a Redis Cluster node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from llmgateway.config.settings import KeyLimits, LimitsSettings
from llmgateway.limits.counts import BUSY_RETRY_SEC, MOST_WALKED, WINDOW_SEC, Refusal, fit
from llmgateway.limits.outage import Outage, Unreachable

Slot = tuple[str, int, str]
"""What one limit counts: (provider, key id, status scope: a model, or `*` when shared)."""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local most, rpm, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, tpm, amount = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= most then return {0, 0} end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {2, tonumber(oldest[2]) + window - now}
  end
end
if tpm > 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - window)
  local freed = 0
  for i = 1, #gone do
    freed = freed + tonumber(redis.call('HGET', KEYS[4], gone[i]) or '0')
    redis.call('HDEL', KEYS[4], gone[i])
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
    redis.call('DECRBY', KEYS[5], freed)
  end
  local over = tonumber(redis.call('GET', KEYS[5]) or '0') + amount - tpm
  if over > 0 then
    local spends = redis.call('ZRANGE', KEYS[3], 0, ARGV[8] - 1, 'WITHSCORES')
    local wait = window
    freed = 0
    for i = 1, #spends, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[4], spends[i]) or '0')
      wait = tonumber(spends[i + 1]) + window - now
      if freed >= over then break end
    end
    return {3, wait}
  end
  redis.call('ZADD', KEYS[3], now, ARGV[4])
  redis.call('HSET', KEYS[4], ARGV[4], amount)
  redis.call('INCRBY', KEYS[5], amount)
  redis.call('PEXPIRE', KEYS[3], window)
  redis.call('PEXPIRE', KEYS[4], window)
  redis.call('PEXPIRE', KEYS[5], window)
end
if rpm > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], window)
end
if most > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {1, 0}
"""
# a spend still in the window takes its real amount; one gone already changes nothing
_SPENT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('INCRBY', KEYS[3], tonumber(ARGV[2]) - old)
end
return 1
"""
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
_ERRORS = (RedisError, OSError, TimeoutError)


@functools.lru_cache(maxsize=256)
def _tokens_only(tpm: int) -> KeyLimits:
    return KeyLimits(tpm=tpm)


@dataclass(slots=True)
class RedisBackend:
    """Counts in Redis (see the module docstring); `outage` says when to stop asking it."""

    settings: LimitsSettings
    outage: Outage
    client: aioredis.Redis = field(init=False)
    _acquire: AsyncScript = field(init=False)
    _renew: AsyncScript = field(init=False)
    _spent: AsyncScript = field(init=False)
    name: str = "redis"
    _nonce: str = field(default_factory=lambda: secrets.token_hex(6))
    _held: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    _spends: dict[tuple[str, int], int] = field(default_factory=dict)  # → the tokens reserved
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        assert self.settings.redis_url is not None  # the config rules require it
        timeout = self.settings.timeout_sec
        self.client = aioredis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # a failure fails open at once; no retry storms
        )
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._spent = self.client.register_script(_SPENT)

    def keys(self, slot: Slot) -> tuple[str, str]:
        """The Redis keys of `slot`: its leases in flight, and its recent requests."""
        base = self._base(slot)
        return base + ":inflight", base + ":recent"

    def token_keys(self, slot: Slot) -> tuple[str, str, str]:
        """The Redis keys of `slot`'s tokens: its spends by time, their amounts, their sum."""
        base = self._base(slot)
        return base + ":spends", base + ":amounts", base + ":spent"

    def _base(self, slot: Slot) -> str:
        provider, key_id, scope = slot
        return f"{self.settings.key_prefix}:limits:{{{provider}:{key_id}:{scope}}}"

    async def take(
        self, slot: Slot, token: int, limits: KeyLimits, now: float, amount: int = 0
    ) -> Refusal | None:
        """Count one request on `slot` (reserving `amount` tokens when `limits.tpm` is set;
        one script call), or say why it may not start."""
        inflight, recent = self.keys(slot)
        member = f"{self._nonce}:{token}"
        ttl_ms = max(1, round(self.settings.lease_ttl_sec * 1000))
        window_ms = int(WINDOW_SEC * 1000)
        tpm = limits.tpm or 0
        amount = fit(amount, tpm)
        args: list[str | int] = [
            limits.max_concurrent or 0,
            limits.rpm or 0,
            ttl_ms,
            member,
            window_ms,
            tpm,
            amount,
            MOST_WALKED,
        ]
        keys = [inflight, recent, *self.token_keys(slot)]
        try:
            async with asyncio.timeout(self.settings.timeout_sec):
                verdict, wait_ms = await self._acquire(keys=keys, args=args)
        except _ERRORS as error:
            raise Unreachable(error) from error
        if verdict == 1:
            if limits.max_concurrent is not None:
                self._held[(slot[0], token)] = (inflight, member)
            if tpm:
                self._spends[(slot[0], token)] = amount
            return None
        if verdict == 0:
            return Refusal("busy", BUSY_RETRY_SEC)
        wait = max(int(wait_ms), 1) / 1000
        return Refusal("rate", wait) if verdict == 2 else Refusal("tokens", wait)

    async def reserve(
        self, slot: Slot, token: int, tpm: int, amount: int, now: float
    ) -> Refusal | None:
        """Reserve `amount` tokens on `slot` as `token` (one script call; nothing held)."""
        return await self.take(slot, token, _tokens_only(tpm), now, amount)

    def spent(self, slot: Slot, token: int, amount: int | None) -> None:
        """The request that reserved tokens on `slot` as `token` used `amount` (None: the
        reservation stands); sent without waiting for Redis to confirm."""
        reserved = self._spends.pop((slot[0], token), None)
        if reserved is None or amount is None or amount == reserved:
            return
        keys = list(self.token_keys(slot))
        self._later(self._adjust(keys, f"{self._nonce}:{token}", amount))

    async def _adjust(self, keys: list[str], member: str, amount: int) -> None:
        with contextlib.suppress(*_ERRORS):  # the reservation then stands until it expires
            async with asyncio.timeout(self.settings.timeout_sec):
                await self._spent(keys=keys, args=[member, amount])

    def _later(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def give_back(self, provider: str, token: int) -> None:
        """Free the lease held as `token`, without waiting for Redis to confirm."""
        held = self._held.pop((provider, token), None)
        if held is None:
            return
        self._later(self._remove(*held))

    async def _remove(self, inflight: str, member: str) -> None:
        with contextlib.suppress(*_ERRORS):  # the lease then expires with its TTL
            async with asyncio.timeout(self.settings.timeout_sec):
                await self.client.zrem(inflight, member)

    async def renew(self) -> None:
        """Push back the expiry of every lease this process holds (one pipelined call)."""
        if not self._held:
            return
        ttl_ms = max(1, round(self.settings.lease_ttl_sec * 1000))
        async with self.client.pipeline(transaction=False) as pipe:
            for inflight, member in list(self._held.values()):
                await self._renew(keys=[inflight], args=[ttl_ms, member], client=pipe)
            await pipe.execute()

    async def start(self) -> None:
        """Nothing to do: the client connects on first use."""

    async def run(self) -> None:
        """Renew this process's leases every third of their TTL, for ever."""
        interval = self.settings.lease_ttl_sec / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(max(self.settings.timeout_sec, interval)):
                    await self.renew()
            except _ERRORS as error:
                self.outage.failed(self.name, error)

    async def settle(self) -> None:
        """Wait until the releases sent so far are done (each is bounded by the timeout)."""
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        """Let pending releases finish, then disconnect."""
        await self.settle()
        await self.client.aclose()
