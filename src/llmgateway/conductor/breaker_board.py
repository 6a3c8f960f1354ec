"""Circuit breakers shared through the store: reset requests in, last known states out.

`llmgateway breaker reset PROVIDER` writes a reset time into the store's `breakers` table; every
gateway reads the table at each pool refresh and closes that provider's breakers when the time
changed since its last look. The same refresh writes the gateway's own breaker states when they
changed, so `llmgateway status` can show them. A store that is down delays both, nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmgateway.core.guard import Guard
from llmgateway.core.resilience import BreakerState
from llmgateway.store import Store

log = logging.getLogger("llmgateway.breakers")


@dataclass(slots=True)
class BreakerBoard:
    """One gateway's view of the `breakers` table."""

    seen_resets: dict[str, float | None] | None = None  # None until the first look
    reported: dict[str, tuple[int, int]] = field(default_factory=dict)

    async def exchange(self, store: Store, guards: Mapping[str, Guard], now: float) -> None:
        """Apply new reset requests, then report states that changed since the last report."""
        try:
            rows = {row.provider: row for row in await store.breakers()}
            resets = {name: rows[name].reset_at if name in rows else None for name in guards}
            if self.seen_resets is not None:
                for name, at in resets.items():
                    if at is not None and at != self.seen_resets.get(name):
                        log.warning("breakers of provider %s reset by request", name)
                        guards[name].reset(now)
            self.seen_resets = resets
            states = {name: _state_of(guard) for name, guard in guards.items()}
            changed = {
                name: value
                for name, value in states.items()
                if self.reported.get(name) != value or name not in rows
            }
            if changed:
                await store.save_breakers(changed)
                self.reported.update(changed)
        except Exception as error:  # the store is down: try again at the next refresh
            log.warning("breaker exchange with the store failed: %s", type(error).__name__)


def _state_of(guard: Guard) -> tuple[int, int]:
    egresses = guard.egress_states().values()
    return int(guard.state), sum(state is not BreakerState.CLOSED for state in egresses)
