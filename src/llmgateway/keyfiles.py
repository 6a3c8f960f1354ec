"""Key and proxy files → the store.

The files are the truth: every regular text file in a provider's `keys_path` folder holds keys
separated by newlines, commas or whitespace; `#` starts a comment that runs to the end of the
line; blank lines, a UTF-8 BOM and CRLF line ends are fine; duplicates collapse, within a file
and across files. Hidden files (`.name`), editor backups (`name~`) and autosaves (`#name#`) are
skipped. Files are only ever read.

A key is 8 to 1024 characters from `A-Z a-z 0-9 . _ ~ + / = : -` (what API keys and tokens are
made of). Any other token is reported as `file:line: <masked> is not a key (why)` and skipped.
Proxy lists (`pool_list_path`, stealth mode) follow the same rules with `http://`, `https://`,
`socks5://` or `socks5h://` URLs, optionally with `user:pass@`; their password is never shown.

A folder that is missing, or a file that cannot be read, is not UTF-8 or is not a regular file
(a FIFO, a socket, a dangling link), makes the provider's read incomplete: its new keys are
still added, but none is removed, so a glitch never empties a pool. An existing empty folder
means zero keys. Sub-folders are not read (reported, not an error).

A symbolic link is followed only when its fully resolved target lies inside the folder, as in a
Kubernetes secret mount (`keys.txt -> ..data/keys.txt`, `..data -> ..2024_01_01_xx/`). A link
to anywhere else (`/etc/passwd`) or a link loop is skipped unread, reported as a problem, and
makes the read incomplete (the keys it gave before are kept). Files are opened without following
a link, and on Linux the file actually opened is checked to lie inside the folder too, so a link
swapped in between the check and the read is not followed either.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from llmgateway.config.settings import ProviderSettings, ProxyMode, Settings
from llmgateway.core.egress import SOCKS_SCHEMES, socks_login_problem
from llmgateway.observe.masking import mask
from llmgateway.records import SyncChanges

if TYPE_CHECKING:  # reading key files (for log masking too) does not load the store
    from llmgateway.store import Store

log = logging.getLogger("llmgateway.sync")

MIN_KEY_LENGTH = 8
MAX_KEY_LENGTH = 1024
KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=:-")
PROXY_SCHEMES = ("http", "https", *SOCKS_SCHEMES)
PROBLEMS_PER_FILE = 20
"""Problems reported per file; the rest are counted in one last line."""

_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong in the files: `where` is `file:line`, a file or a folder."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Parsed:
    """Values read from a file or folder. `complete` is False when something could not be
    read, so values missing here must not be taken as removed. `sources` gives each value's
    first place, `file:line` (files in name order). `rejected` counts the tokens that were not
    values (each one reported in `problems`, past the first few per file only counted)."""

    values: frozenset[str]
    problems: tuple[Problem, ...] = ()
    complete: bool = True
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    rejected: int = field(default=0, compare=False)


Parser = Callable[[str, str], Parsed]


def key_problem(token: str) -> str | None:
    """Why `token` cannot be an API key, or None when it can."""
    if len(token) < MIN_KEY_LENGTH:
        return f"too short: {len(token)} characters, keys have at least {MIN_KEY_LENGTH}"
    if len(token) > MAX_KEY_LENGTH:
        return f"too long: {len(token)} characters, keys have at most {MAX_KEY_LENGTH}"
    bad = next((c for c in token if c not in KEY_CHARACTERS), None)
    if bad is None:
        return None
    if bad in "\"'`":
        return "contains a quote; write keys without quotes"
    if not bad.isprintable():
        return f"contains the control character U+{ord(bad):04X}"
    return f"contains {bad!r}; keys use only letters, digits and . _ ~ + / = : -"


def proxy_problem(token: str) -> str | None:
    """Why `token` cannot be a proxy URL, or None when it can."""
    if not all(c.isprintable() and not c.isspace() for c in token):
        return "contains a control character"
    try:
        parts = urlsplit(token)
        port = parts.port
    except ValueError:
        return "is not a valid URL (check the host and port)"
    if parts.scheme not in PROXY_SCHEMES:
        return "must start with http://, https://, socks5:// or socks5h://"
    if not parts.hostname:
        return "has no host; write scheme://[user:pass@]host:port"
    if port == 0:
        return "has port 0"
    return socks_login_problem(token)


def mask_proxy(url: str) -> str:
    """The proxy URL with its password (if any) hidden; anything unparsable masked whole.
    Unlike an API key, a password has no public prefix, so none of it is shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _printable(mask(url))
    if parts.password is None:
        return _printable(url) if parts.scheme in PROXY_SCHEMES else _printable(mask(url))
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    netloc = f"{name}:…@{host}"
    return _printable(parts._replace(netloc=netloc).geturl())


