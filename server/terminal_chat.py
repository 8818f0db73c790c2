"""`nomoat run`: a terminal chat with one model over the server's streamed chat completions, as `ollama run` has."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from . import config
from .client import ServerClient, ServerRefused, sse_events
from .errors import ConfigError
from .settings import Settings

HELP = """Available commands:
  /system TEXT   set the system prompt (the conversation is kept)
  /clear         forget the conversation (the system prompt is kept)
  /bye           exit (as Ctrl+D does)
  /?, /help      this help
Use \"\"\" to begin and end a message of several lines."""
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
# A reply may queue behind other requests and run long on a CPU: the stream's silence limit, not its length.
_READ_SECONDS = 600.0


@dataclass(frozen=True)
class ChatOptions:
    system: str | None = None  # the system prompt to start with
    max_tokens: int | None = None  # each reply's limit
    interactive: bool = False  # a session even where stdin is not a terminal


class ChatError(Exception):
    """What the server refused, in its own words (its error message)."""


def run_chat(cli: dict[str, Any], model: str, prompt: str | None, options: ChatOptions) -> int:
    """0 after a clean session; 1 where the server refused (an unknown model: its 404 message); 2 for bad settings."""
    try:
        settings = config.load_settings(cli)[0]
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    client = ServerClient(settings)
    local: InProcessServer | None = None
    if not client.answers():
        print(f"nomoat run: no server answers at {client.url}; starting one in this process for this session",
              file=sys.stderr, flush=True)
        try:
            local = InProcessServer.start(cli)
        except ConfigError as exc:
            print(f"nomoat run: cannot start a server:\n{exc}", file=sys.stderr)
            return 2
        client.url = local.url
    try:
        chat = Chat(client, model, options, sys.stdout)
        if prompt is None and not options.interactive and not sys.stdin.isatty():
            prompt = sys.stdin.read()  # a script piping its prompt in: one answer, as with PROMPT
        if prompt is not None:
            return chat.answer(prompt)
        return chat.repl(sys.stdin)
    finally:
        if local is not None:
            local.stop()


