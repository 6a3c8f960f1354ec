"""`.dockerignore` read as Docker's builder reads it (moby's patternmatcher): one pattern a
line, `#` comments, `!` lets back in, the last pattern that matches a path or one of its
parent folders decides; `*` and `?` stay within one path segment, `**` spans any number of
them. Used to check what a `docker build` of this folder would send as its context."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Pattern:
    """One line of a `.dockerignore`."""

    regex: re.Pattern[str]
    exclusion: bool  # `!`: lets back in what an earlier pattern left out


def _translate(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 1
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def read_patterns(path: Path) -> list[Pattern]:
    """The patterns of a `.dockerignore` file, in order."""
    return parse_patterns(path.read_text())


def parse_patterns(text: str) -> list[Pattern]:
    """The patterns of a `.dockerignore`'s text, in order."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        line = line[1:].strip() if exclusion else line
        cleaned = os.path.normpath(line).lstrip("/")
        patterns.append(Pattern(_translate(cleaned), exclusion))
    return patterns


def ignored(patterns: list[Pattern], path: str) -> bool:
    """Whether `path` (relative to the context, `/`-separated) is left out of the context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    left_out = False
    for pattern in patterns:
        if any(pattern.regex.match(prefix) for prefix in prefixes):
            left_out = not pattern.exclusion
    return left_out
