"""What tests share besides fixtures (those are in tests/conftest.py): the test servers' URLs, a
clock moved by hand, waiting on a condition, the CLI as a child process, free ports and
readiness, the gateway's settings on the fake upstream and a gateway started in the test's own
event loop, and a few file makers (Kubernetes secret mounts, config files).

Config documents and key files come from `llmgateway.testing.configs`, which `llmgateway demo`
uses too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy.engine import make_url

from llmgateway.conductor.app import Conductor, create_app
from llmgateway.conductor.serving import running
from llmgateway.config.settings import MetricsSettings, Settings, WorkerSettings
from llmgateway.observe.metrics import Metrics
from llmgateway.observe.metrics_http import keeper_metrics
from llmgateway.store import Store
from llmgateway.testing.configs import two_providers, write_keys
from llmgateway.testing.fake_upstream import FakeUpstream

PG_URL = os.environ.get(
    "LLMGATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("LLMGATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

OPENAI_TOKEN = "gw-openai-token-0001"
GEMINI_TOKEN = "gw-gemini-token-0002"
METRICS_TOKEN = "gw-metrics-token-0003"
METRICS_AUTH = {"authorization": f"Bearer {METRICS_TOKEN}"}
"""What `/metrics` and the details of `/readyz` need (the metrics token of `gateway_settings`)."""


def libpq_dsn(url: str, database: str | None = None) -> str:
    """A SQLAlchemy PostgreSQL URL as asyncpg/libpq take it, optionally for another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@dataclass(slots=True)
