"""Imports point down only: every module under server/ is read with `ast`, mapped to its room (a package, or a
top-level module), and each import from one room into another must land on a lower floor of FLOORS."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parent.parent / "server"

# Top to bottom; docs/architecture.md draws the same order. A room may import only rooms on floors below its own
# (rooms that share a floor do not import each other). "nomoat" is the package's own __init__ (__version__).
FLOORS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("commands", "terminal_chat", "tune_command"),  # `nomoat pull/ls/rm`; `nomoat run` (a server in process when
    # none runs); `nomoat tune` (a fine-tuning job through the running server)
    ("daemon",),
    ("http",),  # composition (app.py) and middleware
    ("openai", "anthropic"),  # the wire protocols
    ("core",),  # the generation core and the fields every protocol shares
    ("wire",),  # what handlers share below the app: body, limits, routes, error table, keys
    ("registry",),
    ("loading", "listing"),  # listing: the ids /v1/models lists, from the residency and the adapter catalogue
    ("tuning",),  # fine-tuning jobs: their records, the trainer child process, the adapters they register
    ("residency", "adapters", "config", "files"),  # files: the Files API's store (uploads, owned by a key)
    ("child",),  # a split model's child process: built from models.toml and Settings
    ("store", "client"),  # client: the HTTP client the CLI's client commands ask a running server with
    ("metrics", "settings", "models_toml"),
    ("gateway_metrics",),
    ("engine",),
    ("formats",),  # each model family's chat format: tool-call and reasoning markers, detected from its template
    ("rpc",),
    ("errors", "quantities", "logs", "sdnotify", "tasks", "addresses", "validation", "nomoat"),  # validation: how a
    # pydantic ValidationError reads to a user (settings, models.toml, --lora, --model)
)

# Arrows allowed to run up, each (importing module, imported module) with its reason: none today. The test fails
# when a listed one disappears, so the list only shrinks.
EXCEPTIONS: dict[tuple[str, str], str] = {}

FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVER).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["nomoat", *parts])


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "nomoat"


def _is_module(module: str) -> bool:
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    return (SERVER / rel).with_suffix(".py").is_file() or (SERVER / rel / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """The nomoat modules one file imports (at any depth, TYPE_CHECKING blocks included)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "nomoat")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "nomoat":
                continue
            # `from . import x` / `from .. import errors` name modules; `from .x import Name` names things in x.
            subs = [f"{target}.{alias.name}" for alias in node.names if _is_module(f"{target}.{alias.name}")]
            found.update(subs or [target])
    return found


def edges() -> set[tuple[str, str]]:
    """(importing module, imported module) for every import that crosses from one room into another."""
    out = set()
    for path in SERVER.rglob("*.py"):
        module = module_name(path)
        out.update((module, target) for target in imports_of(path) if room_of(target) != room_of(module))
    return out


def upward(found: set[tuple[str, str]]) -> list[str]:
    return sorted(
        f"{a} -> {b}  ({room_of(a)} is not above {room_of(b)})"
        for a, b in found
        if (a, b) not in EXCEPTIONS and FLOOR_OF[room_of(a)] >= FLOOR_OF[room_of(b)]
    )


def cycles(found: set[tuple[str, str]]) -> list[list[str]]:
    """Cycles between rooms (Tarjan's strongly connected components of more than one room)."""
    graph: dict[str, set[str]] = {}
    for a, b in found:
        if (a, b) not in EXCEPTIONS:
            graph.setdefault(room_of(a), set()).add(room_of(b))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(room: str) -> None:
        index[room] = low[room] = len(index)
        stack.append(room)
        for nxt in graph.get(room, ()):
            if nxt not in index:
                visit(nxt)
                low[room] = min(low[room], low[nxt])
            elif nxt in stack:
                low[room] = min(low[room], index[nxt])
        if low[room] == index[room]:
            component = []
            while (top := stack.pop()) != room:
                component.append(top)
            if component:
                out.append(sorted([room, *component]))

    for room in list(graph):
        if room not in index:
            visit(room)
    return out


def test_every_room_has_a_floor() -> None:
    rooms = {room_of(module_name(p)) for p in SERVER.rglob("*.py")}
    assert sorted(rooms - FLOOR_OF.keys()) == [], "place each new room on a floor of FLOORS (and in the docs)"
    assert len(FLOOR_OF) == sum(len(rooms) for rooms in FLOORS), "a room is on two floors"


def test_imports_point_down() -> None:
    assert upward(edges()) == []


def test_no_cycle_between_rooms() -> None:
    assert cycles(edges()) == []


def test_every_exception_is_still_needed() -> None:
    gone = sorted(f"{a} -> {b}" for a, b in EXCEPTIONS.keys() - edges())
    assert gone == [], "this arrow no longer exists: remove it from EXCEPTIONS"


@pytest.mark.parametrize(("importer", "imported"), [
    ("nomoat.core.generate", "nomoat.http.app"),
    ("nomoat.engine.engine", "nomoat.registry"),
    ("nomoat.openai.chat", "nomoat.anthropic.messages"),
])
def test_an_upward_import_is_caught(importer: str, imported: str) -> None:
    """The check itself: an arrow added up (or sideways between protocols) fails, and closes a cycle."""
    found = edges() | {(importer, imported)}
    assert upward(found) == [f"{importer} -> {imported}  ({room_of(importer)} is not above {room_of(imported)})"]
    if importer != "nomoat.openai.chat":
        assert cycles(found) != []
