"""`nomoat run`: a terminal chat with one model over the server's streamed chat completions, as `ollama run` has."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from . import config
from .errors import ConfigError
from .settings import Settings

HELP = """Available commands:
  /system TEXT   set the system prompt (the conversation is kept)
  /clear         forget the conversation (the system prompt is kept)
  /bye           exit (as Ctrl+D does)
  /?, /help      this help
Use \"\"\" to begin and end a message of several lines."""
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
# How long a server that answers at all may take to say so; none answering at once means none is running.
_PROBE_SECONDS = 3.0
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
    url = settings.client_url()
    local: InProcessServer | None = None
    if not _answers(url):
        print(f"nomoat run: no server answers at {url}; starting one in this process for this session",
              file=sys.stderr, flush=True)
        try:
            local = InProcessServer.start(cli)
        except ConfigError as exc:
            print(f"nomoat run: cannot start a server:\n{exc}", file=sys.stderr)
            return 2
        url = local.url
    try:
        chat = Chat(url, _key(settings), model, options, sys.stdout)
        if prompt is None and not options.interactive and not sys.stdin.isatty():
            prompt = sys.stdin.read()  # a script piping its prompt in: one answer, as with PROMPT
        if prompt is not None:
            return chat.answer(prompt)
        return chat.repl(sys.stdin)
    finally:
        if local is not None:
            local.stop()


def _key(settings: Settings) -> str | None:
    key = settings.admin_key or settings.api_key
    return key.get_secret_value().split(",")[0].strip() if key is not None else None


def _answers(url: str) -> bool:
    """Whether any server answers at `url` (any HTTP status counts: a 401 is a server that wants a key)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=_PROBE_SECONDS):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


class Chat:
    """One conversation: the messages so far, sent whole with each new one, the reply streamed as it comes."""

    def __init__(self, url: str, key: str | None, model: str, options: ChatOptions, out: TextIO) -> None:
        self.url, self.key, self.model, self.out = url, key, model, out
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
            for chunk in _events(answer):
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
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if self.key is not None:
            request.add_header("Authorization", "Bearer " + self.key)
        try:
            return urllib.request.urlopen(request, timeout=_READ_SECONDS)
        except urllib.error.HTTPError as exc:
            raise ChatError(_error_message(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ChatError(f"no answer from {self.url} ({exc})") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's own message (OpenAI's error shape), else the status; a 401 says which key to give."""
    try:
        message = str(json.load(exc)["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        message = f"{exc.code}: {exc.reason}"
    if exc.code == 401:
        message += " (pass --api-key, or set NOMOAT_API_KEY)"
    return message


def _events(answer: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, until [DONE]."""
    for raw in answer:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


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
