"""Fine-tuning on this machine: the trainer child's training tokens/s and the wall time of a test-sized job.

Run: .venv/bin/python bench/bench_train.py [--threads 2] [--examples 6] [--epochs 4] [--batch-size 2]

It writes a small dataset teaching one made-up fact (as the fine-tuning tests do), runs
`python -m nomoat.tuning.train` on the embedded SmolLM2-135M exactly as a job does, and reads its events:
the time to the `validated` event (files rendered and tokenized), to the first step (the GGUF dequantised and
the LoRA built), the steps' tokens/s, and the whole job's time.

With --serving it measures the other half instead: serving with a job running against without one. It starts a
real `nomoat serve` (the embedded model, 4 slots), streams a fixed set of chats (max_tokens 64, end-of-generation
banned) at concurrency 1 and 4 while idle, then uploads a dataset big enough to keep training through the
measurement, starts a job through the API, waits for its first step, streams the same chats again, and prints
TTFT p50 and decode tok/s in both states with their ratio. The issue's goal: TTFT p50 with a job running at most
1.5x idle. The job is cancelled at the end; if it finished before the measurement did, the run says so.
Tried once here at --rounds 1 --train-threads 1 on the busy shared box, to see it work (no figure to quote: the
box's other work, not the job, set both columns).

Run: .venv/bin/python bench/bench_train.py --serving [--rounds 4] [--train-threads N] [--serve-threads 2]

Measured 2026-12-07 on the shared 2-core CI box (load average 5-9 from other work), default arguments
(6 examples x 4 epochs, batch 2: 12 steps, 1,240 tokens; loss 2.17 -> 0.004):
  --threads 1: 81 tokens/s, first step at 26 s, whole job 40 s
  --threads 2: 8 tokens/s, first step at 30 s, whole job 174 s (two OpenMP threads on busy cores wait on each
               other at every operation; DESIGN.md's 350 tokens/s on 2 threads was an idle machine)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NO_EOG, ServerProcess, StreamTiming, models_toml, stream_chat
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
    parser.add_argument("--serving", action="store_true", help="serving TTFT and tok/s with a job running vs idle")
    parser.add_argument("--rounds", type=int, default=4, help="--serving: chats per client at each concurrency")
    parser.add_argument("--train-threads", type=int, default=None, help="--serving: the server's train_threads")
    parser.add_argument("--serve-threads", type=int, default=2, help="--serving: the model's n_threads")
    args = parser.parse_args()
    if args.serving:
        serving(args)
    else:
        training(args)


def training(args: argparse.Namespace) -> None:
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


PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle gear works.",
           "Describe a night market in a few sentences.", "Give three tips for growing tomatoes.",
           "Tell me about the first snow of winter.", "What makes a good chess opening?",
           "Describe an old violin and its owner.", "Write a poem about a desert train."]
CONCURRENCY = (1, 4)
# Far more steps than the measurement lasts: 5,000 examples x 4 epochs at batch 2 is 10,000 steps.
BUSY_EXAMPLES = 5000


def serve_load(url: str, concurrency: int, rounds: int) -> list[StreamTiming]:
    """`concurrency` clients, each streaming `rounds` chats from the fixed prompt set."""
    def client(i: int) -> list[StreamTiming]:
        with httpx.Client(timeout=900) as c:
            return [stream_chat(url, {"model": "smollm2-135m", "max_tokens": 64, "temperature": 0,
                                      "logit_bias": NO_EOG,
                                      "messages": [{"role": "user", "content": PROMPTS[(i + r * concurrency) % len(PROMPTS)]}]},
                                c) for r in range(rounds)]
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return [t for ts in pool.map(client, range(concurrency)) for t in ts]


def measure(url: str, rounds: int) -> dict[int, tuple[float, float]]:
    """TTFT p50 (s) and decode tok/s p50 at each concurrency; one warm-up chat first."""
    serve_load(url, 1, 1)
    out = {}
    for c in CONCURRENCY:
        timings = serve_load(url, c, rounds)
        out[c] = (statistics.median(t.ttft for t in timings), statistics.median(t.decode_tps for t in timings))
    return out


def start_job(client: httpx.Client, root: Path) -> str:
    """Upload a dataset that trains far longer than the measurement, start a job, wait for its first step."""
    write_dataset(root / "busy.jsonl", BUSY_EXAMPLES)
    with (root / "busy.jsonl").open("rb") as f:
        r = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("busy.jsonl", f)})
    r.raise_for_status()
    r = client.post("/v1/fine_tuning/jobs", json={"model": "smollm2-135m", "training_file": r.json()["id"],
                                                  "hyperparameters": {"n_epochs": 4, "batch_size": 2}})
    r.raise_for_status()
    job_id: str = r.json()["id"]
    deadline = time.monotonic() + 900
    while True:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in ("failed", "cancelled", "succeeded"):
            sys.exit(f"the job ended before training: {job}")
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        if any(e["type"] == "metrics" for e in events):
            return job_id
        if time.monotonic() > deadline:
            sys.exit(f"no training step after 900 s: {job}")
        time.sleep(0.5)  # polled as a client does; the job's first step is the condition


def serving(args: argparse.Namespace) -> None:
    env = {} if args.train_threads is None else {"NOMOAT_TRAIN_THREADS": str(args.train_threads)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = ServerProcess(models_toml(parallel=4, threads=args.serve_threads), root, "--log-level", "warning",
                               env=env).wait_ready()
        try:
            with httpx.Client(base_url=server.base_url, timeout=120) as client:
                idle = measure(server.base_url, args.rounds)
                job_id = start_job(client, root)
                busy = measure(server.base_url, args.rounds)
                status = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"]
                client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        finally:
            server.stop()
    print(f"serve threads {args.serve_threads}, train threads {args.train_threads or 'default'}, "
          f"{args.rounds} chats per client, max_tokens 64; the job was {status} at the end")
    print(f"{'c':>3} {'TTFT p50 idle':>14} {'with job':>9} {'ratio':>6}   {'tok/s idle':>10} {'with job':>9} {'ratio':>6}")
    for c in CONCURRENCY:
        (ti, di), (tb, db) = idle[c], busy[c]
        print(f"{c:>3} {ti * 1000:>11.0f} ms {tb * 1000:>6.0f} ms {tb / ti:>5.2f}x   "
              f"{di:>10.1f} {db:>9.1f} {db / di:>5.2f}x")
    if status != "running":
        print("warning: the job was not running through the whole measurement; raise BUSY_EXAMPLES")


if __name__ == "__main__":
    main()
