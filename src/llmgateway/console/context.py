"""The console's state, handed to every page: the settings, the store, the clock, the
templates, and the login bookkeeping. Page modules import `Console` and `CONSOLE` from here
(`console.app` imports the pages, so they must not import it)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import jinja2
from aiohttp import web

from llmgateway.console.folder_checks import FolderChecks
from llmgateway.console.login_guard import LoginGuard
from llmgateway.console.session import SessionKeys
from llmgateway.console.templating import environment
from llmgateway.observe.access import TokenRefusals

if TYPE_CHECKING:
    from llmgateway.config.settings import Settings
    from llmgateway.observe.metrics import Metrics
    from llmgateway.store import Store

MAX_ENDED = 10_000
"""Logged-out sessions remembered at most (each until its absolute end)."""


@dataclass(slots=True)
class EndedSessions:
    """The ids of sessions logged out in this process, each until its absolute end, so that a
    copy of a logged-out cookie is refused here (bounded: the oldest are forgotten first)."""

    limit: int = MAX_ENDED
    _ends: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def end(self, sid: str, until: float) -> None:
        """Remember that session `sid` ended (its cookie would live until `until`)."""
        self._ends[sid] = until
        while len(self._ends) > self.limit:
            self._ends.popitem(last=False)

    def ended(self, sid: str, now: float) -> bool:
        """Whether session `sid` was logged out (and its cookie would still be alive)."""
        until = self._ends.get(sid)
        return until is not None and now < until


def _no_count(surface: str, reason: str) -> None:
    """Counting refusals nowhere (a console built without metrics)."""


@dataclass(frozen=True)
class Console:
    """What the console's pages share. `clock` gives epoch seconds (a test moves it);
    `metrics`, when given, counts refused logins in `llmgateway_auth_failures_total`;
    `folders` keeps whether each keys folder can take an import, for a while."""

    settings: Settings
    store: Store
    clock: Callable[[], float]
    templates: jinja2.Environment
    metrics: Metrics | None = None
    guard: LoginGuard = field(default_factory=LoginGuard)
    ended: EndedSessions = field(default_factory=EndedSessions)
    folders: FolderChecks = field(default_factory=FolderChecks)

    @classmethod
    def create(
        cls,
        settings: Settings,
        store: Store,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Console:
        """The console of `settings.admin` over `store`, with the packaged templates."""
        return cls(settings, store, clock, environment(), metrics)

    @cached_property
    def keys(self) -> SessionKeys:
        """The cookie and CSRF keys derived from `admin.token`."""
        return SessionKeys.of(self.settings.admin.token)

    @cached_property
    def refusals(self) -> TokenRefusals:
        """Refused logins and Bearer tokens: counted (surface `admin`) and logged, throttled."""
        count = _no_count if self.metrics is None else self.metrics.auth_failed
        return TokenRefusals(count, clock=self.clock, what="admin token")

    def close(self) -> None:
        """Cancel the pending summary line of refused logins."""
        self.refusals.close()


CONSOLE = web.AppKey("console", Console)
"""Where the console's sub-application keeps its `Console`."""