class ManualClock:
    """A clock for the store that only moves when a test moves it."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- other tests' leftovers ----------------------------------------------------------------


async def forget_leftovers(caplog: Any) -> None:
    """Collect now what earlier tests left for the garbage collector, and forget what that
    logged: an SDK client left open (`openai.AsyncOpenAI`) closes itself when collected by
    scheduling its close on the running loop, which fails on the client's own closed loop and
    is logged as "Task exception was never retrieved" in whichever test is running then. A
    test that asserts it logged no error calls this first (a full collection per test would
    cost the suite minutes)."""
    before = asyncio.all_tasks()
    gc.collect()
    closing = asyncio.all_tasks() - before
    await asyncio.gather(*closing, return_exceptions=True)  # they fail, their failure taken
    caplog.clear()


# --- waiting ------------------------------------------------------------------------------


async def eventually(
    condition: Callable[[], object],
    within: float = 10.0,
    step: float = 0.01,
    *,
    what: str | None = None,
) -> float:
    """Wait until `condition()` (plain or async) is true, looking every `step` seconds; returns
    how many seconds that took. Raises AssertionError saying what did not happen (`what`, else
    the condition's source) when it is still false after `within` seconds."""
    started = time.monotonic()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        took = time.monotonic() - started
        if result:
            return took
        if took >= within:
            raise AssertionError(f"not within {within} s: {what or _describe(condition)}")
        await asyncio.sleep(step)


def _describe(condition: Callable[[], object]) -> str:
    name = getattr(condition, "__qualname__", repr(condition))
    if name.endswith("<lambda>"):
        with contextlib.suppress(OSError, TypeError):
            return " ".join(inspect.getsource(condition).split())[:300]
    return name


async def wait_ready(
    url: str, process: asyncio.subprocess.Process | None = None, within: float = 30.0
) -> None:
    """Wait until `url/readyz` answers 200 (connection refusals count as not yet); fails at
    once if `process`, the gateway's, has ended."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def ready() -> bool:
            if process is not None and process.returncode is not None:
                raise AssertionError(f"the gateway exited ({process.returncode}) during start-up")
            try:
                async with session.get(f"{url}/readyz") as response:
                    return response.status == 200
            except (aiohttp.ClientConnectionError, TimeoutError):
                return False

        await eventually(ready, within, step=0.05, what=f"{url}/readyz answering 200")


# --- processes and ports ------------------------------------------------------------------


async def run_cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run `python -m llmgateway ARGS` to its end: (exit code, stdout, stderr). Killed, and
    TimeoutError raised, if it takes longer than `timeout` seconds."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmgateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def free_port() -> int:
    """A loopback TCP port free at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- gateways on the fake upstream --------------------------------------------------------


def gateway_settings(
    tmp_path: Path,
    upstream: FakeUpstream | str,
    gateway_section: dict[str, Any] | None = None,
    **provider_extra: Any,
) -> Settings:
    """Two providers on `upstream` (the fake, or another's URL), `openai` (gpt-4o-mini, gpt-4o)
    and `gemini`, with quick retries on other keys, a 0.2 s refresh and the metrics token
    `METRICS_TOKEN`. `provider_extra` goes to both providers (a `gateway_policy` there replaces
    the retries)."""
    retry = {
        "enabled": True,
        "on_key_error": {"attempts": 5, "backoff_sec": 0.0},
        "on_server_error": {"attempts": 3, "backoff_sec": 0.0},
    }
    document = two_providers(
        tmp_path,
        upstream,
        openai_token=OPENAI_TOKEN,
        gemini_token=GEMINI_TOKEN,
        openai_models=("gpt-4o-mini", "gpt-4o"),
        both={"gateway_policy": {"retry": retry}, **provider_extra},
        gateway={"refresh_interval_sec": 0.2, **(gateway_section or {})},
        metrics={"access_token": METRICS_TOKEN},
    )
    return Settings.model_validate(document)


BREAKER = {
    "enabled": True,
    "failure_threshold": 5,
    "backoff": {"base_duration_sec": 1.0, "max_duration_sec": 2.0, "factor": 2.0},
    "jitter_sec": 0.2,
    "trial_calls": 2,
}
"""The breaker of `chaos_settings`: opens after 5 provider-side failures in a row, half-open
within 1-2.2 s. So a breaker recovers at most 2.2 s after its fault ends (plus one trial call)."""
BREAKER_RECOVERY_SEC = 2.2 + 1.0

EJECTION = {
    "consecutive_failures": 2,
    "base_ejection_sec": 2.0,
    "max_ejection_sec": 4.0,
    "default_cooldown_sec": 2.0,
    "max_cooldown_sec": 4.0,
}
"""The outlier ejection of the chaos settings: 2 failures in a row, ejections and cooldowns of
2-4 s."""


def chaos_settings(
    tmp_path: Path, upstream: FakeUpstream | str, database_url: str | None = None, **extra: Any
) -> Settings:
    """Two providers on `upstream`, `openai` and `gemini` (both sharing key status
    across models), with resilience times scaled down: the `BREAKER`, ejections of 2 s, read
    timeouts of 0.5 s. `extra` goes to both providers; its `gateway_policy` is merged into the
    policy."""
    policy: dict[str, Any] = {
        "retry": {
            "enabled": True,
            "on_key_error": {"attempts": 11, "backoff_sec": 0.0},
            "on_server_error": {"attempts": 4, "backoff_sec": 0.01},
        },
        "circuit_breaker": BREAKER,
        "outlier_detection": EJECTION,
        # the budget still caps retries; sized so the first burst onto unknown bad keys fits
        "retry_budget": {"percent": 20, "min_concurrent": 16},
        "egress_rate_limit": {"window_sec": 5, "min_keys": 4, "ratio": 0.8, "cooldown_sec": 3},
    }
    policy.update(extra.pop("gateway_policy", {}))
    timeouts = {"connect": 0.5, "read": 0.5, "total": 10}
    document = two_providers(
        tmp_path,
        upstream,
        openai_token=OPENAI_TOKEN,
        gemini_token=GEMINI_TOKEN,
        both={"gateway_policy": policy, "timeouts": timeouts, **extra},
        openai={"shared_key_status": True},
        gateway={"refresh_interval_sec": 0.2},
        database={"url": database_url or f"sqlite:///{tmp_path / 'gw.db'}"},
    )
    return Settings.model_validate(document)


@dataclass(frozen=True, slots=True)
class Running:
    """A started gateway: its URL and the process object (pools, guards, writer, upstream)."""

    url: str
    gateway: Conductor
    app: Any

    def cooldowns(self) -> dict[tuple[str, str], float]:
        """`llmgateway_key_cooldowns_total` by (provider, reason): every key the gateway took
        out of rotation (ejected, cooled, invalidated) since it started."""
        found = self.samples("llmgateway_key_cooldowns_total")
        return {(labels["provider"], labels["reason"]): value for labels, value in found}

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """The samples named `name` in the gateway's registry (the tallies kept between
        scrapes handed over first), each as (labels, value)."""
        metrics = self.app.state.edge.attempt_loop.metrics
        metrics.flush()
        return [
            (sample.labels, sample.value)
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == name
        ]


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[str]]
"""The `gateway` fixture: `async with gateway(openai=[keys], gemini=[keys], ...) as url:`."""


