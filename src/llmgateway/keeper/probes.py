"""The Keeper's judgement, pure: what a probe result means for a key's row and when to look again.

Everything here is a function of (the row's state, the probe's `Outcome`, the provider's
`worker_health_policy`, `now`); no I/O, no clock. The original project's semantics are kept:

- the next check follows the result (`on_success_hr`, `on_rate_limit_hr`, `on_no_quota_hr`,
  `on_invalid_key_days`, `on_no_access_days`, `on_server_error_min`, `on_overload_min`,
  `on_other_error_hr`), and is never sooner than the upstream's `Retry-After`;
- a retryable failure of a healthy (or untested) key is confirmed by up to
  `verification_attempts` re-probes, each `verification_delay_sec` later, before it is marked;
  the re-probe is a due time, so no batch slot sleeps;
- a key failing for `quarantine_after_days` is checked every `quarantine_recheck_interval_days`,
  one failing for `stop_checking_after_days` only once a year;
- downtime amnesty: a check that runs more than `amnesty_threshold_days` later than scheduled
  (the Keeper was down) starts the failure streak over.

Improvements: a failure on our own side of the wire (`Blame.EGRESS`) never marks the key, and
the cheap auth probe (models list) decides alone when it proves a key invalid.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llmgateway.config.settings import HealthPolicy
from llmgateway.core.outcomes import Blame, ErrorReason, KeyStatus, Outcome

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
STOPPED_RECHECK_SEC = 365 * DAY
"""How far out a key that failed for `stop_checking_after_days` is scheduled."""

_HEALTHY = frozenset({KeyStatus.VALID, KeyStatus.UNTESTED})
_AUTH_FIRST = frozenset({KeyStatus.UNTESTED, KeyStatus.INVALID_KEY, KeyStatus.NO_ACCESS})
_AUTH_DECIDES = frozenset({ErrorReason.INVALID_KEY, ErrorReason.NO_ACCESS})


class Kind(enum.StrEnum):
    """What a verdict does to the row."""

    HEALTHY = "healthy"  # marked valid
    FAILED = "failed"  # marked with the failure's reason
    VERIFYING = "verifying"  # not marked yet: a re-probe is scheduled to confirm
    EGRESS = "egress"  # our side failed: the key is not marked, only rescheduled


@dataclass(frozen=True, slots=True)
class RowState:
    """A (key, model) row as the Keeper claimed it. `scheduled_at` is its `next_check_at`."""

    status: KeyStatus
    failing_since: float | None
    scheduled_at: float
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The row's new state. When `kind` is VERIFYING or EGRESS, `status` and `failing_since`
    are the old ones (nothing is marked); only the schedule and `attempts` change."""

    kind: Kind
    status: KeyStatus
    reason: ErrorReason | None
    failing_since: float | None
    next_check_at: float
    attempts: int
    cooldown_until: float | None = None

    @property
    def marks(self) -> bool:
        """True when the key's status is written (a probe that proved something)."""
        return self.kind in (Kind.HEALTHY, Kind.FAILED)


def wants_auth_probe(status: KeyStatus) -> bool:
    """Whether the cheap auth probe goes first: for untested and invalid keys it can tell,
    without spending tokens, that a key is (still) invalid."""
    return status in _AUTH_FIRST


def auth_probe_decides(outcome: Outcome) -> bool:
    """Whether the auth probe's outcome is the verdict: it proved the key invalid or without
    access, or our side failed. Anything else (a pass, a 429, a 5xx) needs a generation probe."""
    return outcome.reason in _AUTH_DECIDES or outcome.blame is Blame.EGRESS


def judge(
    state: RowState, outcome: Outcome, policy: HealthPolicy, now: float, egress_retry_sec: float
) -> Verdict:
    """The row's new state after a probe with `outcome` at `now`."""
    if outcome.blame is Blame.EGRESS:
        return Verdict(
            Kind.EGRESS,
            state.status,
            None,
            state.failing_since,
            now + egress_retry_sec,
            state.attempts,
        )
    if outcome.reason is None:
        return Verdict(
            Kind.HEALTHY, KeyStatus.VALID, None, None, now + policy.on_success_hr * HOUR, 0
        )
    reason = outcome.reason
    failing_since = None if amnesty(state, policy, now) else state.failing_since
    if (
        reason.is_retryable
        and state.status in _HEALTHY
        and state.attempts < policy.verification_attempts
    ):
        wait = max(float(policy.verification_delay_sec), outcome.retry_after or 0.0)
        return Verdict(
            Kind.VERIFYING,
            state.status,
            None,
            state.failing_since,
            now + wait,
            state.attempts + 1,
        )
    since = now if failing_since is None else failing_since
    cooldown = None if outcome.retry_after is None else now + outcome.retry_after
    return Verdict(
        Kind.FAILED,
        status_for(reason),
        reason,
        since,
        next_check_at(reason, since, policy, now, outcome.retry_after),
        0,
        cooldown,
    )


def amnesty(state: RowState, policy: HealthPolicy, now: float) -> bool:
    """Whether this check runs so late (the Keeper was down) that the failure streak restarts."""
    return now - state.scheduled_at > policy.amnesty_threshold_days * DAY


def next_check_at(
    reason: ErrorReason,
    failing_since: float,
    policy: HealthPolicy,
    now: float,
    retry_after: float | None = None,
) -> float:
    """When a key failing with `reason` since `failing_since` is probed again: quarantine and
    stop-checking first, else by reason; never sooner than the upstream's `retry_after`."""
    failing_for = now - failing_since
    if failing_for >= policy.stop_checking_after_days * DAY:
        return now + STOPPED_RECHECK_SEC
    if failing_for >= policy.quarantine_after_days * DAY:
        delay = policy.quarantine_recheck_interval_days * DAY
    else:
        delay = _delay(reason, policy)
    return now + max(delay, retry_after or 0.0)


def _delay(reason: ErrorReason, policy: HealthPolicy) -> float:
    if reason is ErrorReason.INVALID_KEY:
        return policy.on_invalid_key_days * DAY
    if reason is ErrorReason.NO_ACCESS:
        return policy.on_no_access_days * DAY
    if reason is ErrorReason.RATE_LIMITED:
        return policy.on_rate_limit_hr * HOUR
    if reason is ErrorReason.NO_QUOTA:
        return policy.on_no_quota_hr * HOUR
    if reason in (ErrorReason.OVERLOADED, ErrorReason.SERVICE_UNAVAILABLE):
        return policy.on_overload_min * MINUTE
    if reason.is_retryable:  # server errors, timeouts, network errors, broken streams
        return policy.on_server_error_min * MINUTE
    return policy.on_other_error_hr * HOUR


def status_for(reason: ErrorReason) -> KeyStatus:
    """The stored status for a failure reason (egress faults are never stored on a key, and a
    fault of the probe's own request, which an operator's rule may name, is `bad_request`)."""
    if reason is ErrorReason.EGRESS_ERROR:
        return KeyStatus.NETWORK_ERROR
    if reason in _ABOUT_THE_REQUEST:
        return KeyStatus.BAD_REQUEST
    return KeyStatus(reason.value)


# a probe's payload too long for the model (vLLM counts `max_tokens` in): the key is fine
_ABOUT_THE_REQUEST = frozenset({ErrorReason.CONTEXT_LENGTH, ErrorReason.FORBIDDEN})
