"""Logging: structlog over the standard library, one format for every line of the process.

`configure()` routes everything (our loggers, uvicorn, alembic, SQLAlchemy, aiohttp) through one
structlog `ProcessorFormatter`: `logging.format` `console` (readable) or `json` (one object per
line), on stderr and, with `logging.dir`, also in rotated files there (`<name>.log`, JSON).

A request binds its context once (`bind_request`, `bind_attempt`, `bind_outcome`); every line
logged while it runs carries `request_id`, `provider`, `model`, `key` (a fingerprint, never the
key), `attempt` and `outcome`. As a last line of defence, `Redactor` masks anything that looks
like a key or token (`sk-…`, `AIza…`, `Bearer …`, `key=…`) or equals a configured secret,
and removes terminal escape sequences: a line is plain text (console lines are coloured only on
a terminal, `coloured`). The request lines themselves are `observe.access`'s.
"""

from __future__ import annotations

import bisect
import contextvars
import itertools
import logging
import logging.handlers
import os
import re
import sys
from array import array
from collections.abc import Iterable, Mapping, MutableMapping
from io import TextIOWrapper
from pathlib import Path
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

from llmgateway.config.settings import LoggingSettings, ProxyMode, Settings
from llmgateway.core.outcomes import Outcome
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.private_files import make_private_folder, private_opener

FILE_MAX_BYTES = 20 * 1024 * 1024
FILE_BACKUPS = 5
_QUIET = {"alembic": logging.WARNING, "aiosqlite": logging.INFO, "asyncio": logging.WARNING}

_SHAPES = re.compile(
    r"(?P<bearer>(?i:bearer)\s+)(?P<token>[A-Za-z0-9._~+/=:-]{8,})"
    r"|(?P<query>(?i:key)=)(?P<value>[^&\s\"']{8,})"
    r"|\bsk-[A-Za-z0-9_-]{12,}"
    r"|\bAIza[0-9A-Za-z_-]{20,}"
)
_TOKENS = re.compile(r"[A-Za-z0-9._~+/=:-]{8,}")
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_]?)")
"""Terminal escape sequences (CSI like colours, OSC like titles, and lone ESCs): never written."""
_OWN_FIELDS = frozenset(
    {"level", "logger", "timestamp", "attempt", "attempts", "status", "duration_ms", "outcome"}
    | {"provider", "method", "client"}
)
"""Fields whose values the gateway makes itself and that never hold a secret or an escape
(names, numbers, an address): not scrubbed, a third of the cost of a request line. Whatever a
client or an upstream sends (the path, the request id, the model, messages) is, and so is `key`
whatever it holds."""
_DEMOTED = {"watchfiles.main": logging.INFO}
"""Loggers whose lines at this level (and below) are DEBUG lines for us: watchfiles' "1 change
detected" (the sync that follows logs what changed)."""