@contextlib.asynccontextmanager
async def start_gateway(settings: Settings, seed: int = 11) -> AsyncIterator[Running]:
    """The real gateway app served on a loopback port in this event loop (its key choices
    seeded with `seed`), until the block ends."""
    app = create_app(settings, rng=random.Random(seed))
    async with running(app) as url:
        # create_app is typed ASGIApp; the router it returns carries .state
        yield Running(url, app.state.conductor, app)  # type: ignore[attr-defined]


def settings_with(tmp_path: Path, fake: FakeUpstream, **metrics: Any) -> Settings:
    """`gateway_settings` with one good key each and the `metrics` section made of `metrics`
    (without one: the default, no metrics token)."""
    write_keys(tmp_path / "keys" / "openai", ["sk-good-openai-000000000001"])
    write_keys(tmp_path / "keys" / "gemini", ["AIza-good-gemini-00000000001"])
    return gateway_settings(tmp_path, fake).model_copy(
        update={"metrics": MetricsSettings(**metrics)}
    )


@contextlib.asynccontextmanager
async def keeper_listener(settings: Settings) -> AsyncIterator[str]:
    """The Keeper's own metrics listener on a free loopback port, on a migrated store; yields
    its base URL."""
    port = free_port()
    settings = settings.model_copy(update={"worker": WorkerSettings(metrics_port=port)})
    async with (
        await Store.configured(settings.database) as store,
        keeper_metrics(settings, Metrics.create(), store),
    ):
        await store.upgrade()
        yield f"http://127.0.0.1:{port}"


# --- files --------------------------------------------------------------------------------


def kubernetes_mount(folder: Path, version: str, keys: str) -> None:
    """What kubelet writes for a secret volume: the data in a timestamped hidden folder, `..data`
    linking to it, and each file a link through `..data` (the swap is one rename of `..data`)."""
    data = folder / f"..{version}"
    data.mkdir(parents=True, exist_ok=True)
    (data / "keys.txt").write_text(keys, encoding="utf-8")
    (folder / "..data_tmp").symlink_to(f"..{version}")
    (folder / "..data_tmp").rename(folder / "..data")
    if not (folder / "keys.txt").is_symlink():
        (folder / "keys.txt").symlink_to("..data/keys.txt")


PROVIDER_YAML_TOKEN = "tok-bombs-0123456789abcdef"
PROVIDER_YAML = f"""
providers:
  openai:
    provider_type: openai_like
    keys_path: keys/openai
    api_base_url: https://api.openai.com/v1
    default_model: gpt-4o-mini
    models:
      gpt-4o-mini: {{endpoint_suffix: /chat/completions}}
    access_control: {{gateway_access_token: {PROVIDER_YAML_TOKEN}}}
"""
"""A valid config file with one provider, to which the config-bomb tests add their bombs."""


def billion_laughs(levels: int = 9) -> str:
    """The classic: each level lists the previous one nine times (9^levels values)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [" + ",".join([f"*l{n - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"
