"""Whether each provider's keys folder can take an imported file, as the keys page shows it.

Finding out writes a file and deletes it (`key_import.check_writable`); the keys page asks on
every full load, so each folder's answer is kept `CHECK_TTL_SEC` and most loads touch no disk.
An import notes what it found at once, so a page after a refused import says so without
waiting. A folder made read-only (or writable) meanwhile shows so within `CHECK_TTL_SEC`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmgateway.key_import import FolderNotWritableError, check_writable

CHECK_TTL_SEC = 30.0
"""How long a folder's answer is kept before it is checked again."""


@dataclass(slots=True)
class FolderChecks:
    """Each folder's last answer (None: writable; else why not) and until when it is kept
    (mutable, owned by one console)."""

    ttl: float = CHECK_TTL_SEC
    _found: dict[Path, tuple[float, str | None]] = field(default_factory=dict)

    def refusal(self, folder: Path, now: float) -> str | None:
        """Why `folder` cannot take a new file (None: it can), as found at most `ttl` seconds
        before `now` (epoch seconds)."""
        kept = self._found.get(folder)
        if kept is not None and now < kept[0]:
            return kept[1]
        try:
            check_writable(folder)
        except FolderNotWritableError as exc:
            self.note(folder, str(exc), now)
        else:
            self.note(folder, None, now)
        return self._found[folder][1]

    def note(self, folder: Path, why: str | None, now: float) -> None:
        """Keep what was just found about `folder` (None: it took a file; else why not)."""
        self._found[folder] = (now + self.ttl, why)
