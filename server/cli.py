"""The `nomoat` command line: `nomoat serve` and friends, flags generated from the Settings fields."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from typing import Any, Sequence

from . import __version__
from .errors import ConfigError
from .settings import Settings


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per Settings field, documented from its description, env var and default."""
    for name, field in Settings.model_fields.items():
        if field.validation_alias is not None:
            continue  # systemd's own variables (NOTIFY_SOCKET...), not options
        flag = "--" + name.replace("_", "-")
        annotation = field.annotation
        base = annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # `int | None`
            base = next(a for a in typing.get_args(annotation) if a is not type(None))
        kwargs: dict[str, Any] = {"dest": name, "default": None}
        if typing.get_origin(base) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(base))
        elif base is int:
            kwargs["type"] = int
        elif base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        default = field.default
        kwargs["help"] = f"{field.description} [env NOMOAT_{name.upper()}; default: {default}]"
        parser.add_argument(flag, **kwargs)


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    cli = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    if args.command == "serve":
        return serve(cli)
    parser.error(f"unknown command {args.command}")
    return 2


def serve(cli: dict[str, Any]) -> int:
    from . import config
    from .daemon import Daemon
    from .engine.model import install_llama_logging
    from .logs import configure_logging

    try:
        settings, models = config.load(cli)
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    install_llama_logging()
    try:
        # SIGHUP re-reads everything the way startup did: the same flags, environment and file.
        daemon = Daemon(settings, models, load_config=lambda: config.load(cli))
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return 2
    return daemon.run()
