"""The full-length soak: 30 minutes of load on a gateway process with 100,000 keys.

    .venv/bin/python bench/soak.py [--minutes 30] [--concurrency 16] [--keys 100000]

The fake upstream runs in its own process; the gateway is `llmgateway gateway` on SQLite.
Prints RSS and open descriptors once a minute, then the growth after a 1-minute warm-up.
`tests/soak/` runs the same thing for ~40 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from llmgateway.testing.soak import soak

sys.path.insert(0, str(Path(__file__).parent))
from run import METRICS_TOKEN, TOKEN, fake_upstream, gateway, write_config


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fake_upstream() as base:
        config = write_config(Path(tmp), base, args.keys)
        with gateway(config, 1) as (url, pid):
            report = asyncio.run(
                soak(
                    url,
                    TOKEN,
                    pid,
                    args.minutes * 60,
                    metrics_token=METRICS_TOKEN,
                    concurrency=args.concurrency,
                    sample_every=60,
                )
            )
    print(f"{'minute':>6} {'RSS MiB':>8} {'fds':>5} {'tasks':>6} {'requests':>10}")
    for s in report.samples:
        row = f"{s.at / 60:>6.1f} {s.rss_mib:>8.1f} {s.open_files:>5} {s.tasks:>6}"
        print(f"{row} {s.requests:>10}")
    print(
        f"requests {report.requests}, errors {report.errors}, RSS growth after warm-up "
        f"{report.growth_mib(60):+.1f} MiB, descriptors {report.file_growth(60):+d}, "
        f"event-loop tasks {report.task_growth(60):+.0f}"
    )


if __name__ == "__main__":
    main()