class Chat:
    """One conversation: the messages so far, sent whole with each new one, the reply streamed as it comes."""

    def __init__(self, client: ServerClient, model: str, options: ChatOptions, out: TextIO) -> None:
        self.client, self.model, self.out = client, model, out
        self.system, self.max_tokens = options.system, options.max_tokens
        self.messages: list[dict[str, str]] = []
        self.dim = out.isatty()  # reasoning is shown dimmed on a terminal, plain where captured

    def answer(self, prompt: str) -> int:
        """One prompt, one reply: for scripts."""
        try:
            self.say(prompt)
        except ChatError as exc:
            print(f"nomoat run: {exc}", file=sys.stderr)
            return 1
        return 0

    def repl(self, source: TextIO) -> int:
        """Read messages and commands until /bye or end of input."""
        try:
            self._request("GET", f"/v1/models/{self.model}", None).close()  # an unknown model fails before typing
        except ChatError as exc:
            print(f"nomoat run: {exc}", file=sys.stderr)
            return 1
        prompt = ">>> " if source.isatty() else ""
        for text in _messages(source, prompt):
            if text.startswith("/"):
                if not self.command(text):
                    return 0
                continue
            try:
                self.say(text)
            except ChatError as exc:
                print(f"nomoat run: {exc}", file=sys.stderr)
            except KeyboardInterrupt:  # stops this reply, as in ollama; the conversation goes on without it
                print(file=self.out)
        return 0

    def command(self, text: str) -> bool:
        """Apply one /command; False for /bye."""
        name, _, rest = text.partition(" ")
        if name in ("/bye", "/exit"):
            return False
        if name == "/clear":
            self.messages.clear()
            print("Cleared session context", file=self.out)
        elif name == "/system" and rest.strip():
            self.system = rest.strip()
            print("Set system message.", file=self.out)
        elif name in ("/?", "/help"):
            print(HELP, file=self.out)
        else:
            print(f"Unknown command '{name}'. Type /? for help", file=self.out)
        return True

    def say(self, text: str) -> None:
        """Send `text` after the conversation so far; print the reply as it streams, and keep both."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        asked = [*self.messages, {"role": "user", "content": text}]
        body: dict[str, Any] = {"model": self.model, "messages": system + asked, "stream": True}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        reply: list[str] = []
        thinking = False
        with self._request("POST", "/v1/chat/completions", body) as answer:
            for chunk in sse_events(answer):
                if "error" in chunk:
                    raise ChatError(chunk["error"].get("message", "the stream ended with an error"))
                delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
                if delta.get("reasoning_content"):
                    if not thinking and self.dim:
                        self.out.write(_DIM)
                    thinking = True
                    self.out.write(delta["reasoning_content"])
                if delta.get("content"):
                    if thinking:
                        self.out.write((_RESET if self.dim else "") + "\n\n")
                        thinking = False
                    self.out.write(delta["content"])
                    reply.append(delta["content"])
                self.out.flush()
        self.out.write((_RESET if thinking and self.dim else "") + "\n")
        self.out.flush()
        self.messages = [*asked, {"role": "assistant", "content": "".join(reply)}]

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        try:
            return self.client.open(method, path, body, timeout=_READ_SECONDS)
        except ServerRefused as exc:
            hint = " (pass --api-key, or set NOMOAT_API_KEY)" if exc.status == 401 else ""
            raise ChatError(exc.message + hint) from None


def _messages(source: TextIO, prompt: str) -> Iterator[str]:
    """The user's messages: one a line, or the lines between two \"\"\" as one; Ctrl+C at the prompt is not an exit."""
    while True:
        try:
            line = _read(source, prompt)
            if line is None:
                return
            if not line.lstrip().startswith('"""'):
                if line.strip():
                    yield line.strip()
                continue
            lines = [line.lstrip()[3:]]
            while not lines[-1].rstrip().endswith('"""'):
                more = _read(source, "... " if prompt else "")
                if more is None:
                    return
                lines.append(more)
            text = "\n".join(lines).rstrip().removesuffix('"""').strip()
            if text:
                yield text
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.", file=sys.stderr)


def _read(source: TextIO, prompt: str) -> str | None:
    if source is sys.stdin and prompt:
        try:
            return input(prompt)  # readline's line editing and history on a terminal
        except EOFError:
            print(file=sys.stdout)
            return None
    line = source.readline()
    return line.rstrip("\n") if line else None


class InProcessServer:
    """The server `serve` would run (the same settings and models.toml), on a free loopback port of this process,
    for one `nomoat run` session when none is running."""

    def __init__(self, settings: Settings, server: Any, thread: threading.Thread) -> None:
        self.url = settings.client_url()
        self._server = server
        self._thread = thread

    @classmethod
    def start(cls, cli: dict[str, Any]) -> InProcessServer:
        import uvicorn

        from .engine.model import install_llama_logging
        from .http.app import build_app
        from .metrics import Metrics
        from .registry import ModelRegistry

        install_llama_logging()  # quietly: llama.cpp's load log goes to Python logging, which shows warnings only
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # requests wait in the backlog until uvicorn accepts them
        settings, models = config.load({**cli, "host": "127.0.0.1", "port": listener.getsockname()[1]})
        registry = ModelRegistry(models, settings, Metrics())
        uv = uvicorn.Server(uvicorn.Config(build_app(settings, registry), log_level="warning", log_config=None,
                                           access_log=False, lifespan="off"))
        loaded = threading.Event()
        failed: list[BaseException] = []

        async def serve() -> None:
            try:
                await asyncio.to_thread(registry.load)
            except BaseException as exc:
                failed.append(exc)
                return
            finally:
                loaded.set()
            try:
                await uv.serve(sockets=[listener])
            finally:
                await registry.aclose()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), name="nomoat run server", daemon=True)
        thread.start()
        loaded.wait()
        if failed:
            raise ConfigError(str(failed[0]))
        return cls(settings, uv, thread)

    def stop(self) -> None:
        self._server.should_exit = True  # uvicorn's own flag, read by its main loop
        self._thread.join(timeout=60)
