"""The environment file (`.env`): `NAME=value` lines read into the environment at the start of
every command, as the original project did with python-dotenv's `load_dotenv()`.

The same parser (python-dotenv's), so a file the original read means the same here: `#`
comments, inline comments after a space (`DB_HOST=database #for containers` is `database`),
quotes, `export NAME=...`, `${OTHER}` in values. A variable already set in the environment is
never overridden. Unlike `load_dotenv()`, a line that is not `NAME=value` is an error naming
the file and line (never the line's text, which may hold a secret) instead of a warning, and
only the working directory is searched (the original also looked in the folders above its
source, which in its container was the working directory).
"""

from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

from dotenv.parser import parse_stream
from dotenv.variables import parse_variables

from llmgateway.config.problems import ConfigError, Problem, read_small_text

DEFAULT_ENV_FILE = Path(".env")
"""Read from the working directory when it is there (and not switched off)."""
DOTENV_SWITCH = "LLMGATEWAY_DOTENV"
"""`0` (or false, no, off): read no `.env` unless `--env-file` names one (the test suite's)."""
NO_FILE = "none"
"""`--env-file none`: read no environment file."""
MAX_ENV_FILE_BYTES = 1024 * 1024
"""An environment file larger than this is refused unread."""

_OFF = {"0", "false", "no", "off"}
_FORMAT = "write NAME=value; quote a value holding spaces or a # ('...' or \"...\")"


@dataclass(frozen=True, slots=True)
class EnvFileRead:
    """What reading an environment file did: the variables it set, and those it left alone
    because the environment already had them. Names only: never a value."""

    path: Path
    set: tuple[str, ...]
    kept: tuple[str, ...]

    def describe(self) -> str:
        """One line for the log or the terminal: the file and the variable names."""
        line = f"environment file {self.path}: set {', '.join(self.set) or 'nothing'}"
        if self.kept:
            line += f"; already in the environment, kept: {', '.join(self.kept)}"
        return line


def env_file_to_read(option: str | None, environ: Mapping[str, str]) -> tuple[Path | None, bool]:
    """(the file to read or None, whether it was named explicitly): `--env-file` when given
    (`none`: no file), else `.env` in the working directory unless `$LLMGATEWAY_DOTENV` is off."""
    if option is not None:
        return (None, True) if option.strip().lower() == NO_FILE else (Path(option), True)
    if environ.get(DOTENV_SWITCH, "").strip().lower() in _OFF:
        return None, False
    return DEFAULT_ENV_FILE, False


def load_env_file(
    option: str | None, environ: MutableMapping[str, str] | None = None
) -> EnvFileRead | None:
    """Read the environment file chosen by `option` (`--env-file`) into `environ` (default:
    this process's), never overriding a variable it already has; None when no file was read.

    A missing default `.env` is no error; a missing file named by `--env-file` is. Raises
    `ConfigError` naming the file (and line) for a file that cannot be read or parsed."""
    env = os.environ if environ is None else environ
    path, explicit = env_file_to_read(option, env)
    if path is None or (not explicit and not path.is_file()):
        return None
    values = parse_env_file(_read(path), str(path), env)
    names, kept = [], []
    for name, value in values.items():
        if name in env:
            kept.append(name)
        else:
            env[name] = value
            names.append(name)
    return EnvFileRead(path, tuple(names), tuple(kept))


def parse_env_file(text: str, name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of an environment file's `text` (`name` is the file, for messages), with
    `${OTHER}` in values taken from `environ` first, then from the file's earlier lines (as
    `load_dotenv()` did). A name without `=` is skipped, as there."""
    values: dict[str, str] = {}
    scope = ChainMap(dict(environ), values)  # the environment wins, as without override
    problems = []
    for binding in parse_stream(StringIO(text)):
        if binding.error:
            where = f"{name}:{binding.original.line}"
            problems.append(Problem(where, "not a NAME=value line", _FORMAT))
        elif binding.key is not None and binding.value is not None:
            atoms = parse_variables(binding.value)
            values[binding.key] = "".join(atom.resolve(scope) for atom in atoms)
    if problems:
        raise ConfigError(tuple(problems))
    return values


def _read(path: Path) -> str:
    return read_small_text(
        path,
        "environment file",
        MAX_ENV_FILE_BYTES,
        f"give an existing file to --env-file, or --env-file {NO_FILE} to read none",
        "an environment file is small",
    )