class Digests:
    """A set of strings kept as the sorted array of their 64-bit hashes.

    100,000 keys take 0.8 MB here, against ~13 MB as a set of strings (a second copy of what
    the pool holds). A hash collision can only mask one token too many. Hashes added later wait
    in a small set until they are a quarter of the array, then are merged in: a pool loaded 500
    keys at a time does not copy the whole array 200 times.
    """

    __slots__ = ("_hashes", "_recent")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self._hashes = array("q", sorted({hash(item) for item in items}))
        self._recent: set[int] = set()

    def update(self, items: Iterable[str]) -> None:
        """Add `items`."""
        self._recent.update(
            found for found in {hash(item) for item in items} if not self._has(found)
        )
        if len(self._recent) > max(_MERGE_AT, len(self._hashes) // 4):
            self._hashes = array("q", sorted(itertools.chain(self._hashes, self._recent)))
            self._recent = set()

    def __contains__(self, item: object) -> bool:
        return self._has(hash(item))

    def _has(self, found: int) -> bool:
        if found in self._recent:
            return True
        at = bisect.bisect_left(self._hashes, found)
        return at < len(self._hashes) and self._hashes[at] == found

    def __len__(self) -> int:
        return len(self._hashes) + len(self._recent)


_MERGE_AT = 4096
"""Hashes that may wait outside the sorted array, at the least."""


class Redactor:
    """A structlog processor masking every string value that holds a secret."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = Digests(s for s in secrets if len(s) >= 8)

    def add(self, secrets: Iterable[str]) -> None:
        """Know more secrets (e.g. keys that joined after start-up)."""
        self.secrets.update(s for s in secrets if len(s) >= 8)

    def redact(self, text: str) -> str:
        """`text` with every secret in it masked."""
        text = _SHAPES.sub(_mask_match, text)
        if self.secrets and any(t in self.secrets for t in _TOKENS.findall(text)):
            text = _TOKENS.sub(lambda m: _mask_known(m.group(0), self.secrets), text)
        return text

    def scrub(self, body: bytes) -> bytes:
        """`body` (any bytes, kept as they are) with every secret in it masked."""
        if not body:
            return body
        text = body.decode("utf-8", "surrogateescape")
        cleaned = self.redact(text)
        return body if cleaned == text else cleaned.encode("utf-8", "surrogateescape")

    def __call__(
        self, logger: object, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for name, value in event.items():
            if name not in _OWN_FIELDS:
                event[name] = self.clean(value)
        return event

    def clean(self, value: object) -> object:
        """`value` with secrets masked and terminal escapes removed: strings, and strings
        inside dicts, lists and tuples; numbers and None kept; anything else turned into
        masked text."""
        if isinstance(value, str):
            return _plain(self.redact(value))
        if value is None or isinstance(value, int | float | bool):
            return value
        if isinstance(value, dict):
            return {self.clean(k): self.clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.clean(v) for v in value]
        return _plain(self.redact(str(value)))


def _plain(text: str) -> str:
    """`text` without terminal escape sequences (a log line never colours or retitles a
    terminal, whatever a library or an upstream put in a message)."""
    return _ESCAPES.sub("", text) if "\x1b" in text else text


def _mask_match(match: re.Match[str]) -> str:
    if match.group("bearer"):
        return match.group("bearer") + mask(match.group("token"))
    if match.group("query"):
        return match.group("query") + mask(match.group("value"))
    return mask(match.group(0))


def _mask_known(token: str, secrets: Digests) -> str:
    return mask(token) if token in secrets else token


def known_secrets(settings: Settings, *, key_files: bool = True) -> set[str]:
    """Every secret the config names: gateway (providers' and gateway-wide), metrics and admin
    tokens, the database password, static proxy URLs, and (with `key_files`) the keys in the
    key files as they are now."""
    from llmgateway.keyfiles import parse_keys, read_folder

    found = {settings.metrics.access_token, settings.database.password, settings.admin.token}
    if settings.database.url:
        found.add(settings.database.url)
    if settings.limits.redis_url:
        found.add(settings.limits.redis_url)
    found.update(entry.token for entry in settings.gateway.tokens if entry.token)
    for provider in settings.providers.values():
        found.update(provider.access_control.tokens)
        proxy = provider.proxy_config
        if proxy.mode is ProxyMode.STATIC and proxy.static_url:
            found.add(proxy.static_url)
        if key_files:
            found.update(read_folder(provider.keys_path, parse_keys).values)
    return {s for s in found if s}


def setup(
    settings: Settings, name: str, level: str | None = None, *, key_files: bool = True
) -> Redactor:
    """`configure()` for a command: the config's logging section and every secret it names.
    Without `key_files` the keys are not read from their files: a gateway teaches the returned
    redactor its pool's keys as they load from the store (parsing 100,000 keys from the files
    would hold its start up)."""
    secrets = known_secrets(settings, key_files=key_files)
    return configure(settings.logging, secrets=secrets, name=name, level=level)


def configure(
    settings: LoggingSettings,
    *,
    secrets: Iterable[str] = (),
    name: str = "llmgateway",
    level: str | None = None,
) -> Redactor:
    """Route every logger of the process through structlog (call once, at start).

    `name` names the log file under `settings.dir`; `level` overrides `settings.level`.
    Returns the redactor, which the caller may teach more secrets.
    """
    redactor = Redactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _merge_request,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    console = settings.format == "console"
    stderr = logging.StreamHandler(sys.stderr)
    colours = console and coloured(sys.stderr, os.environ)
    stderr.setFormatter(_formatter(shared, redactor, console=console, colours=colours))
    handlers: list[logging.Handler] = [stderr]
    if settings.dir is not None:
        handlers.append(_file_handler(settings.dir, name, _formatter(shared, redactor)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level or settings.level)
    for logger_name, quiet in _QUIET.items():
        logging.getLogger(logger_name).setLevel(max(quiet, root.level))
    for logger_name, demoted in _DEMOTED.items():
        demoting = logging.getLogger(logger_name)
        for old_filter in [f for f in demoting.filters if isinstance(f, _Demote)]:
            demoting.removeFilter(old_filter)
        demoting.addFilter(_Demote(demoted))
    for logger_name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(logger_name)
        uvicorn_logger.handlers.clear()
        # uvicorn writes its access line when its logger has a handler, also by propagation
        # (a worker process sets logging up after uvicorn did): never, as the gateway writes
        # its own (`observe.access`), without the query string
        uvicorn_logger.propagate = logger_name != "uvicorn.access"
    return redactor


def coloured(stream: object, environ: Mapping[str, str]) -> bool:
    """Whether console lines on `stream` are coloured: only on a terminal, and not when
    `NO_COLOR` is set (to anything) or `TERM` is `dumb`. Files and JSON never are."""
    isatty = getattr(stream, "isatty", None)
    try:
        terminal = bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        terminal = False
    return terminal and "NO_COLOR" not in environ and environ.get("TERM") != "dumb"


class _Demote(logging.Filter):
    """Turns a logger's lines at `level` and below into DEBUG lines (dropped unless the
    process logs at DEBUG)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > self.level:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def _drop_colour_message(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """uvicorn passes a copy of some messages with terminal colours as `color_message`."""
    event.pop("color_message", None)
    return event


def _formatter(
    shared: list[Processor], redactor: Redactor, *, console: bool = False, colours: bool = False
) -> logging.Formatter:
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(
            colors=colours, exception_formatter=structlog.dev.plain_traceback
        )
        if console
        else structlog.processors.JSONRenderer()
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_colour_message],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
    )