def parse_keys(text: str, source: str) -> Parsed:
    """The keys in one file's `text`; `source` names the file in problems."""
    return _parse(text, source, key_problem, lambda t: _printable(mask(t)), "a key")


def parse_proxies(text: str, source: str) -> Parsed:
    """The proxy URLs in one file's `text`; `source` names the file in problems."""
    return _parse(text, source, proxy_problem, mask_proxy, "a proxy URL")


def _parse(
    text: str,
    source: str,
    check: Callable[[str], str | None],
    show: Callable[[str], str],
    kind: str,
) -> Parsed:
    sources: dict[str, str] = {}
    problems: list[Problem] = []
    skipped = 0
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        for token in _SEPARATORS.split(line.partition("#")[0]):
            if not token:
                continue
            why = check(token)
            if why is None:
                sources.setdefault(token, f"{source}:{number}")
            elif len(problems) < PROBLEMS_PER_FILE:
                problems.append(
                    Problem(f"{source}:{number}", f"{show(token)} is not {kind} ({why})")
                )
            else:
                skipped += 1
    if skipped:
        problems.append(Problem(source, f"{skipped} more tokens that are not {kind} skipped"))
    rejected = len(problems) + skipped
    return Parsed(frozenset(sources), tuple(problems), sources=sources, rejected=rejected)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def read_folder(folder: Path, parse: Parser) -> Parsed:
    """Parse every regular file of `folder` (sorted by name) and merge the results."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return _unread(folder, "folder not found; create it or fix the path in the config")
    except NotADirectoryError:
        return _unread(folder, "is a file, not a folder; point the setting at the folder")
    except OSError as exc:
        return _unread(folder, f"cannot list the folder: {exc.strerror}")
    root = Path(os.path.realpath(folder))
    sources: dict[str, str] = {}
    problems: list[Problem] = []
    complete = True
    for entry in entries:
        if _ignored(entry.name):
            continue
        parsed = _read_entry(entry, root, parse)
        for value, where in parsed.sources.items():
            sources.setdefault(value, where)
        problems.extend(parsed.problems)
        complete = complete and parsed.complete
    return Parsed(frozenset(sources), tuple(problems), complete, sources)


def _ignored(name: str) -> bool:
    return (
        name.startswith(".") or name.endswith("~") or (name.startswith("#") and name.endswith("#"))
    )


class _OutsideError(Exception):
    """The file opened is not inside the folder (a link was swapped in after the check)."""


def _read_entry(entry: os.DirEntry[str], root: Path, parse: Parser) -> Parsed:
    """One folder entry: a file read as it is, a link only when it resolves inside `root`."""
    path = Path(entry.path)
    if not entry.is_symlink():
        return _read_file(path, path, root, parse)
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:  # dangling: reported like any file that cannot be read
        return _read_file(path, path, root, parse)
    except (RuntimeError, OSError):  # a loop (RuntimeError up to Python 3.12, then ELOOP)
        return _outside(path, "a link loop: it never reaches a file")
    if not target.is_relative_to(root):
        return _outside(path, f"it points to {_printable(str(target))}")
    return _read_file(path, target, root, parse)


def _outside(path: Path, detail: str) -> Parsed:
    why = f"skipped, a link to outside the folder ({detail}); move the file into the folder"
    return _unread(path, why + "; its keys are kept as they were")


def _read_file(path: Path, source: Path, root: Path, parse: Parser) -> Parsed:
    """Parse `source` (the entry itself, or where its link resolved to), named `path`."""
    try:
        mode = os.stat(source, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            return Parsed(frozenset(), (Problem(str(path), "sub-folder skipped (not read)"),))
        if not stat.S_ISREG(mode):
            return _unread(path, "not a regular file; its keys are kept as they were")
        data = _read_inside(source, root)
    except _OutsideError:
        return _outside(path, "it was changed into a link while being read")
    except OSError as exc:
        return _unread(path, f"cannot read: {exc.strerror}; its keys are kept as they were")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        why = f"not UTF-8 text (byte {exc.start}); save it as UTF-8; its keys are kept as they were"
        return _unread(path, why)
    return parse(text, str(path))


def _read_inside(source: Path, root: Path) -> bytes:
    """The bytes of regular file `source`, opened without following a link; raises
    `_OutsideError` when the file opened turns out not to lie inside `root`."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(source, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last part became a link after the check
            raise _OutsideError from None
        raise
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the check
            raise OSError(errno.EINVAL, "not a regular file")
        opened = _opened_path(fd)
        if opened is not None and not opened.is_relative_to(root):
            raise _OutsideError
        return file.read()


