"""The settings of routes (`routes.<alias>`) and of gateway-wide tokens (`gateway.tokens`).

A route alias is a model name clients may send; its targets are models of configured
providers. A gateway-wide token may use the aliases its `routes` globs match and, as
`<provider>/<model>`, the providers its `providers` globs match. What the field types cannot
say (unknown providers, cycles, shadowed names…) is checked in `config.route_rules`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmgateway.core.clients import ClientRules, Period, epoch_of, networks
from llmgateway.core.routes import DEFAULT_FALLBACK_ON, FallbackReason, StreamCommit

MAX_PEEK_TIMEOUT_SEC = 120.0
"""The longest a stream may be held back waiting for its first event."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteTarget(_Model):
    """One provider's model behind an alias."""

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, le=1_000_000)  # share inside its priority tier
    priority: int = Field(default=0, ge=0)  # 0 first; a higher tier only after every lower one


class RouteSettings(_Model):
    """`routes.<alias>`: the targets and how a request falls back among them."""

    targets: tuple[RouteTarget, ...] = Field(min_length=1)
    fallback_on: tuple[FallbackReason, ...] = tuple(DEFAULT_FALLBACK_ON)
    fallback_on_status: tuple[int, ...] = ()  # also fall back on these upstream statuses
    attempts_per_target: int | None = Field(default=None, ge=1)  # None: the provider's retries
    max_targets: int = Field(default=3, ge=1)  # distinct targets one request may try
    context_length_fallback: str | None = None  # the alias tried when the context is too long
    stream_commit: StreamCommit = StreamCommit.FIRST_EVENT
    peek_timeout_sec: float = Field(default=10.0, gt=0, le=MAX_PEEK_TIMEOUT_SEC)
    headers: StrictBool = True  # x-llmgateway-route / -target / -attempts on responses

    @field_validator("fallback_on_status")
    @classmethod
    def _statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for status in value:
            if not 400 <= status <= 599:
                raise ValueError(f"{status} is not an error status (400 to 599)")
            if status in _CLIENT_FAULTS:
                raise ValueError(
                    f"{status} is the request's own fault, and a client fault never falls back "
                    "(it would fail the same way on every target)"
                )
        return value

    @field_validator("context_length_fallback", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


_CLIENT_FAULTS = frozenset({400, 404, 413, 422})


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def valid_name(value: str) -> bool:
    """Whether `value` may name a token or a client: 1 to 64 letters, digits, '.', '_' or
    '-', starting with a letter or digit."""
    return _NAME.fullmatch(value) is not None


def _check_name(value: str) -> str:
    if not valid_name(value):
        raise PydanticCustomError(
            "token_name",
            "a token's name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
            {"hint": "e.g. ci-bot: logs and metrics show it"},
        )
    return value


_SHA256 = re.compile(r"[0-9a-f]{64}")


class GatewayToken(_Model):
    """`gateway.tokens[]`: a client token for the whole gateway (not one provider), given as
    the token itself or as the SHA-256 of it (`token_sha256`, hex: a config in git then holds
    no secret), with an optional expiry, address ranges and limits (as `llmgateway clients`
    sets them for the clients it stores)."""

    name: Annotated[str, AfterValidator(_check_name)]
    token: str | None = Field(default=None, min_length=1, repr=False)
    token_sha256: str | None = None
    routes: tuple[str, ...] = ("*",)  # globs over route aliases it may use
    providers: tuple[str, ...] = ()  # globs over providers it may address as <provider>/<model>
    models: tuple[str, ...] = ()  # globs over the model names it may ask for (empty: any)
    rpm: int | None = Field(default=None, ge=1)  # requests per minute (a sliding window)
    tpm: int | None = Field(default=None, ge=1)  # tokens per minute (reserved, then settled)
    max_parallel: int | None = Field(default=None, ge=1)  # requests in flight at once
    quota: int | None = Field(default=None, ge=1)  # tokens per `period`
    period: Period = Period.MONTH
    expires: datetime | date | None = None  # a date is midnight UTC; a naive time is UTC
    allow_ips: tuple[str, ...] = ()  # CIDR ranges the client's address must be in (empty: any)

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and _SHA256.fullmatch(value.lower()) is None:
            raise ValueError("token_sha256 is 64 hex digits: the SHA-256 of the token")
        return None if value is None else value.lower()

    @field_validator("allow_ips")
    @classmethod
    def _ranges(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        networks(value)  # raises ValueError naming the bad one
        return value

    @model_validator(mode="after")
    def _one_token(self) -> Self:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token and token_sha256")
        return self

    def digest(self) -> bytes:
        """The SHA-256 of the token, as the edge looks tokens up."""
        if self.token_sha256 is not None:
            return bytes.fromhex(self.token_sha256)
        assert self.token is not None
        return hashlib.sha256(self.token.encode()).digest()

    def rules(self) -> ClientRules | None:
        """The token's expiry, ranges and limits, or None when it sets none."""
        rules = ClientRules(
            self.name,
            expires_at=None if self.expires is None else epoch_of(self.expires),
            allow_ips=networks(self.allow_ips),
            models=self.models,
            rpm=self.rpm,
            tpm=self.tpm,
            max_parallel=self.max_parallel,
            quota_tokens=self.quota,
            period=self.period if self.quota is not None else None,
        )
        return None if rules == ClientRules(self.name) else rules

    def may_use_route(self, alias: str) -> bool:
        """Whether one of the `routes` globs matches `alias`."""
        return any_match(self.routes, alias)

    def may_use_provider(self, provider: str) -> bool:
        """Whether one of the `providers` globs matches `provider`."""
        return any_match(self.providers, provider)


def any_match(globs: Iterable[str], name: str) -> bool:
    """Whether one of `globs` matches `name` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)
