"""One vocabulary for what a key is, and the mapping between the two views of it.

A key's **status** (per key × model, or per key under `shared_key_status`) is the last finding
kept in the store: `valid`, `untested`, or the reason of the last failure (`KeyStatus`). The
Keeper writes it, the gateway writes what it learns, `llmgateway status` lists it.

A key's **state** is what key selection does with it now (`KeyState`): the gateway's pool has
it for every key, and `/readyz` and `llmgateway_key_states` report it. The pool derives it from
the status and from what only the pool knows (a cooldown's end, an outlier ejection), so from
the store alone (the Keeper's view) the state is `state_of_status()`: a rate-limited key counts
as `cooling` until the pool sees its cooldown end, and `ejected` never appears (ejections are
each gateway process's own).
"""

from __future__ import annotations

from typing import Literal

from llmgateway.core.outcomes import KeyStatus

KeyState = Literal["healthy", "untested", "cooling", "ejected", "invalid", "no_quota", "no_model"]
"""What selection does with a key: `healthy` keys serve, and `untested` ones unless their
provider sets `serve_untested_keys: false` (then they wait for a probe's finding); `cooling`
waits out a 429's cooldown, `ejected` an outlier ejection; `invalid` is out until a probe or
sync restores it; `no_quota` and `no_model` are out for the model until their block ends."""

KEY_STATES: tuple[KeyState, ...] = (
    "healthy",
    "untested",
    "cooling",
    "ejected",
    "invalid",
    "no_quota",
    "no_model",
)

USABLE: frozenset[KeyState] = frozenset({"healthy", "untested"})
"""States that may serve a request now (`untested` only where the provider serves untested
keys, the default: see `usable_states`)."""

_TESTED_USABLE: frozenset[KeyState] = frozenset({"healthy"})


def usable_states(serve_untested: bool) -> frozenset[KeyState]:
    """The states that may serve for a provider with `gateway_policy.serve_untested_keys` set
    to `serve_untested`."""
    return USABLE if serve_untested else _TESTED_USABLE


STATE_OF_STATUS: dict[KeyStatus, KeyState] = {
    KeyStatus.VALID: "healthy",
    KeyStatus.UNTESTED: "untested",
    KeyStatus.INVALID_KEY: "invalid",
    KeyStatus.NO_ACCESS: "invalid",
    KeyStatus.RATE_LIMITED: "cooling",
    KeyStatus.NO_QUOTA: "no_quota",
    KeyStatus.NO_MODEL: "no_model",
    # A transient failure, or one the key is not to blame for, leaves the key in selection.
    KeyStatus.UNKNOWN: "healthy",
    KeyStatus.NETWORK_ERROR: "healthy",
    KeyStatus.TIMEOUT: "healthy",
    KeyStatus.SERVER_ERROR: "healthy",
    KeyStatus.SERVICE_UNAVAILABLE: "healthy",
    KeyStatus.OVERLOADED: "healthy",
    KeyStatus.BAD_REQUEST: "healthy",
    KeyStatus.STREAM_DISCONNECT: "healthy",
    KeyStatus.AUTH_REFUSED: "healthy",
}
"""The state a stored status leads to in a gateway's pool (the pool's own knowledge aside)."""

KEY_LEVEL = frozenset(s for s, state in STATE_OF_STATUS.items() if state == "invalid")
"""Statuses that take a key out of every scope of the pool."""
BLOCKING = frozenset(s for s, state in STATE_OF_STATUS.items() if state in ("no_quota", "no_model"))
"""Statuses that block a scope until the store lifts them (or their deadline passes)."""


def state_of_status(status: str) -> KeyState:
    """The state a stored status stands for; a status this version does not know (written by
    a newer one) counts as `untested`, the state of a key nothing is known about."""
    try:
        return STATE_OF_STATUS[KeyStatus(status)]
    except ValueError:
        return "untested"


DISABLED = "disabled"
"""What the commands show for a key `llmgateway keys disable` took out of service, whatever its
status: neither gateways nor the Keeper use it until `llmgateway keys enable`. No gateway's
pool holds such a key, so it is no `KeyState`."""


def shown_state(status: str) -> str:
    """The state the commands show for a stored status, or for `DISABLED` (which
    `llmgateway status` counts in place of the disabled keys' own statuses)."""
    return DISABLED if status == DISABLED else state_of_status(status)
