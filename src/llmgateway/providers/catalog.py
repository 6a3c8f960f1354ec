"""A provider's models: configured names and glob patterns, each one status scope.

Only configured models are served. A name in `models` may be a glob pattern (`gpt-4.1*`, `*`)
for providers with many models; a requested model resolves to the configured name itself, else
to the first pattern (in config order) it matches. Key state, pool scopes and the `model` metric
label are kept per configured entry, never per requested name, so no number of distinct names
a client invents grows any of them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_MODEL_LENGTH = 256
"""A longer model name is not looked up (no configured one is that long)."""
_GLOB = frozenset("*?[")


def is_pattern(name: str) -> bool:
    """Whether a configured model name is a glob pattern."""
    return not _GLOB.isdisjoint(name)


@dataclass(frozen=True, slots=True)
class Catalog:
    """The configured models of one provider, for resolving requested names."""

    names: frozenset[str]
    patterns: tuple[tuple[str, re.Pattern[str]], ...]

    @classmethod
    def of(cls, models: Iterable[str]) -> Catalog:
        """The catalog of the names in `models` (config order)."""
        names: list[str] = []
        patterns: list[tuple[str, re.Pattern[str]]] = []
        for name in models:
            if is_pattern(name):
                patterns.append((name, re.compile(fnmatch.translate(name))))
            else:
                names.append(name)
        return cls(frozenset(names), tuple(patterns))

    def resolve(self, model: str) -> str | None:
        """The configured entry serving `model`, or None when none does."""
        if model in self.names:
            return model
        if len(model) <= MAX_MODEL_LENGTH:
            for entry, pattern in self.patterns:
                if pattern.match(model) is not None:
                    return entry
        return None

    def listed(self, upstream: Iterable[str] = ()) -> list[str]:
        """The models a models list shows: the configured names, then the `upstream` names
        (as the Keeper last fetched them) that a pattern serves."""
        shown = sorted(self.names)
        if self.patterns:
            seen = set(shown)
            for name in upstream:
                if name not in seen and self.resolve(name) is not None:
                    seen.add(name)
                    shown.append(name)
        return shown
