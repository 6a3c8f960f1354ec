"""The Keeper's pure scheduling: next checks, verification, quarantine, amnesty, egress."""

from __future__ import annotations

import pytest

from llmgateway.config.settings import HealthPolicy
from llmgateway.core.outcomes import Blame, ErrorReason, KeyStatus, Outcome, outcome_of
from llmgateway.keeper.probes import (
    DAY,
    HOUR,
    MINUTE,
    STOPPED_RECHECK_SEC,
    Kind,
    RowState,
    auth_probe_decides,
    judge,
    next_check_at,
    wants_auth_probe,
)

NOW = 1_800_000_000.0
POLICY = HealthPolicy()
EGRESS_RETRY = 60.0
OK = Outcome(reason=None, blame=Blame.NONE, status=200)


def failure(reason: ErrorReason, retry_after: float | None = None) -> Outcome:
    return outcome_of(reason, 500, retry_after)


def state(
    status: KeyStatus = KeyStatus.VALID,
    failing_since: float | None = None,
    scheduled_at: float = NOW,
    attempts: int = 0,
) -> RowState:
    return RowState(status, failing_since, scheduled_at, attempts)


@pytest.mark.parametrize(
    ("reason", "delay"),
    [
        (ErrorReason.INVALID_KEY, 10 * DAY),
        (ErrorReason.NO_ACCESS, 10 * DAY),
        (ErrorReason.RATE_LIMITED, 4 * HOUR),
        (ErrorReason.NO_QUOTA, 4 * HOUR),
        (ErrorReason.OVERLOADED, 60 * MINUTE),
        (ErrorReason.SERVICE_UNAVAILABLE, 60 * MINUTE),
        (ErrorReason.SERVER_ERROR, 30 * MINUTE),
        (ErrorReason.TIMEOUT, 30 * MINUTE),
        (ErrorReason.NETWORK_ERROR, 30 * MINUTE),
        (ErrorReason.BAD_REQUEST, 1 * HOUR),
        (ErrorReason.NO_MODEL, 1 * HOUR),
        (ErrorReason.UNKNOWN, 1 * HOUR),
    ],
)
def test_each_failure_is_rechecked_after_its_policy_delay(
    reason: ErrorReason, delay: float
) -> None:
    verdict = judge(state(KeyStatus.SERVER_ERROR, NOW - HOUR), failure(reason), POLICY, NOW, 60)
    assert verdict.kind is Kind.FAILED
    assert verdict.status == KeyStatus(reason.value)
    assert verdict.next_check_at == NOW + delay
    assert verdict.failing_since == NOW - HOUR  # the streak goes on


@pytest.mark.parametrize("reason", [ErrorReason.CONTEXT_LENGTH, ErrorReason.FORBIDDEN])
def test_a_fault_of_the_probes_own_request_is_stored_as_bad_request(reason: ErrorReason) -> None:
    """Reasons about the request have no stored status: the key's state stays `healthy`."""
    verdict = judge(state(KeyStatus.VALID), outcome_of(reason, 400, None), POLICY, NOW, 60)
    assert (verdict.kind, verdict.status, verdict.reason) == (
        Kind.FAILED,
        KeyStatus.BAD_REQUEST,
        reason,
    )
    assert verdict.next_check_at == NOW + POLICY.on_other_error_hr * HOUR


def test_policy_values_are_used_not_defaults() -> None:
    policy = HealthPolicy(on_invalid_key_days=3, on_rate_limit_hr=2, on_server_error_min=7)
    since = NOW - MINUTE
    assert next_check_at(ErrorReason.INVALID_KEY, since, policy, NOW) == NOW + 3 * DAY
    assert next_check_at(ErrorReason.RATE_LIMITED, since, policy, NOW) == NOW + 2 * HOUR
    assert next_check_at(ErrorReason.SERVER_ERROR, since, policy, NOW) == NOW + 7 * MINUTE


def test_success_marks_valid_clears_the_streak_and_waits_on_success_hr() -> None:
    verdict = judge(state(KeyStatus.RATE_LIMITED, NOW - DAY, attempts=2), OK, POLICY, NOW, 60)
    assert verdict.kind is Kind.HEALTHY
    assert verdict.marks
    assert verdict.status is KeyStatus.VALID
    assert verdict.failing_since is None
    assert verdict.attempts == 0
    assert verdict.next_check_at == NOW + 1 * HOUR


def test_a_first_failure_starts_the_streak_now() -> None:
    verdict = judge(state(KeyStatus.UNTESTED), failure(ErrorReason.INVALID_KEY), POLICY, NOW, 60)
    assert verdict.kind is Kind.FAILED
    assert verdict.failing_since == NOW


def test_retryable_failure_of_a_healthy_key_is_verified_before_it_is_marked() -> None:
    row = state(KeyStatus.VALID)
    for attempt in range(1, POLICY.verification_attempts + 1):
        verdict = judge(row, failure(ErrorReason.SERVER_ERROR), POLICY, NOW, 60)
        assert verdict.kind is Kind.VERIFYING
        assert not verdict.marks
        assert verdict.status is KeyStatus.VALID  # unchanged while verifying
        assert verdict.attempts == attempt
        assert verdict.next_check_at == NOW + POLICY.verification_delay_sec
        row = state(KeyStatus.VALID, attempts=verdict.attempts)
    final = judge(row, failure(ErrorReason.SERVER_ERROR), POLICY, NOW, 60)
    assert final.kind is Kind.FAILED
    assert final.status is KeyStatus.SERVER_ERROR
    assert final.attempts == 0
    assert final.next_check_at == NOW + 30 * MINUTE


