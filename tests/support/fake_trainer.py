"""A stand-in for `python -m nomoat.tuning.train spec.json` (no torch): prints spec.py's events as the real child
does, its "adapter" and checkpoints copies of a PEFT folder made for the base (argv[3]).

    fake_trainer.py SPEC MODE PEFT    MODE: ok | error | crash | wait (run to a checkpoint, then wait for SIGTERM:
                                      paused; resumed, it runs to the end)
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
mode, peft = sys.argv[2], Path(sys.argv[3])
job_dir = Path(spec["job_dir"])
TOTAL = 3
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


def step(n: int) -> None:
    say(type="step", step=n, total_steps=TOTAL, epoch=1, train_loss=2.0 / n, train_mean_token_accuracy=0.2 * n,
        tokens=40 * n, valid_loss=None, valid_mean_token_accuracy=None)


def checkpoint(n: int) -> None:
    folder = job_dir / "checkpoints" / f"step-{n}"
    shutil.copytree(peft, folder, dirs_exist_ok=True)
    say(type="checkpoint", step=n, path=str(folder))


say(type="validated", examples=2, tokens=80, total_steps=TOTAL)
if mode == "error":
    say(type="error", code="invalid_training_file", message="line 2: no assistant message", param="training_file")
    sys.exit(1)
if mode == "crash":
    print("Traceback (most recent call last):\nRuntimeError: the fake trainer fell over", file=sys.stderr)
    sys.exit(3)
first = 1
if mode == "wait" and not spec["resume"]:
    step(1)
    checkpoint(1)
    stop.wait(120)  # the test pauses, cancels or closes the tuner meanwhile
    say(type="paused", step=1)
    sys.exit(0)
if spec["resume"]:
    first = 2
for n in range(first, TOTAL + 1):
    step(n)
    if n == 2:
        checkpoint(n)
shutil.copytree(peft, job_dir / "adapter", dirs_exist_ok=True)
say(type="done", step=TOTAL, trained_tokens=120, adapter=str(job_dir / "adapter"))
