"""The console's clients page behind a real loopback socket (`tests.console_rig`), its config
declaring the read-only client `ci-bot`; and what its tests read back from an answer."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

from llmgateway.config.settings import AdminSettings, Settings
from llmgateway.core.clients import well_formed
from llmgateway.store import Store
from tests.console_rig import ADMIN_TOKEN, Answer, ConsoleRig, console_rig
from tests.helpers import ManualClock, gateway_settings

CI_BOT = "gw-config-declared-console-token-5e2a"
"""The token of `ci-bot`, which the config declares (by SHA-256)."""
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def clients_settings(tmp_path: Path) -> Settings:
    """Two providers, route-less, the console on, and `ci-bot` declared in the config."""
    declared = {
        "name": "ci-bot",
        "token_sha256": hashlib.sha256(CI_BOT.encode()).hexdigest(),
        "rpm": 100,
    }
    settings = gateway_settings(tmp_path, "http://127.0.0.1:9", {"tokens": [declared]})
    return settings.model_copy(update={"admin": AdminSettings(token=ADMIN_TOKEN, port=0)})


@contextlib.asynccontextmanager
async def clients_rig(
    tmp_path: Path, store: Store, clock: ManualClock
) -> AsyncIterator[ConsoleRig]:
    """The console of `clients_settings` over `store`."""
    async with console_rig(clients_settings(tmp_path), store, clock) as served:
        yield served


async def act(rig: ConsoleRig, path: str, **data: str) -> Answer:
    """POST `data` to `path` (below /admin) as a script does (Bearer, no CSRF needed)."""
    return await rig.post(path, headers=BEARER, data=data)


async def page(rig: ConsoleRig, path: str) -> Answer:
    """GET `path` (below /admin) with the Bearer token."""
    return await rig.get(path, headers=BEARER)


async def refused_create(rig: ConsoleRig, fields: dict[str, str], message: str) -> Answer:
    """POST `fields` to create a client: refused (400) saying `message` on the page (as an
    alert, the markup escaped), nothing stored or audited."""
    from llmgateway.store import audit
    from llmgateway.store import clients as stored

    refused = await act(rig, "/clients", **fields)
    assert refused.status == 400
    assert message in refused.text
    assert 'role="alert"' in refused.text
    assert "<script>" not in refused.text
    assert await stored.all_clients(rig.console.store.engine) == []
    assert await audit.recent(rig.console.store) == []
    return refused


def secret_of(answer: Answer) -> str:
    """The secret a create or rotate answer shows (once)."""
    found = re.search(r'id="secret" class="secret" value="([^"]+)"', answer.text)
    assert found is not None, answer.text
    assert well_formed(found.group(1))
    return found.group(1)
