"""The settings of routes (`routes.<alias>`) and of gateway-wide tokens (`gateway.tokens`).

A route alias is a model name clients may send; its targets are models of configured
providers. A gateway-wide token may use the aliases its `routes` globs match and, as
`<provider>/<model>`, the providers its `providers` globs match. What the field types cannot
say (unknown providers, cycles, shadowed names…) is checked in `config.route_rules`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator
from pydantic_core import PydanticCustomError

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


def _check_name(value: str) -> str:
    if _NAME.fullmatch(value) is None:
        raise PydanticCustomError(
            "token_name",
            "a token's name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
            {"hint": "e.g. ci-bot: logs and metrics show it"},
        )
    return value


class GatewayToken(_Model):
    """`gateway.tokens[]`: a client token for the whole gateway (not one provider)."""

    name: Annotated[str, AfterValidator(_check_name)]
    token: str = Field(min_length=1, repr=False)
    routes: tuple[str, ...] = ("*",)  # globs over route aliases it may use
    providers: tuple[str, ...] = ()  # globs over providers it may address as <provider>/<model>

    def may_use_route(self, alias: str) -> bool:
        """Whether one of the `routes` globs matches `alias`."""
        return _any_match(self.routes, alias)

    def may_use_provider(self, provider: str) -> bool:
        """Whether one of the `providers` globs matches `provider`."""
        return _any_match(self.providers, provider)


def _any_match(globs: Iterable[str], name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)