def test_verification_passing_marks_healthy_and_resets_attempts() -> None:
    verdict = judge(state(KeyStatus.VALID, attempts=2), OK, POLICY, NOW, 60)
    assert verdict.kind is Kind.HEALTHY
    assert verdict.attempts == 0


def test_fatal_failures_and_already_failing_keys_skip_verification() -> None:
    fatal = judge(state(KeyStatus.VALID), failure(ErrorReason.INVALID_KEY), POLICY, NOW, 60)
    assert fatal.kind is Kind.FAILED
    again = judge(
        state(KeyStatus.RATE_LIMITED, NOW - HOUR),
        failure(ErrorReason.RATE_LIMITED),
        POLICY,
        NOW,
        60,
    )
    assert again.kind is Kind.FAILED


def test_no_verification_when_attempts_are_zero() -> None:
    policy = HealthPolicy(verification_attempts=0)
    verdict = judge(state(), failure(ErrorReason.OVERLOADED), policy, NOW, 60)
    assert verdict.kind is Kind.FAILED
    assert verdict.status is KeyStatus.OVERLOADED


def test_verification_waits_for_retry_after_when_longer() -> None:
    verdict = judge(state(), failure(ErrorReason.RATE_LIMITED, retry_after=300), POLICY, NOW, 60)
    assert verdict.kind is Kind.VERIFYING
    assert verdict.next_check_at == NOW + 300


def test_retry_after_is_honoured_and_sets_a_cooldown() -> None:
    policy = HealthPolicy(on_rate_limit_hr=1, verification_attempts=0)
    verdict = judge(
        state(), failure(ErrorReason.RATE_LIMITED, retry_after=3 * HOUR), policy, NOW, 1
    )
    assert verdict.next_check_at == NOW + 3 * HOUR
    assert verdict.cooldown_until == NOW + 3 * HOUR
    short = judge(state(), failure(ErrorReason.RATE_LIMITED, retry_after=5), policy, NOW, 1)
    assert short.next_check_at == NOW + 1 * HOUR  # the policy's delay is longer


def test_quarantine_after_quarantine_after_days() -> None:
    since = NOW - 31 * DAY
    verdict = judge(
        state(KeyStatus.INVALID_KEY, since), failure(ErrorReason.SERVER_ERROR), POLICY, NOW, 60
    )
    assert verdict.next_check_at == NOW + POLICY.quarantine_recheck_interval_days * DAY
    just_before = next_check_at(ErrorReason.SERVER_ERROR, NOW - 29 * DAY, POLICY, NOW)
    assert just_before == NOW + 30 * MINUTE


def test_stop_checking_after_stop_checking_after_days() -> None:
    since = NOW - 90 * DAY
    verdict = judge(
        state(KeyStatus.INVALID_KEY, since), failure(ErrorReason.INVALID_KEY), POLICY, NOW, 60
    )
    assert verdict.next_check_at == NOW + STOPPED_RECHECK_SEC
    assert verdict.failing_since == since


def test_downtime_amnesty_restarts_the_streak_when_the_check_runs_late() -> None:
    since = NOW - 60 * DAY  # would be quarantined
    late = state(KeyStatus.SERVER_ERROR, since, scheduled_at=NOW - 3 * DAY)
    verdict = judge(late, failure(ErrorReason.SERVER_ERROR), POLICY, NOW, 60)
    assert verdict.failing_since == NOW
    assert verdict.next_check_at == NOW + 30 * MINUTE
    on_time = state(KeyStatus.SERVER_ERROR, since, scheduled_at=NOW - 1 * DAY)
    kept = judge(on_time, failure(ErrorReason.SERVER_ERROR), POLICY, NOW, 60)
    assert kept.failing_since == since
    assert kept.next_check_at == NOW + 10 * DAY


def test_an_egress_failure_never_marks_the_key() -> None:
    row = state(KeyStatus.VALID, None, attempts=1)
    egress = Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS)
    verdict = judge(row, egress, POLICY, NOW, EGRESS_RETRY)
    assert verdict.kind is Kind.EGRESS
    assert not verdict.marks
    assert verdict.status is KeyStatus.VALID
    assert verdict.attempts == 1
    assert verdict.next_check_at == NOW + EGRESS_RETRY


def test_the_auth_probe_goes_first_for_untested_and_invalid_keys() -> None:
    assert wants_auth_probe(KeyStatus.UNTESTED)
    assert wants_auth_probe(KeyStatus.INVALID_KEY)
    assert wants_auth_probe(KeyStatus.NO_ACCESS)
    assert not wants_auth_probe(KeyStatus.VALID)
    assert not wants_auth_probe(KeyStatus.RATE_LIMITED)


def test_the_auth_probe_decides_only_invalid_keys_and_egress() -> None:
    assert auth_probe_decides(failure(ErrorReason.INVALID_KEY))
    assert auth_probe_decides(failure(ErrorReason.NO_ACCESS))
    assert auth_probe_decides(Outcome(ErrorReason.EGRESS_ERROR, Blame.EGRESS))
    assert not auth_probe_decides(OK)
    assert not auth_probe_decides(failure(ErrorReason.RATE_LIMITED))
    assert not auth_probe_decides(failure(ErrorReason.SERVER_ERROR))
