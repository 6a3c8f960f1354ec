"""The layers of llmgateway hold (DESIGN.md §5), checked on its source with `ast`.

Every import counts: at module level, inside functions, and under `if TYPE_CHECKING:` (an import
for typing only is still a dependency of the design). The rules:

1. `core` imports only the standard library and `llmgateway.core`.
2. The Conductor (`conductor`) and the Keeper (`keeper`) never import each other.
3. The hot path (`HOT_PATH`) never reaches the store or a database library (`STORE`): not by a
   direct import of any kind, and not through what it loads at run time (imports at module level
   and in functions, and the packages above every module loaded, whose `__init__` runs first).
   `LAZY` names the modules exempt, each imported only inside a function, with the reason. A
   fresh interpreter that imports the hot path checks the same through `sys.modules`.
4. No import cycle between modules, counting every import (typing-only and in functions too).
5. A module imports only modules of its own layer or of a layer below (`LAYERS`).

Each rule is a function returning the offending imports as `path:line: what`; the last test
plants one violation of each in a small package of its own and checks it is reported.
"""

from __future__ import annotations

import ast
import graphlib
import itertools
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "llmgateway"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "core"),  # "": the package itself (its __version__)
    ("records", "private_files", "observe.masking"),  # values and leaf helpers
    ("config", "transport", "providers", "testing"),
    (
        "observe",
        "limits",
        "store",
        "keyfiles",
        "key_import",
        "key_filter",
        "reloading",
        "client_edits",  # the clients as the CLI and the console edit them
        "client_views",  # and show them
    ),
    ("conductor", "keeper", "console"),
    ("cli", "__main__"),
)
"""Bottom layer first, names below `llmgateway`. A module is placed by the longest name that is
its own or a package's above it; `""` places the package `llmgateway` alone."""

HOT_PATH = (
    "conductor.attempts",
    "conductor.endpoints",
    "conductor.edge",
    "conductor.admission",
    "conductor.status_writer",
    "conductor.usage_writer",
    "core",
    "transport",
    "providers",
    "limits",
)
"""What serves a request (with every module below these names)."""

STORE = ("llmgateway.store", "sqlalchemy", "alembic", "asyncpg", "aiosqlite")
"""What the hot path must not load: it reaches the store only through the write-behind queue
and the refresh, which are handed a `Store` by the Conductor's start-up."""

LAZY = {
    "limits.fleet": "the PostgreSQL limits backend (asyncpg, SQLAlchemy's URL parser), imported "
    "by `limits` only when the limits are counted in the PostgreSQL store, whose driver the "
    "gateway has then loaded already",
}

Kind = Literal["module", "function", "typing"]


@dataclass(frozen=True, slots=True)
class Import:
    """One module naming another: `where` is `src/llmgateway/...py:line`."""

    source: str
    target: str
    where: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class Project:
    """The modules of a source tree (dotted name → file) and every import in them."""

    src: Path
    modules: dict[str, Path]
    imports: tuple[Import, ...]


def parse(src: Path) -> Project:
    """Read every module of the `llmgateway` package under `src`."""
    modules: dict[str, Path] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    imports: list[Import] = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        where = path.relative_to(src.parent).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, kind in _imports(tree.body, "module"):
            for target in dict.fromkeys(_targets(node, package, modules)):
                imports.append(Import(name, target, f"{where}:{node.lineno}", kind))
    return Project(src, modules, tuple(imports))


def _imports(
    nodes: Iterable[ast.AST], kind: Kind
) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.body, "typing")
            yield from _imports(node.orelse, kind)
        else:
            body = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            inner: Kind = "function" if body and kind == "module" else kind
            yield from _imports(ast.iter_child_nodes(node), inner)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(
    node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]
) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    # `from package import module` names the module; `from module import name`, the module
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _ours(*names: str) -> tuple[str, ...]:
    return tuple(f"{PACKAGE}.{name}" if name else PACKAGE for name in names)