def _opened_path(fd: int) -> Path | None:
    """Where an open file really is (Linux's /proc), or None where that cannot be told."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def _unread(where: Path, message: str) -> Parsed:
    return Parsed(frozenset(), (Problem(str(where), message),), complete=False)


# -- into the store ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderSync:
    """What one provider's sync did. `keys` is None for a disabled provider (not synced);
    `proxies` is None when it has no proxy pool."""

    provider: str
    keys: SyncChanges | None
    proxies: SyncChanges | None
    problems: tuple[Problem, ...]
    complete: bool


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one sync of every provider did."""

    providers: tuple[ProviderSync, ...]

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(p for provider in self.providers for p in provider.problems)


async def run_sync(settings: Settings, store: Store) -> SyncReport:
    """Sync providers, then the keys and proxies of every enabled provider from their files.

    Idempotent. Each provider's keys are written in one transaction (so are its proxies): a
    crash mid-way leaves the previous state. Problems are logged and reported, never raised.
    """
    await store.sync_providers(settings.providers)
    reports = []
    for name, provider in settings.providers.items():
        if not provider.enabled:
            reports.append(ProviderSync(name, None, None, (), True))
            continue
        reports.append(await _sync_provider(name, provider, store))
    return SyncReport(tuple(reports))


async def sync_provider(settings: Settings, store: Store, name: str) -> ProviderSync:
    """Sync the providers, then the keys and proxies of provider `name` only (as `run_sync`
    does for each): what `llmgateway keys import` runs once it has written a new key file."""
    await store.sync_providers(settings.providers)
    provider = settings.providers[name]
    if not provider.enabled:
        return ProviderSync(name, None, None, (), True)
    return await _sync_provider(name, provider, store)


async def _sync_provider(name: str, provider: ProviderSettings, store: Store) -> ProviderSync:
    keys = await asyncio.to_thread(read_folder, provider.keys_path, parse_keys)
    key_changes = await store.sync_keys(
        name,
        keys.values,
        list(provider.models),
        provider.shared_key_status,
        prune=keys.complete,
        sources=keys.sources,
    )
    problems, complete = keys.problems, keys.complete
    proxy_changes = None
    pool = provider.proxy_config.pool_list_path
    if provider.proxy_config.mode is ProxyMode.STEALTH and pool is not None:
        proxies = await asyncio.to_thread(read_folder, pool, parse_proxies)
        proxy_changes = await store.sync_proxies(name, proxies.values, prune=proxies.complete)
        problems += proxies.problems
        complete = complete and proxies.complete
    else:
        await store.sync_proxies(name, ())  # a pool that was turned off leaves the store too
    result = ProviderSync(name, key_changes, proxy_changes, problems, complete)
    _log(result)
    return result


def _log(result: ProviderSync) -> None:
    for problem in result.problems:
        log.warning("provider %s: %s", result.provider, problem)
    for kind, changes in (("keys", result.keys), ("proxies", result.proxies)):
        if changes is not None and changes.changed:
            log.info(
                "provider %s: %s +%d added, -%d removed, %d restored, %d active",
                result.provider,
                kind,
                changes.added,
                changes.removed,
                changes.restored,
                changes.active,
            )
        if changes is not None and changes.moved:
            log.info(
                "provider %s: %d %s found at another file:line than before (recorded)",
                result.provider,
                changes.moved,
                kind,
            )
