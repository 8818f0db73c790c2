"""The `nomoat` command line: `nomoat serve` and friends, flags generated from the Settings fields."""

from __future__ import annotations

import argparse
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError, NomoatError
from .settings import Settings
from .validation import format_validation_error

if TYPE_CHECKING:
    from .models_toml import ModelsFile

# Extra spellings of a setting's flag: the singular reads right when a flag is given once, and docs use it;
# llama-server's short forms, where its flag means what ours does, so a command line people already type works.
_FLAG_ALIASES = {
    "adapter_dirs": ["--adapter-dir"],
    "model": ["-m"],
    "n_ctx": ["-c", "--ctx-size"],
    "n_gpu_layers": ["-ngl", "--gpu-layers"],
    "parallel": ["-np"],
    "threads": ["-t"],
    "model_name": ["-a", "--alias"],
}
# Settings only nomoat itself passes (to a child process it starts): not shown in --help.
_INTERNAL_FLAGS = ("rpc_in_process",)


# The settings `nomoat pull`, `ls` and `rm` read: where models.toml, the models dir and the pulled list are.
_MODEL_STORE_FLAGS = ("config", "models_dir", "state_dir")
_PULL_FLAGS = (*_MODEL_STORE_FLAGS, "pull_timeout_seconds")
# Where pull, ls and rm find the running server they ask first (issue #31: the files land where it reads them).
_SERVER_FLAGS = ("host", "port", "api_key", "admin_key")
# serve's descriptions of those settings say what serving does with them; the store commands' say what they read.
_MODEL_STORE_HELPS = {
    "config": "models.toml whose models (and [server] table) to read [as serve: ./models.toml, then the XDG and "
              "/etc ones].",
    "models_dir": "The folder of GGUF files the server serves (each listed under its file name without .gguf).",
    "state_dir": "Where the list of pulled models is kept (default: $XDG_STATE_HOME/nomoat or ~/.local/state/nomoat).",
}
# The settings a client command (ps, run) reads to find the server and the key it asks with.
_CLIENT_HELPS = {
    "config": "models.toml whose [server] table says where the server listens [default: as serve finds it].",
    "host": "The server's address, HOST:PORT or a URL (env NOMOAT_HOST, as Ollama's OLLAMA_HOST) [default: 127.0.0.1].",
    "port": "The server's port [env NOMOAT_PORT; default: 8000].",
    "api_key": "A key the server accepts (env NOMOAT_API_KEY), where it was started with keys.",
    "admin_key": "The server's admin key (env NOMOAT_ADMIN_KEY); ps shows as much with an API key.",
}


