"""What the Keeper's steps report: a round's progress and summaries of each step."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgateway.keeper.probes import Kind
from llmgateway.keyfiles import SyncReport


@dataclass(frozen=True, slots=True)
class Progress:
    """A round's progress: rows judged so far out of the rows due at its start, by outcome,
    after `seconds`."""

    done: int
    due: int
    healthy: int = 0
    failed: int = 0
    verifying: int = 0
    egress: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Rows judged per second so far (0 before the first)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every due row is judged at the rate so far (None: no rate yet)."""
        rate = self.rate
        return max(self.due - self.done, 0) / rate if rate > 0 else None


@dataclass(slots=True)
class Tally:
    """A round's running counts (mutable, owned by one round)."""

    due: int = 0
    kinds: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))
    requests: int = 0
    writes: int = 0
    timed_out: int = 0

    @property
    def done(self) -> int:
        return sum(self.kinds.values())

    def progress(self, seconds: float) -> Progress:
        """The counts so far, `seconds` into the round."""
        k = self.kinds
        return Progress(
            self.done,
            self.due,
            k[Kind.HEALTHY],
            k[Kind.FAILED],
            k[Kind.VERIFYING],
            k[Kind.EGRESS],
            seconds,
        )


@dataclass(frozen=True, slots=True)
class RoundSummary:
    """What one probe round did: rows marked healthy or failed, rows awaiting verification,
    rows whose probe failed on our side, HTTP requests sent, store write transactions, and
    providers whose round was cut by `task_timeout_sec`; `stopped` when a stop (Ctrl-C,
    SIGTERM) ended it early. What a round did not probe stays due."""

    due: int
    healthy: int
    failed: int
    verifying: int
    egress: int
    requests: int
    writes: int
    timed_out: int
    seconds: float
    stopped: bool = False

    @property
    def probed(self) -> int:
        return self.healthy + self.failed + self.verifying + self.egress


@dataclass(frozen=True, slots=True)
class ProxySummary:
    """What one proxy round found."""

    alive: int = 0
    dead: int = 0


@dataclass(frozen=True, slots=True)
class MaintenanceSummary:
    """What one maintenance pass did: whether the purge ran and what it deleted, whether
    VACUUM ran (each runs only when due)."""

    purged: bool = False
    purged_keys: int = 0
    purged_proxies: int = 0
    vacuumed: bool = False


@dataclass(frozen=True, slots=True)
class ModelListSummary:
    """What one fetch of the upstream model lists did, in providers: lists stored anew, found
    unchanged, fetches that failed (the previous list kept), and providers without a key to
    fetch with (tried again at the next sync)."""

    changed: int = 0
    unchanged: int = 0
    failed: int = 0
    without_key: int = 0


@dataclass(frozen=True, slots=True)
class OnceSummary:
    """What `worker --once` did: the sync, the proxy round, the key probe round, the
    maintenance that was due (skipped, like the model lists, after a stop), and how many bulk
    jobs it ran to their end."""

    sync: SyncReport
    proxies: ProxySummary
    round: RoundSummary
    maintenance: MaintenanceSummary
    jobs: int = 0

    @property
    def stopped(self) -> bool:
        return self.round.stopped
