"""The trainer child process: `python -m nomoat.tuning.train <job_dir>/spec.json`.

It reads a TrainSpec, validates and tokenizes the files (tuning/examples.py), trains (tuning/loop.py) and speaks
to its parent in spec.py's events, one JSON line each on stdout; everything else it or its libraries print goes
to stderr. SIGTERM finishes the current step, saves a checkpoint with its resume state, prints `paused` and exits
0. torch, transformers and peft are imported here only after `training_available()` finds them: the server
process itself never imports them.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from .examples import Example, ExampleError, open_renderer
from .spec import (
    EXIT_UNAVAILABLE,
    Error,
    ErrorCode,
    Event,
    Paused,
    TrainSpec,
    Validated,
    event_line,
    steps_per_epoch,
)

INSTALL_HINT = ('pip install "nomoat[train]" --extra-index-url https://download.pytorch.org/whl/cpu '
                "(the extra index keeps pip on PyTorch's CPU build, without ~5 GB of CUDA packages)")
_TRAINING_PACKAGES = ("torch", "transformers", "peft")


def training_available() -> str | None:
    """Why this machine cannot train (a package missing, with the install command), or None when it can.
    Looks the packages up without importing them."""
    missing = [name for name in _TRAINING_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"fine-tuning needs {', '.join(missing)}, not installed here: {INSTALL_HINT}"


class _Events:
    """The parent's channel: the real stdout, kept apart from file descriptor 1, which is pointed at stderr so
    that nothing a library prints can be mistaken for an event."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out: TextIO = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def emit(self, event: Event) -> None:
        self._out.write(event_line(event) + "\n")
        self._out.flush()


def _set_threads(threads: int) -> None:
    # Before torch is imported: its OpenMP and MKL pools read these once, at start.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    # OpenMP's workers spin while they wait for each other. On cores shared with the server (and anything else)
    # that spinning took the step from ~1 to ~17 CPU seconds (2 threads, 104 tokens, a loaded 2-core box), and
    # the cycles it burns are the server's. Passive workers sleep instead; a parent's own choice stands.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _read(spec: TrainSpec, path: Path | None, code: ErrorCode, param: str) -> list[Example] | Error:
    if path is None:
        return []
    renderer = open_renderer(spec.base_gguf, spec.chat_template, max_tokens=spec.max_tokens)
    try:
        return renderer.read(path)
    except ExampleError as exc:
        return Error(code=code, message=f"{path.name}: {exc}", param=param)
    except (OSError, UnicodeDecodeError) as exc:
        return Error(code=code, message=f"{path.name} could not be read: {exc}", param=param)
    finally:
        renderer.vocab.close()


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def run(spec: TrainSpec, events: _Events, stop: threading.Event) -> int:
    """The child's work; its exit status."""
    train = _read(spec, spec.training_file, "invalid_training_file", "training_file")
    valid = _read(spec, spec.validation_file, "invalid_validation_file", "validation_file")
    for result in (train, valid):
        if isinstance(result, Error):
            events.emit(result)
            return 1
    assert isinstance(train, list) and isinstance(valid, list)
    total_steps = steps_per_epoch(len(train), spec.batch_size) * spec.n_epochs
    events.emit(Validated(examples=len(train), tokens=sum(len(e.tokens) for e in train), total_steps=total_steps))

    if stop.is_set() and not spec.resume:  # stopped before any step: nothing to save, no model to load
        events.emit(Paused(step=0))
        return 0
    import torch  # only a child that trains pays for torch

    from . import loop

    torch.set_num_threads(spec.threads)
    try:
        model = loop.lora_model(loop.load_base(spec.base_gguf), spec)
        trainer = loop.Trainer(spec, model, train, valid or None, events.emit, stop.is_set)
        if spec.resume:
            step = trainer.restore_latest()
            print(f"resuming at step {step}" if step is not None else "no checkpoint to resume: starting anew",
                  file=sys.stderr)
        events.emit(trainer.run())
    except Exception as exc:  # the parent learns why in the protocol; the traceback goes to the log
        code: ErrorCode = "out_of_memory" if _is_out_of_memory(exc) else "training_failed"
        import traceback

        traceback.print_exc()
        events.emit(Error(code=code, message=f"{type(exc).__name__}: {exc}"))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    events = _Events()
    if len(args) != 1:
        events.emit(Error(code="training_failed", message="usage: python -m nomoat.tuning.train <spec.json>"))
        return 1
    missing = training_available()
    if missing is not None:
        events.emit(Error(code="training_unavailable", message=missing))
        return EXIT_UNAVAILABLE
    try:
        spec = TrainSpec.read(Path(args[0]))
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        events.emit(Error(code="training_failed", message=f"{args[0]}: not a training spec: {exc}"))
        return 1
    _set_threads(spec.threads)
    stop = threading.Event()
    # A flag, acted on between steps: the step under way finishes and is saved.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return run(spec, events, stop)


if __name__ == "__main__":
    sys.exit(main())
