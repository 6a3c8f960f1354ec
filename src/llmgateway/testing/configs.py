"""Config documents and key files for a gateway on the fake upstream, shared by `llmgateway
demo` and the tests: two providers, `openai` (openai_like) and `gemini`, with their key folders
under one folder (`<folder>/keys/openai`, `<folder>/keys/gemini`) and SQLite there too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llmgateway.testing.fake_upstream import FakeUpstream


def write_keys(folder: Path, keys: Iterable[str]) -> Path:
    """Write `keys`, one a line, to `folder/keys.txt` (creating the folder); returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "keys.txt"
    path.write_text("".join(f"{key}\n" for key in keys), encoding="utf-8")
    return path


def two_providers(
    folder: Path,
    upstream: FakeUpstream | str,
    *,
    openai_token: str,
    gemini_token: str,
    openai_models: Sequence[str] = ("gpt-4o-mini",),
    gemini_models: Sequence[str] = ("gemini-2.5-flash",),
    both: Mapping[str, Any] | None = None,
    openai: Mapping[str, Any] | None = None,
    gemini: Mapping[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A config document (what `Settings.model_validate` takes, or YAML once dumped): providers
    `openai` and `gemini` (key status shared across its models) on `upstream` (the fake, or the
    URL of another, `http://127.0.0.1:PORT`), each with its own gateway token and its first
    model as default. `both` adds provider settings to both (a
    policy, timeouts), `openai` and `gemini` to one (last, so they win). Keyword `sections`
    set whole top-level sections (`gateway`, `metrics`, `logging`, `worker`, `database`; the
    default database is `folder/gw.db`)."""
    url = upstream if isinstance(upstream, str) else upstream.url
    common = dict(both or {})
    chat = {"endpoint_suffix": "/chat/completions"}
    generate = {"endpoint_suffix": ":generateContent"}
    return {
        "database": {"url": f"sqlite:///{folder / 'gw.db'}"},
        **sections,
        "providers": {
            "openai": {
                "provider_type": "openai_like",
                "keys_path": str(folder / "keys" / "openai"),
                "api_base_url": f"{url}/v1",
                "default_model": openai_models[0],
                "models": dict.fromkeys(openai_models, chat),
                "access_control": {"gateway_access_token": openai_token},
                **common,
                **(openai or {}),
            },
            "gemini": {
                "provider_type": "gemini",
                "keys_path": str(folder / "keys" / "gemini"),
                "api_base_url": url,
                "default_model": gemini_models[0],
                "shared_key_status": True,
                "models": dict.fromkeys(gemini_models, generate),
                "access_control": {"gateway_access_token": gemini_token},
                **common,
                **(gemini or {}),
            },
        },
    }
