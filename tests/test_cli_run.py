"""`nomoat run`: the terminal chat against the real server (one prompt, a session fed through stdin, an unknown
model), the server it starts in process when none answers, and the conversation it sends (a stand-in stream)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import models_toml
from support.process import free_port, run_nomoat

from nomoat.client import ServerClient
from nomoat.settings import Settings
from nomoat.terminal_chat import Chat, ChatOptions


def _env(**extra: str) -> dict[str, str]:
    """This environment without the NOMOAT_* settings a developer may have set, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("NOMOAT_")}, **extra}


def test_one_prompt_is_answered_and_the_command_exits_0(server):
    # NOMOAT_HOST as OLLAMA_HOST: the host and port of the server to ask, in one variable.
    done = run_nomoat("run", "smollm2-135m", "Say hello.", "--max-tokens", "16",
                      env=_env(NOMOAT_HOST=f"127.0.0.1:{server.port}"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "starting one" not in done.stderr


def test_an_unknown_model_prints_the_servers_404_and_exits_1(server):
    done = run_nomoat("run", "no-such-model", "hi", "--port", str(server.port), env=_env())
    assert done.returncode == 1
    assert "The model 'no-such-model' does not exist. Available:" in done.stderr and "smollm2-135m" in done.stderr


def test_a_session_fed_through_stdin_keeps_going_until_bye(server):
    lines = ["Say hello.", "/clear", '"""', "Two", 'lines."""', "/system Answer briefly.", "/nope", "/bye", "unsent"]
    done = subprocess.run([sys.executable, "-m", "nomoat", "run", "smollm2-135m", "--interactive",
                           "--max-tokens", "16", "--port", str(server.port)], input="\n".join(lines) + "\n", capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Cleared session context" in out and "Set system message." in out and "Unknown command '/nope'" in out
    # Two replies: one before /clear, one to the multiline message after it.
    before, after = out.split("Cleared session context")
    assert before.strip() and after.split("Set system message.")[0].strip()


def test_without_a_server_one_is_started_in_process_for_the_session(tmp_path: Path):
    config_file = tmp_path / "models.toml"
    config_file.write_text(models_toml())
    done = run_nomoat("run", "smollm2-135m", "Say hello.", "--max-tokens", "16", "--config", str(config_file),
                      "--port", str(free_port()), env=_env())
    assert done.returncode == 0, done.stderr
    assert "starting one in this process" in done.stderr and done.stdout.strip()
    assert "llama_model_loader" not in done.stderr  # quietly: llama.cpp's load log is not shown


class _Recorder(Chat):
    """A Chat whose server is a stand-in: each request is recorded, each reply one streamed word."""

    def __init__(self, system: str | None = None) -> None:
        super().__init__(ServerClient(Settings()), "m", ChatOptions(system=system), io.StringIO())
        self.sent: list[list[dict[str, str]]] = []

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        assert body is not None
        self.sent.append(body["messages"])
        chunks = [{"choices": [{"delta": {"reasoning_content": "hm"}}]}, {"choices": [{"delta": {"content": "ok"}}]}]
        return io.BytesIO(b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n")


def test_the_conversation_is_kept_cleared_and_led_by_the_system_prompt():
    chat = _Recorder(system="Be brief.")
    chat.say("one")
    chat.say("two")
    chat.command("/clear")
    chat.command("/system Be kind.")
    chat.say("three")
    roles = [[(m["role"], m["content"]) for m in sent] for sent in chat.sent]
    assert roles == [
        [("system", "Be brief."), ("user", "one")],
        [("system", "Be brief."), ("user", "one"), ("assistant", "ok"), ("user", "two")],
        [("system", "Be kind."), ("user", "three")],
    ]
    # Reasoning before the answer, apart from it (dimmed on a terminal; plain here, where it is not one).
    assert chat.out.getvalue() == "hm\n\nok\n" * 2 + "Cleared session context\nSet system message.\nhm\n\nok\n"  # type: ignore[attr-defined]