def layer_of(module: str) -> tuple[int, str] | None:
    """(index in LAYERS, name placing it), or None for a module no layer holds."""
    relative = module.removeprefix(PACKAGE).removeprefix(".")
    placed = [
        (len(name), index, name)
        for index, names in enumerate(LAYERS)
        for name in names
        if relative == name or (name and relative.startswith(name + "."))
    ]
    if not _within(module, PACKAGE) or not placed:
        return None
    _, index, name = max(placed)
    return index, name or PACKAGE


# --- the rules -------------------------------------------------------------------------------


def core_problems(project: Project) -> list[str]:
    """Rule 1: what `core` imports besides the standard library and itself."""
    return [
        f"{i.where}: {i.source} imports {i.target} (core: stdlib and llmgateway.core only)"
        for i in project.imports
        if _within(i.source, *_ours("core"))
        and not _within(i.target, *_ours("core"))
        and i.target.partition(".")[0] not in sys.stdlib_module_names
    ]


def role_problems(project: Project) -> list[str]:
    """Rule 2: the Conductor importing the Keeper, or the Keeper the Conductor."""
    conductor, keeper = _ours("conductor", "keeper")
    return [
        f"{i.where}: {i.source} imports {i.target} (the Conductor and the Keeper never "
        "import each other)"
        for i in project.imports
        if (_within(i.source, conductor) and _within(i.target, keeper))
        or (_within(i.source, keeper) and _within(i.target, conductor))
    ]


def hot_modules(project: Project) -> list[str]:
    """The hot path's modules, less the `LAZY` ones."""
    return [m for m in project.modules if _within(m, *_ours(*HOT_PATH)) and m not in _ours(*LAZY)]


def hot_path_problems(project: Project) -> list[str]:
    """Rule 3: the hot path naming the store, or loading it through what it loads."""
    hot = hot_modules(project)
    lazy = dict(zip(_ours(*LAZY), LAZY.values(), strict=True))
    problems = [
        f"{i.where}: {i.source} imports {i.target} (the hot path never names the store)"
        for i in project.imports
        if i.source in hot and _within(i.target, *STORE)
    ]
    runtime: dict[str, list[Import]] = {}
    for i in project.imports:
        if i.kind != "typing":
            runtime.setdefault(i.source, []).append(i)
    start = [loaded for module in hot for loaded in _loaded(module)]  # packages above run too
    via: dict[str, Import | None] = dict.fromkeys(start)
    queue = deque(via)
    while queue:
        for i in runtime.get(queue.popleft(), ()):
            for loaded in _loaded(i.target):
                if loaded in lazy:
                    if i.kind == "module":
                        problems.append(
                            f"{i.where}: {i.source} imports {loaded} when loaded; import it "
                            f"only where needed ({lazy[loaded]})"
                        )
                    continue
                if loaded in via:
                    continue
                via[loaded] = i
                if _within(loaded, *STORE):
                    problems.append(f"the hot path loads {loaded}: {_chain(via, loaded)}")
                    break
                if loaded in project.modules:
                    queue.append(loaded)
    return list(dict.fromkeys(problems))


def _loaded(target: str) -> list[str]:
    """What importing `target` runs: every package above it first (ours only), then itself."""
    if not _within(target, PACKAGE):
        return [target]
    parts = target.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]


def _chain(via: dict[str, Import | None], module: str) -> str:
    steps: list[Import] = []
    step = via[module]
    while step is not None:
        steps.append(step)
        step = via[step.source]
    return steps[-1].source + "".join(f" -> {s.target} ({s.where})" for s in reversed(steps))