def _add_settings_flags(parser: argparse.ArgumentParser, only: Sequence[str] | None = None,
                        helps: dict[str, str] | None = None) -> None:
    """One `--flag` per Settings field (or per field in `only`), documented from its description (or this
    command's own text in `helps`), env var and default."""
    for name, field in Settings.model_fields.items():
        if field.validation_alias is not None or (only is not None and name not in only):
            continue  # systemd's own variables (NOTIFY_SOCKET...), not options
        flag = "--" + name.replace("_", "-")
        annotation = field.annotation
        base = annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # `int | None`
            base = next(a for a in typing.get_args(annotation) if a is not type(None))
        kwargs: dict[str, Any] = {"dest": name, "default": None}
        if typing.get_origin(base) is typing.Annotated:
            base = typing.get_args(base)[0]
        if typing.get_origin(base) is list:
            kwargs["action"] = "append"
        elif typing.get_origin(base) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(base))
        elif base is int:
            kwargs["type"] = int
        elif base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None or default == [] else default
        description = (helps or {}).get(name, field.description)
        # argparse %-formats help strings: a literal % (as in "75%") must be doubled.
        kwargs["help"] = f"{description} [env NOMOAT_{name.upper()}; default: {shown}]".replace("%", "%%")
        if name in _INTERNAL_FLAGS:
            kwargs["help"] = argparse.SUPPRESS
        parser.add_argument(flag, *_FLAG_ALIASES.get(name, []), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomoat",
        description="A local OpenAI-compatible server for GGUF models with per-request LoRA adapters.",
    )
    parser.add_argument("--version", action="version", version=f"nomoat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve the models in models.toml (or --model FILE) over HTTP",
        description=(
            "Serve models over an OpenAI-compatible HTTP API. Settings come from, highest first: "
            "these flags, NOMOAT_* environment variables, the [server] table of models.toml, defaults."
        ),
    )
    _add_settings_flags(serve)
    convert = sub.add_parser(
        "convert-lora",
        help="convert a Hugging Face PEFT LoRA directory to a GGUF LoRA adapter",
        description=(
            "Write the GGUF LoRA adapter that llama.cpp (and nomoat) loads for a PEFT directory "
            "(adapter_config.json + adapter_model.safetensors). No torch, no download."
        ),
    )
    convert.add_argument("peft_dir", metavar="PEFT_DIR", help="the PEFT adapter directory")
    convert.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    convert.add_argument(
        "--base", metavar="MODEL",
        help="the base model: a GGUF file, or a model id from models.toml [default: the embedded model]",
    )
    convert.add_argument("--config", metavar="FILE", help="models.toml to look --base up in [default: as serve]")
    pull = sub.add_parser(
        "pull",
        help="download a GGUF model from the Hugging Face Hub by name",
        description=(
            "Download OWNER/REPO[:QUANT] into the Hugging Face cache (resumable; HF_TOKEN, HF_ENDPOINT and "
            "HF_HUB_OFFLINE apply). QUANT picks the file by quantisation (any case, e.g. Q4_K_M); without it, "
            "Q4_K_M if the repo has one, else its smallest GGUF. The server then serves it under that name. "
            "When a server answers at --host/--port (NOMOAT_HOST), it pulls into its own cache and state dir "
            "with the admin key and serves the model at once; else the pull is local, and says so."
        ),
    )
    pull.add_argument("name", metavar="OWNER/REPO[:QUANT]")
    _add_settings_flags(pull, _PULL_FLAGS, _MODEL_STORE_HELPS)
    ls = sub.add_parser("ls", help="list the models a server would serve: models.toml, models dir, pulled",
                        description="List available models with their source, size on disk and path: the running "
                                    "server's (admin key), else what a server started here would serve.")
    _add_settings_flags(ls, _MODEL_STORE_FLAGS, _MODEL_STORE_HELPS)
    rm = sub.add_parser("rm", help="remove a pulled model and its files",
                        description="Forget a model pulled with `nomoat pull` and delete its files from the cache: "
                                    "the running server's (admin key; it stops serving it), else this user's.")
    rm.add_argument("name", metavar="NAME", help="the name it was pulled as")
    _add_settings_flags(rm, _MODEL_STORE_FLAGS, _MODEL_STORE_HELPS)
    for store_command in (pull, ls, rm):
        _add_client_flags(store_command, _SERVER_FLAGS)
    ps = sub.add_parser(
        "ps",
        help="list the models a running server has loaded, their memory, adapters and when each unloads",
        description="Ask the running server (host, port and key from the settings, as serve reads them) for its models.",
    )
    _add_client_flags(ps)
    run = sub.add_parser(
        "run",
        help="chat with a model in the terminal (as `ollama run`), or answer one prompt and exit",
        description=(
            "Chat with MODEL through the running server (found as `nomoat ps` finds it); when none answers, "
            "one is started in this process for the session. In the chat: /bye (or Ctrl+D) exits, /clear forgets "
            "the conversation, /system TEXT sets the system prompt, and a message between two lines of \"\"\" "
            "spans several lines. With PROMPT, or with stdin not a terminal, it answers once and exits."
        ),
    )
    run.add_argument("model", metavar="MODEL", help="the model id (as GET /v1/models lists it)")
    run.add_argument("prompt", metavar="PROMPT", nargs="?", default=None, help="answer this one prompt and exit")
    run.add_argument("--system", default=None, help="the system prompt to start with")
    run.add_argument("--max-tokens", type=int, default=None, metavar="N", help="end each reply after N tokens")
    run.add_argument("-i", "--interactive", action="store_true",
                     help="chat even when stdin is not a terminal (a script typing lines and /commands)")
    _add_client_flags(run)
    _add_tune_parser(sub)
    worker = sub.add_parser(
        "worker",
        help="lend this machine's CPU to another nomoat's `rpc` models (llama.cpp's RPC server)",
        description=(
            "Run llama.cpp's RPC server in the foreground, as its rpc-server does: a model with "
            "rpc = [\"HOST:PORT\"] in another nomoat's models.toml puts layers here. The protocol has no "
            "authentication: listen on a trusted network only."
        ),
    )
    worker.add_argument("--host", default="127.0.0.1", help="address to listen on [default: 127.0.0.1]")
    worker.add_argument("--port", type=int, default=50052, help="port to listen on [default: 50052]")
    worker.add_argument("--threads", type=int, default=None, help="CPU threads [default: all cores]")
    worker.add_argument("--cache-dir", default=None,
                        help="keep tensors sent here in this folder, so a reload sends only their hashes")
    return parser