def _file_handler(folder: Path, name: str, formatter: logging.Formatter) -> logging.Handler:
    make_private_folder(folder)
    handler = _PrivateRotatingFileHandler(
        folder / f"{name}.log", maxBytes=FILE_MAX_BYTES, backupCount=FILE_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(formatter)
    return handler


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Rotated log files created 0600 (a rollover renames the old ones, keeping their mode)."""

    def _open(self) -> TextIOWrapper:
        return open(
            self.baseFilename,
            "a",  # the mode RotatingFileHandler always uses
            encoding=self.encoding,
            errors=self.errors,
            opener=private_opener,
        )


_REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "llmgateway_request", default=None
)
"""The log fields of the request this task serves: one mutable dict set once per request, so
binding a field on the hot path is a dict assignment (structlog's contextvars cost a copy of
the context per bind). `_merge_request` adds them to every line at emit time."""

_SECRET = "_secret"  # the attempt's key, turned into its fingerprint only when a line is written


def bind_request(request_id: str) -> None:
    """Start a request's log context (in its own task): later lines carry its id."""
    fields = _REQUEST.get()
    if fields is None or fields.get("request_id") != request_id:
        _REQUEST.set({"request_id": request_id})


def bind_provider(provider: str, model: str) -> None:
    """Lines from now on carry the request's provider and model."""
    fields = _REQUEST.get()
    if fields is not None:
        fields["provider"] = provider
        fields["model"] = model


def bind_attempt(secret: str, attempt: int) -> None:
    """Lines from now on are about this attempt: the key's fingerprint and the attempt number."""
    fields = _REQUEST.get()
    if fields is not None:
        fields[_SECRET] = secret
        fields["attempt"] = attempt


def bind_outcome(outcome: Outcome | str) -> None:
    """Lines from now on carry how the last attempt (or the request) ended."""
    fields = _REQUEST.get()
    if fields is not None:
        if isinstance(outcome, Outcome):
            outcome = outcome.reason.value if outcome.reason is not None else "ok"
        fields["outcome"] = outcome


def _merge_request(_logger: Any, _name: str, event: EventDict) -> EventDict:
    fields = _REQUEST.get()
    if fields:
        for name, value in fields.items():
            if name == _SECRET:
                event.setdefault("key", fingerprint(value))
            else:
                event.setdefault(name, value)
    return event