def cycle_problems(project: Project) -> list[str]:
    """Rule 4: one import cycle between modules (fix it, and the next one shows), or none."""
    graph: dict[str, set[str]] = {m: set() for m in project.modules}
    first: dict[tuple[str, str], Import] = {}
    for i in project.imports:
        if i.target in project.modules:
            graph[i.source].add(i.target)
            first.setdefault((i.source, i.target), i)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        cycle: list[str] = error.args[1]
        steps = [first.get((a, b)) or first[(b, a)] for a, b in itertools.pairwise(cycle)]
        return [f"{s.where}: {s.source} imports {s.target} (an import cycle)" for s in steps]
    return []


def layer_problems(project: Project) -> list[str]:
    """Rule 5: a module no layer holds, or an import of a layer above the importer's."""
    problems = [
        f"{path.relative_to(project.src.parent).as_posix()}: {m} has no place in LAYERS"
        for m, path in project.modules.items()
        if layer_of(m) is None
    ]
    for i in project.imports:
        source, target = layer_of(i.source), layer_of(i.target)
        if source is not None and target is not None and target[0] > source[0]:
            problems.append(
                f"{i.where}: {i.source} (layer {source[0]}: {source[1]}) imports {i.target} "
                f"(layer {target[0]}: {target[1]}, above it)"
            )
    return problems


def loaded_store(src: Path, modules: Iterable[str], store: Iterable[str] = STORE) -> list[str]:
    """The `store` modules (by default `STORE`) a fresh interpreter holds once it imported
    `modules` from `src`."""
    code = "\n".join(
        [
            "import sys",
            *(f"import {m}" for m in modules),
            f"store = {tuple(store)!r}",
            "names = (m for m in sys.modules if any(m == s or m.startswith(s + '.') "
            "for s in store))",
            "print('\\n'.join(sorted(names)))",
        ]
    )
    path = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    return done.stdout.split()


# --- this project ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> Project:
    return parse(SRC)


@pytest.mark.parametrize(
    "rule", [core_problems, role_problems, hot_path_problems, cycle_problems, layer_problems]
)
def test_rule_holds(project: Project, rule: Callable[[Project], list[str]]) -> None:
    problems = rule(project)
    assert not problems, "\n".join(problems)


def test_the_hot_path_loads_no_store_in_a_fresh_interpreter(project: Project) -> None:
    hot = hot_modules(project)
    assert len(hot) > 20  # the whole of core, transport, providers, limits and the request path
    loaded = loaded_store(SRC, hot)
    assert not loaded, f"importing the hot path loaded {len(loaded)} modules: {loaded[:3]}..."


CONSOLE = ("llmgateway.console", "jinja2")
"""What only the Keeper's process loads: the web console and its templates."""
GATEWAY_PROCESS = (
    "llmgateway.cli.main",
    "llmgateway.conductor.app",
    "llmgateway.conductor.serving",
)
"""What a gateway process (`llmgateway gateway`, its workers) imports."""


def test_the_conductor_never_names_the_console(project: Project) -> None:
    named = [
        f"{i.where}: {i.source} imports {i.target}"
        for i in project.imports
        if _within(i.source, *_ours("conductor")) and _within(i.target, *_ours("console"))
    ]
    assert not named, "\n".join(named)


def test_the_gateway_process_loads_no_console_in_a_fresh_interpreter() -> None:
    loaded = loaded_store(SRC, GATEWAY_PROCESS, CONSOLE)
    assert not loaded, f"a gateway process loaded {loaded[:3]}"
    # the check sees the console when it is loaded
    assert "llmgateway.console" in loaded_store(SRC, ["llmgateway.console.listener"], CONSOLE)


def test_the_parse_sees_every_kind_of_import(project: Project) -> None:
    kinds: dict[tuple[str, str], set[str]] = {}
    for i in project.imports:
        kinds.setdefault((i.source, i.target), set()).add(i.kind)
    assert kinds[("llmgateway.conductor.rebuild", "llmgateway.core.guard")] == {"module"}
    assert kinds[("llmgateway.limits", "llmgateway.limits.fleet")] == {"typing", "function"}
    assert kinds[("llmgateway.keyfiles", "llmgateway.store")] == {"typing"}
    assert kinds[("llmgateway.cli.store", "llmgateway.store.report")] == {"function"}


