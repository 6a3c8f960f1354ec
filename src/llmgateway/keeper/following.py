"""The long-running Keeper following its config file: at each reload applied (`reloading`), the
Keeper in flight finishes what it holds (its probes end, its leases are released) and a new one
starts at once on the new settings: providers added are synced and probed, providers removed
are no longer looked at, a changed key folder is watched and synced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from llmgateway.config.reload_diff import ConfigDiff
from llmgateway.config.settings import Settings
from llmgateway.keeper.run import Keeper
from llmgateway.observe.metrics import Metrics
from llmgateway.reloading import ConfigFollower, Following
from llmgateway.store import Store
from llmgateway.store.notify import Kind, Listener, Notice

log = logging.getLogger("llmgateway.keeper")


@dataclass(slots=True)
class KeeperSwap:
    """The Keeper on the settings in force: `run()` starts one, and a new one on the new
    settings after each `apply()` (a reload) until `stop` is set."""

    settings: Settings
    swapped: asyncio.Event = field(default_factory=asyncio.Event)

    async def apply(self, new: Settings, _diff: ConfigDiff | None = None) -> None:
        """Take `new`: the Keeper running ends its work in flight, then one on `new` starts."""
        self.settings = new
        self.swapped.set()

    async def run(self, store: Store, metrics: Metrics, stop: asyncio.Event) -> None:
        """Keepers in turn until `stop` is set."""
        while not stop.is_set():
            await self._one(store, metrics, stop)

    async def _one(self, store: Store, metrics: Metrics, stop: asyncio.Event) -> None:
        ending = asyncio.Event()
        keeper = asyncio.create_task(Keeper(self.settings, store, metrics=metrics).run(ending))
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.swapped.wait())]
        try:
            await asyncio.wait([keeper, *waits], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            ending.set()
            await keeper  # its error (another keeper on SQLite) ends the command
        if self.swapped.is_set() and not stop.is_set():
            self.swapped.clear()
            log.info("keeper restarted on the reloaded config")


async def run_following(
    settings: Settings, store: Store, metrics: Metrics, stop: asyncio.Event, follow: Following
) -> None:
    """The Keeper until `stop` is set, started anew on the new settings at each reload."""
    swap = KeeperSwap(settings)

    async def apply(new: Settings, diff: ConfigDiff) -> None:
        logging.getLogger().setLevel(new.logging.level)
        await swap.apply(new, diff)

    follower = ConfigFollower(
        follow.path, settings, apply, "keeper", metrics, follow.refusals, store.engine
    )
    listener = _listener(store, follower)
    with follower.on_sighup() if follow.sighup else contextlib.nullcontext():
        await follower.report()
        helpers = [asyncio.create_task(follower.run(), name="config-follower")]
        if listener is not None:
            helpers.append(asyncio.create_task(listener.run(), name="store-notices"))
        try:
            await swap.run(store, metrics, stop)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)


def _listener(store: Store, follower: ConfigFollower) -> Listener | None:
    """On PostgreSQL, a listener waking the follower on `llmgateway reload`'s notice."""
    plan = store.plan
    target = None if plan is None else plan.session_target()
    if target is None:
        return None

    def heard(notice: Notice) -> None:
        if notice.kind == Kind.CONFIG:
            follower.notice.set()

    url, pooler = target
    return Listener(url, heard, pooler)