def _add_tune_parser(sub: Any) -> None:
    tune = sub.add_parser(
        "tune",
        help="fine-tune a model on a JSONL file through the running server, showing its progress",
        description=(
            "Upload FILE to the running server (found as `nomoat ps` finds it), start a fine-tuning job of MODEL on "
            "it (OpenAI's fine-tuning API: a LoRA trained on this machine) and show a line per training step, its "
            "train and validation loss, until the job ends with the fine-tuned model's id, ft:MODEL:SUFFIX:JOB. "
            "Ctrl+C stops watching and leaves the job running; --watch JOB and --cancel JOB find it again."
        ),
    )
    tune.add_argument("model", metavar="MODEL", nargs="?", help="the base model id (as GET /v1/models lists it)")
    tune.add_argument("file", metavar="FILE", nargs="?",
                      help='the training data: JSONL, one {"messages": [...]} conversation per line, as OpenAI takes')
    tune.add_argument("--suffix", help="a name for the fine-tune, shown in its id ft:MODEL:SUFFIX:JOB")
    tune.add_argument("--epochs", type=int, metavar="N", help="passes over the training data [default: the server's]")
    tune.add_argument("--validation-file", metavar="FILE", help="held-out examples whose loss is reported as it trains")
    tune.add_argument("--batch-size", type=int, metavar="N", help="examples per training step [default: the server's]")
    tune.add_argument("--learning-rate-multiplier", type=float, metavar="X",
                      help="scales the server's learning rate [default: the server's]")
    tune.add_argument("--detach", action="store_true", help="start the job and exit without watching it")
    tune.add_argument("--watch", metavar="JOB", help="show a started job's progress until it ends")
    tune.add_argument("--cancel", metavar="JOB", help="cancel a started job")
    _add_client_flags(tune)


def _add_client_flags(parser: argparse.ArgumentParser, names: Sequence[str] = tuple(_CLIENT_HELPS)) -> None:
    """Where the server is and the key to ask it with, read as serve reads them (flags, NOMOAT_*, models.toml)."""
    for name in names:
        text = _CLIENT_HELPS[name]
        kwargs: dict[str, Any] = {"type": int} if name == "port" else {}
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=text, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # as git and ollama: no command is a usage error, answered with the help
        parser.print_help(sys.stderr)
        return 2
    cli = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    if args.command == "serve":
        return serve(cli)
    if args.command == "convert-lora":
        return convert_lora(args)
    if args.command in ("pull", "ls", "rm"):
        from . import commands as models_cli

        settings_cli = {k: v for k, v in cli.items() if k in (*_PULL_FLAGS, *_SERVER_FLAGS)}
        if args.command == "ls":
            return models_cli.ls(settings_cli)
        if args.command == "pull":
            return models_cli.pull(settings_cli, args.name)
        return models_cli.rm(settings_cli, args.name)
    if args.command == "ps":
        return show_loaded(cli)
    if args.command == "run":
        from .terminal_chat import ChatOptions, run_chat

        return run_chat({k: v for k, v in cli.items() if k in _CLIENT_HELPS}, args.model, args.prompt,
                        ChatOptions(args.system, args.max_tokens, args.interactive))
    if args.command == "tune":
        return tune(args, parser, {k: v for k, v in cli.items() if k in _CLIENT_HELPS})
    if args.command == "worker":
        return worker(args, parser)
    parser.error(f"unknown command {args.command}")  # exits


