"""What the real-client tests share: one server with one LoRA adapter, and a recorder of the HTTP
exchanges a client library makes, so a failure shows the request it sent and the answer it got."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest
from conftest import ServerProcess, models_toml
from lora_factory import write_lora
from pydantic import BaseModel, Field

BASE_MODEL = "smollm2-135m"
ADAPTER = "tuned"
# Every client test runs once on the base model and once on the adapter, selected by model name.
CLIENT_MODELS = [BASE_MODEL, ADAPTER]
# A mild adapter: it changes the logits without drowning the instruct model's manners, so short
# chats still answer something.
ADAPTER_STD = 0.02


class Pet(BaseModel):
    """A pet described in a few words."""

    # Bounded fields, so that a 135M model held to the schema finishes within a few dozen tokens.
    name: str = Field(max_length=20, description="the pet's name")
    legs: int = Field(ge=0, le=8, description="how many legs it has")
    kind: Literal["cat", "dog", "bird"]


PET_TEXT = "Rex is a dog with four legs."


@pytest.fixture(scope="session")
def clients_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded model as `smollm2-135m` plus the adapter `tuned` on it, for the client tests."""
    adapter = write_lora(tmp_path_factory.mktemp("clients-adapter") / f"{ADAPTER}.gguf", seed=8, std=ADAPTER_STD)
    extra = f'[[adapters]]\nname = "{ADAPTER}"\npath = "{adapter}"\n'
    proc = ServerProcess(models_toml(extra=extra), tmp_path_factory.mktemp("clients")).wait_ready()
    yield proc
    proc.close()


@pytest.fixture(params=CLIENT_MODELS)
def client_model(request: pytest.FixtureRequest) -> str:
    """The model name a client test sends: the base model, then the adapter."""
    return request.param


@pytest.fixture()
def recorder() -> Recorder:
    return Recorder()


@dataclass
class Exchange:
    method: str
    url: str
    request: Any
    status: int | None = None
    adapters: str | None = None
    response: str = ""

    def __str__(self) -> str:
        body = json.dumps(self.request, indent=None) if not isinstance(self.request, str) else self.request
        return (f"{self.method} {self.url}\n  request:  {body}\n"
                f"  status:   {self.status} (x-nomoat-adapters: {self.adapters!r})\n  response: {self.response}")


@dataclass
class Recorder:
    """Event hooks for an httpx.Client: every request body and every non-streamed answer, in order."""

    exchanges: list[Exchange] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=120.0, event_hooks={"request": [self._request], "response": [self._response]})

    def _request(self, request: httpx.Request) -> None:
        raw = request.read().decode(errors="replace")
        try:
            body: Any = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw
        self.exchanges.append(Exchange(request.method, str(request.url), body))

    def _response(self, response: httpx.Response) -> None:
        exchange = self.exchanges[-1]
        exchange.status = response.status_code
        exchange.adapters = response.headers.get("x-nomoat-adapters")
        if response.headers.get("content-type", "").startswith("text/event-stream") and response.status_code == 200:
            exchange.response = "<stream>"
        else:
            exchange.response = response.read().decode(errors="replace")

    @property
    def bodies(self) -> list[Any]:
        return [e.request for e in self.exchanges]

    @property
    def last(self) -> Exchange:
        assert self.exchanges, "the client sent nothing"
        return self.exchanges[-1]

    def report(self) -> str:
        return "\n".join(str(e) for e in self.exchanges) or "(no request sent)"

    @contextmanager
    def explained(self) -> Iterator[None]:
        """Turns a client library's exception into a failure that shows every exchange it made."""
        try:
            yield
        except Exception as e:  # the client's own exception says little about the server's answer
            raise AssertionError(f"{type(e).__name__}: {e}\n--- exchanges ---\n{self.report()}") from e


def adapter_label(model: str) -> str:
    """The `x-nomoat-adapters` header nomoat answers a request for `model` with."""
    return f"{ADAPTER}@1" if model == ADAPTER else ""


def assert_served_by(recorder: Recorder, model: str) -> None:
    """Every exchange was answered 200 under the adapter that `model` names (none for the base)."""
    for e in recorder.exchanges:
        assert e.status == 200, recorder.report()
        assert e.adapters == adapter_label(model), recorder.report()



def run_python(code: str, filename: str, server: ServerProcess, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> str:
    """Runs a client script's code as `__main__` in this interpreter, with OPENAI_BASE_URL set to `server`; its stdout.

    In process rather than in a fresh interpreter: the client libraries' imports (langchain 4 s,
    llama-index 5.5 s, anthropic 4 s on 2 cores) are then paid once per session, not once per script."""
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.base_url}/v1")
    try:
        exec(compile(code, filename, "exec"), {"__name__": "__main__", "__file__": filename})
    except SystemExit as exc:
        assert exc.code in (0, None), f"{filename} exited {exc.code}\nserver log:\n{server.log()[-3000:]}"
    out = capsys.readouterr().out
    assert out.strip(), f"{filename} printed nothing"
    return out


def run_against(command: list[str], server: ServerProcess, cwd: Any) -> str:
    """Runs a client script in a fresh process with OPENAI_BASE_URL set to `server`; its stdout."""
    env = {**os.environ, "OPENAI_BASE_URL": f"{server.base_url}/v1"}
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, (f"{command[-1][:200]} exited {done.returncode}\nstdout:\n{done.stdout}\n"
                                  f"stderr:\n{done.stderr}\nserver log:\n{server.log()[-3000:]}")
    assert done.stdout.strip(), done.stderr
    return done.stdout