# --- each rule catches a violation -----------------------------------------------------------

PLANTED = {
    "__init__.py": "",
    "core/__init__.py": "",
    "core/pure.py": "import math\nimport orjson\n",
    "config/__init__.py": "",
    "config/load.py": "import llmgateway.store\n",
    "transport/__init__.py": "",
    "transport/a.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
    "    from llmgateway.transport import b\n",
    "transport/b.py": "from llmgateway.transport import a\n",
    "limits/__init__.py": "from llmgateway.limits import fleet\n",
    "limits/fleet.py": "",
    "limits/counts.py": "def f() -> None:\n    from llmgateway.observe import metrics\n",
    "limits/outage.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
    "    from llmgateway.store.records import Row\n",
    "observe/__init__.py": "",
    "observe/metrics.py": "from llmgateway.store import records\n",
    "store/__init__.py": "",
    "store/records.py": "Row = tuple\n",
    "keeper/__init__.py": "",
    "keeper/run.py": "def f() -> None:\n    from llmgateway.conductor import attempts\n",
    "conductor/__init__.py": "",
    "conductor/attempts.py": "",
    "conductor/app.py": "import llmgateway.cli\n",
    "cli/__init__.py": "",
    "stray.py": "",
}


@pytest.fixture
def planted(tmp_path: Path) -> Project:
    for name, text in PLANTED.items():
        path = tmp_path / "src" / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return parse(tmp_path / "src")


P = "src/llmgateway/"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            core_problems,
            [
                f"{P}core/pure.py:2: llmgateway.core.pure imports orjson (core: stdlib and "
                "llmgateway.core only)"
            ],
        ),
        (
            role_problems,
            [
                f"{P}keeper/run.py:2: llmgateway.keeper.run imports llmgateway.conductor.attempts "
                "(the Conductor and the Keeper never import each other)"
            ],
        ),
        (
            hot_path_problems,
            [
                f"{P}limits/outage.py:4: llmgateway.limits.outage imports "
                "llmgateway.store.records (the hot path never names the store)",
                f"{P}limits/__init__.py:1: llmgateway.limits imports llmgateway.limits.fleet "
                f"when loaded; import it only where needed ({LAZY['limits.fleet']})",
                "the hot path loads llmgateway.store: llmgateway.limits.counts -> "
                f"llmgateway.observe.metrics ({P}limits/counts.py:2) -> "
                f"llmgateway.store.records ({P}observe/metrics.py:1)",
            ],
        ),
        (
            cycle_problems,
            [
                f"{P}transport/b.py:1: llmgateway.transport.b imports llmgateway.transport.a "
                "(an import cycle)",
                f"{P}transport/a.py:4: llmgateway.transport.a imports llmgateway.transport.b "
                "(an import cycle)",
            ],
        ),
        (
            layer_problems,
            [
                f"{P}stray.py: llmgateway.stray has no place in LAYERS",
                f"{P}config/load.py:1: llmgateway.config.load (layer 2: config) imports "
                "llmgateway.store (layer 3: store, above it)",
                f"{P}conductor/app.py:1: llmgateway.conductor.app (layer 4: conductor) imports "
                "llmgateway.cli (layer 5: cli, above it)",
            ],
        ),
    ],
)
def test_a_planted_violation_is_reported(
    planted: Project, rule: Callable[[Project], list[str]], expected: list[str]
) -> None:
    assert sorted(rule(planted)) == sorted(expected)


def test_a_fresh_interpreter_sees_a_planted_store_load(planted: Project) -> None:
    assert loaded_store(planted.src, ["llmgateway.observe.metrics"]) == [
        "llmgateway.store",
        "llmgateway.store.records",
    ]