def _configured(cli: dict[str, Any]) -> tuple[Settings, ModelsFile] | None:
    """Settings and models as `serve` reads them; None after printing why they are invalid."""
    from . import config

    try:
        return config.load(cli)
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return None


def serve(cli: dict[str, Any]) -> int:
    from . import config
    from .daemon import Daemon
    from .engine.model import install_llama_logging
    from .logs import configure_logging

    configured = _configured(cli)
    if configured is None:
        return 2
    settings, models = configured
    configure_logging(settings.log_level, settings.log_format)
    install_llama_logging()
    try:
        # SIGHUP re-reads everything the way startup did: the same flags, environment and file.
        daemon = Daemon(settings, models, load_config=lambda: config.load(cli))
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    return daemon.run()


def tune(args: argparse.Namespace, parser: argparse.ArgumentParser, cli: dict[str, Any]) -> int:
    from . import tune_command

    if args.watch or args.cancel:
        if args.model or (args.watch and args.cancel):
            parser.error("tune: --watch JOB and --cancel JOB take a job id alone")
        return tune_command.watch(cli, args.watch) if args.watch else tune_command.cancel(cli, args.cancel)
    if not (args.model and args.file):
        parser.error("tune: MODEL and FILE are required (or --watch JOB, --cancel JOB)")
    return tune_command.tune(cli, args.model, args.file, tune_command.TuneOptions(
        args.suffix, args.epochs, args.validation_file, args.batch_size, args.learning_rate_multiplier, args.detach))


def worker(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .quantities import default_threads
    from .rpc.worker import run_worker

    if not 0 < args.port < 65536:
        parser.error("--port must be 1 to 65535")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return run_worker(args.host, args.port, args.threads or default_threads(),
                      Path(args.cache_dir) if args.cache_dir else None)


def show_loaded(cli: dict[str, Any]) -> int:
    """`nomoat ps`: settings as `serve` reads them (flags, NOMOAT_*, models.toml [server])."""
    from .residency.ps import ps

    configured = _configured(cli)
    if configured is None:
        return 2
    code, text = ps(configured[0])
    print(text, file=sys.stderr if code else sys.stdout)
    return code


def convert_lora(args: argparse.Namespace) -> int:
    from .adapters.peft import convert_peft_to_gguf, is_peft_dir
    from .engine.base_info import BaseModelInfo
    from .engine.errors import EngineError

    peft_dir, out = Path(args.peft_dir), Path(args.output)
    try:
        if not is_peft_dir(peft_dir):
            raise ConfigError(f"{peft_dir}: not a PEFT adapter directory (no adapter_config.json)")
        base_path = _base_model_path(args.base, Path(args.config) if args.config else None)
        started = time.perf_counter()
        convert_peft_to_gguf(peft_dir, BaseModelInfo.from_gguf(base_path), out)
    except (ConfigError, NomoatError, EngineError) as exc:
        print(f"nomoat: cannot convert:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nomoat: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, base {base_path.name}) "
          f"in {time.perf_counter() - started:.2f}s")
    return 0


def _base_model_path(base: str | None, config_file: Path | None) -> Path:
    """--base as a GGUF path, or the file of the model with that id in models.toml; None: the embedded model."""
    from pydantic import ValidationError

    from . import config
    from .models_toml import ModelsFile

    if base is None:
        return config.embedded_model_path()
    if Path(base).is_file():
        return Path(base)
    found = config.find_config_file(config_file)
    if found is None:
        raise ConfigError(f"--base {base!r}: no such GGUF file, and no models.toml to look the id up in")
    try:
        data = config.read_config_file(found)
    except ConfigError as exc:
        raise ConfigError(f"--base {base!r}: no such GGUF file, and no model ids to look it up in: {exc}") from None
    data.pop("server", None)
    try:
        models = ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(found))) from None
    for model in models.models:
        if base in model.ids():
            return config.resolve_model_path(model.path, found.parent, f"{found}: model {model.name!r}")
    ids = ", ".join(i for m in models.models for i in m.ids())
    raise ConfigError(f"--base {base!r}: no such GGUF file, and no model with that id in {found} (ids: {ids})")
