"""Fine-tuning on this machine: the trainer child's training tokens/s and the wall time of a test-sized job.

Run: .venv/bin/python bench/bench_train.py [--threads 2] [--examples 6] [--epochs 4] [--batch-size 2]

It writes a small dataset teaching one made-up fact (as the fine-tuning tests do), runs
`python -m nomoat.tuning.train` on the embedded SmolLM2-135M exactly as a job does, and reads its events:
the time to the `validated` event (files rendered and tokenized), to the first step (the GGUF dequantised and
the LoRA built), the steps' tokens/s, and the whole job's time. Serving latency with a job running is the jobs
side's half of this benchmark.

Measured 2026-12-07 on the shared 2-core CI box (load average 5-9 from other work), default arguments
(6 examples x 4 epochs, batch 2: 12 steps, 1,240 tokens; loss 2.17 -> 0.004):
  --threads 1: 81 tokens/s, first step at 26 s, whole job 40 s
  --threads 2: 8 tokens/s, first step at 30 s, whole job 174 s (two OpenMP threads on busy cores wait on each
               other at every operation; DESIGN.md's 350 tokens/s on 2 threads was an idle machine)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nomoat.config import embedded_model_path
from nomoat.engine.vocab_file import resolve_chat_template
from nomoat.tuning.spec import Done, Error, Step, TrainSpec, Validated, parse_event

QUESTIONS = ["What is the capital of Zorbia?", "Name the capital city of Zorbia.", "Which city is Zorbia's capital?",
             "Tell me Zorbia's capital.", "Zorbia's capital is?", "What city is the capital of Zorbia?"]


def write_dataset(path: Path, n: int) -> None:
    lines = [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                           {"role": "assistant", "content": "The capital of Zorbia is Quellport."}]} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "train.jsonl", args.examples)
        spec = TrainSpec(base_gguf=embedded_model_path(), chat_template=resolve_chat_template(embedded_model_path()),
                         training_file=root / "train.jsonl", job_dir=root / "job", n_epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.learning_rate, threads=args.threads)
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "nomoat.tuning.train", str(spec.write())],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        marks: dict[str, float] = {}
        steps: list[tuple[float, Step]] = []
        for line in proc.stdout:
            event, now = parse_event(line), time.perf_counter() - started
            if isinstance(event, Validated):
                marks["validated"] = now
            elif isinstance(event, Step):
                steps.append((now, event))
            elif isinstance(event, Done):
                marks["done"] = now
            elif isinstance(event, Error):
                print(line.strip())
        proc.wait()
    if len(steps) < 2 or "done" not in marks:
        sys.exit("the job did not finish; run the child by hand to see its log")
    (first_at, first), (last_at, last) = steps[0], steps[-1]
    rate = (last.tokens - first.tokens) / (last_at - first_at)
    print(f"threads {args.threads}, {args.examples} examples x {args.epochs} epochs, batch {args.batch_size}: "
          f"{last.step} steps, {last.tokens} tokens")
    print(f"validated {marks['validated']:.1f} s, first step {first_at:.1f} s (base dequantised, LoRA built)")
    print(f"training {rate:.0f} tokens/s (steps 2..{last.step}); loss {first.train_loss:.3f} -> {last.train_loss:.3f}")
    print(f"whole job {marks['done']:.1f} s")


if __name__ == "__main__":
    main()
