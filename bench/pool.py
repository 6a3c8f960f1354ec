"""Micro-benchmark of the key pool: acquire + release per second, and snapshot load time.

    .venv/bin/python bench/pool.py [--ops 200000]

Scenarios: all keys healthy; 90 % of the keys cooling down after a 429 (selection must skip
them); 99 % cooling. Each with least-in-flight (two random choices) and round-robin selection,
on 1,000 and 100,000 keys. `now` advances 1 ms per operation, as under load.
"""

from __future__ import annotations

import argparse
import random
import time

from llmgateway.config.settings import OutlierDetection, Selection
from llmgateway.core.outcomes import ALL_MODELS, Blame, ErrorReason, KeyStatus, Outcome
from llmgateway.core.pool import KeyPool
from llmgateway.core.pool_keys import KeyEntry, Lease

OK = Outcome(None, Blame.NONE, 200)
LIMITED = Outcome(ErrorReason.RATE_LIMITED, Blame.KEY, 429, 10_000.0)
T0 = 1_700_000_000.0


def build(keys: int, selection: Selection) -> tuple[KeyPool, float]:
    pool = KeyPool(
        "bench",
        shared=True,
        models=("m",),
        selection=selection,
        outlier=OutlierDetection(),
        rng=random.Random(1),
    )
    entries = [
        KeyEntry(i, f"sk-bench-{i:08d}-0123456789", ALL_MODELS, KeyStatus.VALID, None)
        for i in range(keys)
    ]
    started = time.perf_counter()
    pool.load(entries, T0)
    return pool, time.perf_counter() - started


def cool_down(pool: KeyPool, share: float) -> None:
    """Rate-limit `share` of the keys, the way a 429 storm would."""
    target = int(pool.size * share)
    cooled = 0
    while cooled < target:
        lease = pool.acquire("m", T0)
        assert isinstance(lease, Lease)
        pool.release(lease, LIMITED, T0)
        cooled += 1


def run(pool: KeyPool, ops: int) -> float:
    acquire, release = pool.acquire, pool.release
    now = T0
    started = time.perf_counter()
    for _ in range(ops):
        lease = acquire("m", now)
        assert isinstance(lease, Lease)
        release(lease, OK, now)
        now += 0.001
    return ops / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000, help="acquire+release per cell")
    args = parser.parse_args()
    print(f"{'keys':>8} {'selection':>15} {'cooling':>8} {'load s':>8} {'ops/s':>10} {'µs/op':>7}")
    for keys in (1_000, 100_000):
        for selection in (Selection.LEAST_INFLIGHT, Selection.ROUND_ROBIN):
            for share in (0.0, 0.9, 0.99):
                pool, load = build(keys, selection)
                cool_down(pool, share)
                rate = run(pool, args.ops)
                print(
                    f"{keys:>8} {selection.value:>15} {share:>8.0%} {load:>8.3f} "
                    f"{rate:>10,.0f} {1e6 / rate:>7.2f}"
                )


if __name__ == "__main__":
    main()
