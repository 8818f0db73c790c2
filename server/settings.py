"""Server settings: one pydantic-settings object built once at startup (CLI > env NOMOAT_* > file > defaults)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from .addresses import split_host
from .errors import ConfigError
from .quantities import parse_duration, parse_size, system_memory
from .validation import format_validation_error

# A 40 GB model over a 10 Mbit/s link takes about 9 hours; a Hub that dribbles bytes for ever is stopped after this.
DEFAULT_PULL_TIMEOUT_SECONDS = 12 * 3600.0


class Settings(BaseSettings):
    """Every server-wide setting. Each field is a `--flag` of `nomoat serve` and a `NOMOAT_*` variable."""

    model_config = SettingsConfigDict(env_prefix="NOMOAT_", extra="forbid", validate_default=True)
    _scheme: str = PrivateAttr("http")  # from a host given as a URL: the scheme the client commands use

    host: str = Field("127.0.0.1", description=(
        "Address to listen on; the client commands (ps, run, pull, ls, rm) ask the server there. As Ollama's "
        "OLLAMA_HOST, it may carry a port (HOST:PORT) or be a URL (http://HOST:PORT); --port still wins."))
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    config: Path | None = Field(
        None,
        description=(
            "models.toml to read. Default: ./models.toml if present, else "
            "$XDG_CONFIG_HOME/nomoat/models.toml, else /etc/nomoat/models.toml, "
            "else the embedded SmolLM2-135M-Instruct."
        ),
    )
    model: Path | None = Field(
        None,
        description="Serve this one GGUF file and ignore models.toml (like llama-server -m).",
    )
    model_name: str | None = Field(
        None, description="Model id for --model (default: the file name without .gguf)."
    )
    models_dir: Path | None = Field(
        None,
        description=(
            "Serve every GGUF file in this folder under its file name without .gguf (split files "
            "NAME-00001-of-0000N.gguf as one model NAME; mmproj files left out), after models.toml's models."
        ),
    )
    pull_timeout_seconds: float = Field(
        DEFAULT_PULL_TIMEOUT_SECONDS, gt=0,
        description=(
            "Longest `nomoat pull` may take to download one model from the Hugging Face Hub; past it the download "
            "stops with an error and nothing is kept (models.toml hf: paths get the default)."
        ),
    )
    n_ctx: int | None = Field(
        None, ge=16, description="Context length per sequence for --model (default 4096, capped by the model's)."
    )
    n_gpu_layers: str | int | None = Field(
        None, description="Layers to offload to the GPU for --model: auto (as many as fit; default), 0 none, -1 all."
    )
    rpc: str | None = Field(
        None, description="For --model: `nomoat worker`s that hold its layers, HOST:PORT,HOST:PORT (llama.cpp's --rpc)."
    )
    rpc_in_process: bool = Field(
        False,
        description=(
            "Load models with `rpc` in this process, not in a child process of their own. llama.cpp aborts the "
            "process whose worker goes away: only the child process nomoat starts for such a model sets this."
        ),
    )
    threads: int | None = Field(
        None, ge=1, description="Threads per model when models.toml sets none (default: all cores)."
    )
    parallel: int | None = Field(
        None, ge=1, le=256, description="Concurrent sequences per model, overriding models.toml."
    )
    queue_size: int = Field(
        64, ge=0, description="Requests that may wait per model beyond the running ones; past it: 429."
    )
    max_rerank_documents: int = Field(
        1000, ge=1, description="Most documents per /v1/rerank request, and pairs per /v1/score (Cohere's bound); past it: 400."
    )
    keep_alive: str | float = Field(
        "5m",
        description=(
            "How long a model stays loaded after its last request when neither the request nor models.toml "
            "says: seconds or a duration like '5m' or '1h'; 0 unloads it once idle; negative: never."
        ),
    )
    memory_budget: str | int = Field(
        "75%",
        description=(
            "Memory the loaded models may use together (estimated before each load): bytes, '12GiB', or "
            "'75%' of RAM. Idle models are unloaded, least recently used first, to make room."
        ),
    )
    gpu_memory_budget: str | int | None = Field(
        None, description="GPU memory offloaded layers may use together, as memory_budget (default: unchecked)."
    )
    max_loaded_models: int = Field(0, ge=0, description="Most models loaded at once (0: no limit).")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body accepted; past it: 413."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0,
        description="Longest a client may take to send its request body; past it: 408.",
    )
    send_timeout_seconds: float = Field(
        120.0, gt=0,
        description="How long a stream waits on a client that stopped reading before it closes the stream.",
    )
    # Connections (http/connections.py): bounds below any request, for clients that open and never ask.
    header_timeout_seconds: float = Field(
        20.0, gt=0,
        description=(
            "Longest a connection may take to send a whole request head, from its opening (or from the first byte "
            "after a response on a kept-alive one); past it the connection is closed."
        ),
    )
    idle_connection_timeout_seconds: int = Field(
        5, ge=1, description="How long a kept-alive connection may wait idle for its next request before it is closed."
    )
    max_connections: int | None = Field(
        None, ge=1,
        description=(
            "Open client connections at once; past it a new one is answered 503 and closed. Default: what the "
            "open-file limit (ulimit -n) leaves room for, less 64 for the server's own files, at most 4096."
        ),
    )
    adapter_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description=(
            "Directories adapters may be loaded from at runtime (POST /v1/adapters); repeatable, "
            "comma-separated in the environment. No directory: runtime loading is refused."
        ),
    )
    watch_adapters: bool = Field(
        False,
        description=(
            "Serve every GGUF file and PEFT directory in the adapter directories under its name, loading "
            "what appears and unloading what disappears while running."
        ),
    )
    lora: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Serve an adapter: NAME=PATH (on the default model) or NAME=PATH@BASE; repeatable.",
    )
    state_dir: Path | None = Field(
        None,
        description=(
            "Where converted adapters, stored responses and the list of pulled models are kept "
            "(default: $XDG_STATE_HOME/nomoat or ~/.local/state/nomoat)."
        ),
    )
    prompt_cache_disk: str | int = Field(
        "2GiB",
        description=(
            "Disk for prompt KV states (state_dir/prompt-cache), kept across unloads and restarts: what a model's "
            "prompt_cache_ram lets go is written there (docs/prompt-cache.md). Bytes or '2GiB'; 0 = off."
        ),
    )
    responses_max_age: float = Field(
        30 * 24 * 3600.0, gt=0,
        description=(
            "Seconds a stored Responses API response is kept for GET and previous_response_id (default 30 days); "
            "an older one's items stay while a younger response continues it."
        ),
    )
    responses_max_count: int = Field(
        10000, ge=1, description="Most Responses API responses kept; the oldest are dropped past it.",
    )
    responses_max_total_bytes: int = Field(
        1024**3, ge=1024,
        description="Most bytes of stored responses (their JSON) kept together; the oldest are dropped past it.",
    )
    responses_max_stored_bytes: int = Field(
        4 * 1024**2, ge=1024,
        description=(
            "Most bytes one stored response may hold (its own input items and the response); past it: 400. "
            "4 MiB of text is about a million tokens, more than any context this server runs."
        ),
    )
    responses_max_chain_length: int = Field(
        1000, ge=1,
        description="Most responses in one previous_response_id chain; continuing past it: 400.",
    )
    responses_max_chain_bytes: int = Field(
        32 * 1024**2, ge=1024,
        description="Most bytes one previous_response_id chain may hold together (read back each turn); past it: 400.",
    )
    responses_store_timeout_seconds: float = Field(
        5.0, gt=0,
        description="Longest a request waits for the response store (another process's lock included); past it: 503.",
    )
    # The Files API (server/files/): uploads under <state_dir>/files, one file's size and all files' size capped.
    max_file_bytes: int = Field(
        512 * 1024**2, ge=1,
        description="Largest file POST /v1/files accepts: bytes or a size like '512MiB'; past it: 413.",
    )
    files_max_total_bytes: int = Field(
        8 * 1024**3, ge=1,
        description=(
            "Most bytes of uploaded files kept together (every key's): bytes or a size like '8GiB'; an upload "
            "past it: 413 (delete files to make room)."
        ),
    )
    # Fine-tuning jobs (server/tuning/): each trains in a child process at idle priority.
    train_threads: int | None = Field(
        None, ge=1,
        description="Threads a fine-tuning job's trainer uses; unset: one fewer than the CPU cores (serving keeps one).",
    )
    max_training_jobs: int = Field(1, ge=1, description="Fine-tuning jobs training at once; the others wait, queued.")
    train_idle_priority: bool = Field(True, description="Run trainers at idle priority (SCHED_IDLE, else nice 19): serving "
                                      "keeps its latency, training waits while serving is busy; false: normal priority.")
    max_tokens_limit: int = Field(
        4096, ge=1,
        description="Most tokens one request may generate; asking more: 400. Also the default when a request sets none.",
    )
    max_prompt_tokens: int = Field(
        0, ge=0, description="Most prompt tokens per request; past it: 400 context_length_exceeded (0: the model's context)."
    )
    allow_remote_images: bool = Field(
        False, description="Fetch http(s) image URLs in chat requests (off: images must be data URLs; a URL gets 400)."
    )
    max_image_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest image file a request may hold or have fetched; past it: 400."
    )
    max_image_pixels: int = Field(
        33_554_432, ge=1, description="Most pixels (width x height) in one image, read from its header; past it: 400."
    )
    remote_image_timeout_seconds: float = Field(
        10.0, gt=0, description="Seconds to fetch one remote image (allow_remote_images); past it: 400."
    )
    max_concurrent_streams: int = Field(
        128, ge=0, description="Generation requests (streaming or not) running at once, all callers; past it: 429 (0: no limit)."
    )
    max_streams_per_key: int = Field(
        32, ge=0,
        description=(
            "Generation requests running at once per API key (per client address without auth); "
            "past it: 429 (0: no limit)."
        ),
    )
    request_timeout_seconds: float = Field(
        600.0, ge=0,
        description="A generation running longer is stopped and answered with what it has, finish_reason 'length' (0: no limit).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line (one per request, with its request id)."
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may run before they are cut."
    )
    api_key: SecretStr | None = Field(
        None, description="API key clients send as 'Authorization: Bearer KEY'; several: comma-separated."
    )
    api_key_file: Path | None = Field(
        None, description="File of API keys, one per line ('#' comments); re-read on SIGHUP."
    )
    admin_key: SecretStr | None = Field(
        None, description="Key for routes that change state (/admin/*, adapter load/unload)."
    )
    require_api_key: bool = Field(
        False, description="Refuse to start without an API key (the Docker image sets this)."
    )
    metrics_require_key: bool = Field(False, description="Require an API key for /metrics too.")
    ui: bool = Field(
        True, description="Serve the web page (chat, adapter mixer, server panel) at / (--no-ui: off, a 404)."
    )
    cors_origins: str = Field(
        "", description="Browser origins allowed to call the API, comma-separated, or '*' (empty: CORS off)."
    )

    # Set by systemd for the sd_notify protocol, under its own names (no NOMOAT_ prefix, no flag).
    notify_socket: str | None = Field(
        None, validation_alias="NOTIFY_SOCKET", description="systemd's notify socket (path or @abstract)."
    )
    watchdog_usec: int | None = Field(
        None, validation_alias="WATCHDOG_USEC", description="systemd's watchdog timeout in microseconds."
    )
    watchdog_pid: int | None = Field(
        None, validation_alias="WATCHDOG_PID", description="The process systemd's watchdog applies to."
    )

    @model_validator(mode="after")
    def _split_host(self) -> Settings:
        host, port, scheme = split_host(self.host)
        self.host, self._scheme = host, scheme
        if port is not None and "port" not in self.model_fields_set:
            self.port = port
        return self

    def client_url(self) -> str:
        """The URL the client commands reach this server at: a wildcard address asks the loopback."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{host}:{self.port}"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: str | float) -> str | float:
        parse_duration(value)
        return value

    @field_validator("memory_budget", "gpu_memory_budget")
    @classmethod
    def _size(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_size(value, system_memory())
        return value

    @field_validator("max_file_bytes", "files_max_total_bytes", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    def keep_alive_seconds(self) -> float:
        return parse_duration(self.keep_alive)

    def memory_budget_bytes(self) -> int:
        return parse_size(self.memory_budget, system_memory())

    def gpu_memory_budget_bytes(self) -> int | None:
        return None if self.gpu_memory_budget is None else parse_size(self.gpu_memory_budget, None, "GPU memory")

    @field_validator("prompt_cache_disk")
    @classmethod
    def _disk_size(cls, value: str | int) -> str | int:
        parse_size(value, None, "disk")
        return value

    def prompt_cache_disk_bytes(self) -> int:
        return parse_size(self.prompt_cache_disk, None, "disk")

    @field_validator("adapter_dirs", "lora", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # NOMOAT_ADAPTER_DIRS=/a,/b reads better than JSON in a unit file or a shell.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        xdg = os.environ.get("XDG_STATE_HOME")
        if xdg:
            return Path(xdg) / "nomoat"
        try:
            home = Path.home()
        except RuntimeError:  # no HOME and no passwd entry (systemd's DynamicUser without StateDirectory)
            raise ConfigError("there is no home directory to keep state in: set state_dir (NOMOAT_STATE_DIR)") from None
        return home / ".local" / "state" / "nomoat"

    @classmethod
    def load(cls, cli: dict[str, Any], file_values: dict[str, Any], source: str) -> Settings:
        """Merge file values under env and CLI values and validate once.

        pydantic-settings ranks init kwargs above env, so file values are only passed
        for keys the environment does not set.
        """
        env_values = EnvSettingsSource(cls)()
        merged = {k: v for k, v in file_values.items() if k not in env_values}
        merged.update({k: v for k, v in cli.items() if v is not None})
        def rank(key: str) -> int:  # where a setting came from: 3 a flag, 2 the environment, 1 the file
            return 3 if key in cli else 2 if key in env_values else 1 if key in merged else 0

        if rank("host") > rank("port"):
            with contextlib.suppress(ValueError):  # a bad host is reported by validation, below
                port = split_host(str(cli.get("host", env_values.get("host", merged.get("host")))))[1]
                if port is not None:
                    merged["port"] = port  # HOST:PORT from a higher source beats a lower source's port
        try:
            return cls(**merged)
        except ValidationError as exc:
            # A bad value is reported where the user wrote it: a flag, a variable or the file.
            def origin(key: str) -> str:
                if key in cli:
                    return "--" + key.replace("_", "-")
                if key in env_values:
                    return f"environment variable NOMOAT_{key.upper()}"
                return source

            raise ConfigError(format_validation_error(exc, source, origin, cls)) from None

