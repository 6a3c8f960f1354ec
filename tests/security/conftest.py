"""The fixture of the console's attack tests: `rig`, the console on the `store` fixture (SQLite
and PostgreSQL) behind a real loopback socket, its clock the test's `clock`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmgateway.store import Store
from tests.console_rig import ConsoleRig, console_rig, console_settings
from tests.helpers import ManualClock


@pytest.fixture
async def rig(tmp_path: Path, store: Store, clock: ManualClock) -> AsyncIterator[ConsoleRig]:
    """The console with `tests.console_rig.ADMIN_TOKEN`, served on a port of its own."""
    async with console_rig(console_settings(tmp_path), store, clock) as served:
        yield served
