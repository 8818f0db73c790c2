"""The `fast` selection, a pytest plugin (conftest.py's pytest_plugins): tests that need no real model and no
subprocess, found by reading their code and their fixtures' code, marked before `-m` selects; and a guard that
fails any test so marked which starts a server, Python in a subprocess or a real model anyway."""

from __future__ import annotations

import ast
import functools
import inspect
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Names whose use starts a real server, a subprocess or a real model: the support code's entry points, the
# engine's own classes, llama-cpp-python's Llama and subprocess. Every name imported from these modules counts
# too. llama.cpp's own functions alone do not: a vocabulary-only load and its grammar parser are in-process
# and quick, and the guard below refuses a model loaded with its weights.
REAL_NAMES = frozenset({
    "ServerProcess", "run_nomoat", "wait_healthy", "ForkServer", "run_python", "run_against",
    "Engine", "Embedder", "Llama", "oracle", "real_engine",
    "subprocess", "Popen", "fork", "multiprocessing", "webdriver",
    "FAKE_TRAINER",  # tests/support/fake_trainer.py, a fine-tuning job's child (test_tuning_jobs.py)
})
REAL_MODULES = ("support.real_engine", "support.speculation", "support.forkserver", "oracle", "subprocess",
                "multiprocessing")
# The session's own fixtures: the fork server (started only for a session with tests that are not fast) and
# the guards below.
INFRASTRUCTURE = frozenset({"_server_processes", "_fast_stays_in_process", "_fast_session_stays_in_process"})


def _names(node: ast.AST) -> set[str]:
    """Every identifier a piece of code reads: plain names and attribute names alike."""
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr)
    return found


def _imported_from_real(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(REAL_MODULES):
        return {alias.asname or alias.name for alias in node.names}
    if isinstance(node, ast.Import):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names
                if alias.name.startswith(REAL_MODULES)}
    return set()


def _defined(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)}
    return set()


@functools.cache
def _module(path: Path) -> tuple[frozenset[str], dict[int, frozenset[str]]]:
    """The module's real names: REAL_NAMES, the names it imports from REAL_MODULES, and its own top-level
    functions, classes and values that use any of them, however indirectly. And the names each function in it
    reads, by the line its code starts on (its first decorator's)."""
    tree = ast.parse(path.read_text(), str(path))
    real = set(REAL_NAMES)
    for node in tree.body:
        real |= _imported_from_real(node)
    bodies = [(_defined(node), _names(node)) for node in tree.body if _defined(node)]
    grew = True
    while grew:
        grew = False
        for defined, used in bodies:
            if not defined <= real and used & real:
                real |= defined
                grew = True
    functions = {min([node.lineno, *(d.lineno for d in node.decorator_list)]): frozenset(_names(node))
                 for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return frozenset(real), functions


TESTS = Path(__file__).resolve().parent.parent


@functools.cache
def _uses_real(func: Callable[..., Any]) -> bool:
    """Whether a test or fixture of this suite uses a real name; pytest's and plugins' own fixtures start nothing."""
    func = inspect.unwrap(func)
    try:
        path = Path(inspect.getfile(func)).resolve()
    except TypeError:
        return True  # code we cannot read is not known to be fast
    if not path.is_relative_to(TESTS):
        return False
    real, functions = _module(path)
    names = functions.get(func.__code__.co_firstlineno)
    if names is None:
        return True
    return bool(names & real)


def is_fast(item: pytest.Item) -> bool:
    """No fixture of the test (its whole closure) and not the test itself uses a real server, model or process."""
    if not isinstance(item, pytest.Function):
        return False
    for name in item.fixturenames:
        if name in INFRASTRUCTURE:
            continue
        for definition in item._fixtureinfo.name2fixturedefs.get(name, ()):
            if _uses_real(definition.func):
                return False
    return not _uses_real(item.obj)


def _refuse_real(monkeypatch: pytest.MonkeyPatch, who: str, refused: list[str]) -> None:
    """Make starting a server, Python in a subprocess or a real model fail, saying that `who` is fast."""
    import llama_cpp
    import llama_cpp.llama_cpp as llama_lib

    from support import forkserver, process

    def refuse(what: str, original: Callable[..., Any] | None = None,
               allow: Callable[..., bool] = lambda *args, **kwargs: False) -> Callable[..., Any]:
        def refusing(*args: Any, **kwargs: Any) -> Any:
            if original is not None and allow(*args, **kwargs):
                return original(*args, **kwargs)
            refused.append(what)
            pytest.fail(f"{who} (tests/support/fast.py found no real server, model or process in its code) "
                        f"but it {what}: teach support/fast.py the name that does it")
        return refusing

    def not_python(popen: Any, args: Any, *rest: Any, **kwargs: Any) -> bool:
        # A library may ask the system a question (the OpenAI SDK runs `uname -p`); a test may not start Python.
        first = os.fsdecode(args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), ""))
        program = os.path.basename(first.split()[0]) if first.strip() else ""
        return not program.lower().startswith(("python", "nomoat", "pytest", "chrom"))

    def vocab_only(path: bytes, params: Any) -> bool:
        return bool(params.vocab_only)  # a tokenizer alone (tests/wire.py's tokenize): no weights, no compute

    monkeypatch.setattr(process.ServerProcess, "__init__", refuse("starts a real server (ServerProcess)"))
    monkeypatch.setattr(process, "run_nomoat", refuse("runs the nomoat command (run_nomoat)"))
    monkeypatch.setattr(forkserver.ForkServer, "start", refuse("forks a process from the fork server"))
    start = subprocess.Popen.__init__
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts Python in a subprocess", start, not_python))
    load = llama_lib.llama_model_load_from_file
    monkeypatch.setattr(llama_lib, "llama_model_load_from_file", refuse("loads a real model", load, vocab_only))
    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", refuse("loads a real model", load, vocab_only))


@pytest.fixture(autouse=True)
def _fast_stays_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test marked fast that starts a server, Python in a subprocess or a real model fails, and says which.
    Recorded as well as raised, so a caller that swallows the failure cannot hide it."""
    if request.node.get_closest_marker("fast") is None:
        yield
        return
    refused: list[str] = []
    _refuse_real(monkeypatch, f"{request.node.nodeid} is marked fast", refused)
    yield
    if refused and not request.node.stash.get(_CALL_FAILED, False):
        pytest.fail(f"{request.node.nodeid} is marked fast but it {refused[0]} (and the failure was caught)",
                    pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _fast_session_stays_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a session of fast tests alone (`-m fast`), the same refusals for the whole session: a module- or
    session-scoped fixture is set up before any test's own guard."""
    if not all(item.get_closest_marker("fast") for item in request.session.items):
        yield
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        _refuse_real(monkeypatch, "a fixture of this session of fast tests alone", [])
        yield


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if call.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_fast(item):
            item.add_marker(pytest.mark.fast)

