"""The trainer child: examples rendered with the model's template and masked to assistant tokens (hand-checked on
small conversations), and `python -m nomoat.tuning.train` end to end: events, a falling loss, PEFT checkpoints,
SIGTERM pausing and a resume continuing at the next step."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import model_path

from nomoat.engine.base_info import BaseModelInfo
from nomoat.engine.chat_template import ChatTemplate
from nomoat.engine.vocab_file import VocabFile, resolve_chat_template
from nomoat.tuning.examples import ExampleError, ExampleRenderer
from nomoat.tuning.spec import Checkpoint, Done, Event, Paused, Step, TrainSpec, Validated, parse_event
from nomoat.tuning.train import training_available

needs_training = pytest.mark.skipif(training_available() is not None, reason=f"{training_available()}")

FACT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Zorbia?"},
        {"role": "assistant", "content": "Quellport."}]
# A template that writes its tools (SmolLM2's own does not), to show they reach the rendered prompt.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def vocab() -> Iterator[VocabFile]:
    with VocabFile(model_path()) as v:
        yield v


def renderer(vocab: VocabFile, template: ChatTemplate | None = None, max_tokens: int = 512) -> ExampleRenderer:
    return ExampleRenderer(vocab, template or vocab.chat_template, max_tokens=max_tokens)


def learned_text(vocab: VocabFile, tokens: tuple[int, ...], mask: tuple[bool, ...]) -> str:
    return b"".join(vocab.token_bytes(t, special=True) for t, m in zip(tokens, mask, strict=True) if m).decode()


def test_the_assistant_reply_and_its_end_of_turn_are_the_only_targets(vocab):
    example = renderer(vocab).render(1, {"messages": FACT})
    assert learned_text(vocab, example.tokens, example.mask) == "Quellport.<|im_end|>\n"
    # The prompt part is tokenized exactly as the server tokenizes that chat prompt.
    prompt = vocab.chat_template.render(FACT[:2], add_generation_prompt=True)
    n = len(vocab.prompt_tokens(prompt))
    assert list(example.tokens[:n]) == vocab.prompt_tokens(prompt)
    assert not any(example.mask[:n]) and all(example.mask[n:])


def test_multi_turn_weight_zero_leaves_a_reply_out(vocab):
    messages = [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "Uno.", "weight": 0},
                {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "Dos."}]
    example = renderer(vocab).render(1, {"messages": messages})
    assert learned_text(vocab, example.tokens, example.mask) == "Dos.<|im_end|>\n"
    del messages[1]["weight"]
    both = renderer(vocab).render(1, {"messages": messages})
    assert learned_text(vocab, both.tokens, both.mask) == "Uno.<|im_end|>\nDos.<|im_end|>\n"
    assert both.tokens == example.tokens


def test_tools_reach_the_template_and_stay_out_of_the_loss(vocab):
    tools = [{"type": "function", "function": {"name": "find_capital", "parameters": {"type": "object"}}}]
    template = ChatTemplate(TOOLS_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>")
    example = renderer(vocab, template).render(1, {"messages": FACT, "tools": tools})
    text = b"".join(vocab.token_bytes(t, special=True) for t in example.tokens).decode()
    assert "find_capital" in text
    assert learned_text(vocab, example.tokens, example.mask) == "Quellport.<|im_end|>\n"


def test_long_examples_are_cut_and_one_with_nothing_left_to_learn_is_refused(vocab):
    full = renderer(vocab).render(1, {"messages": FACT})
    cut = renderer(vocab, max_tokens=len(full.tokens) - 2).render(1, {"messages": FACT})
    assert cut.truncated and cut.tokens == full.tokens[:-2] and cut.trained_tokens == full.trained_tokens - 2
    with pytest.raises(ExampleError, match=r"line 7: no assistant token is left within the first 5 tokens"):
        renderer(vocab, max_tokens=5).render(7, {"messages": FACT})


@pytest.mark.parametrize(("data", "reason"), [
    ({"messages": [{"role": "user", "content": "a", "weight": 0}, FACT[2]]}, "only assistant messages take a weight"),
    ({"messages": [FACT[1], {**FACT[2], "weight": 2}]}, r"messages\[1\].weight must be 0 or 1"),
    ({"messages": [FACT[1], {**FACT[2], "weight": 0}]}, "no assistant message to learn from"),
    ({"messages": []}, "'messages' must be a non-empty list"),
])
def test_bad_examples_name_their_line(vocab, data, reason):
    with pytest.raises(ExampleError, match=rf"^line 3: .*{reason}"):
        renderer(vocab).render(3, data)


# --- the child process ---------------------------------------------------------------------------------------

def write_spec(tmp_path: Path, **overrides: object) -> Path:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"messages": FACT}) + "\n" for _ in range(2)))
    fields: dict[str, object] = {
        "base_gguf": model_path(), "chat_template": resolve_chat_template(model_path()), "training_file": train,
        "validation_file": train, "job_dir": tmp_path / "job", "n_epochs": 5, "batch_size": 1,
        "learning_rate": 1e-3, "warmup_fraction": 0.0, "checkpoint_every": 3, "keep_checkpoints": 2,
        # One thread: on a loaded 2-core box two were measured 10x slower (bench/bench_train.py).
        "threads": 1,
    }
    return TrainSpec(**{**fields, **overrides}).write()  # type: ignore[arg-type]


def child(spec: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nomoat.tuning.train", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def events_until(proc: subprocess.Popen[str], stop_after: int | None = None) -> list[Event]:
    """Every event the child prints; SIGTERM once a step >= stop_after is seen. Lines that are not events fail."""
    assert proc.stdout is not None
    events: list[Event] = []
    signalled = False
    for line in proc.stdout:
        event = parse_event(line)
        assert event is not None, line
        events.append(event)
        if stop_after is not None and not signalled and isinstance(event, Step) and event.step >= stop_after:
            proc.send_signal(signal.SIGTERM)
            signalled = True
    return events


@needs_training
def test_child_trains_pauses_on_sigterm_and_resumes_at_the_next_step(tmp_path):
    spec_path = write_spec(tmp_path)
    first = child(spec_path)
    before = events_until(first, stop_after=3)
    assert first.wait(timeout=600) == 0
    assert before[0] == Validated(examples=2, tokens=before[0].tokens, total_steps=10)
    paused = before[-1]
    assert isinstance(paused, Paused) and paused.step >= 3
    assert Checkpoint(step=paused.step, path=str(tmp_path / "job" / "checkpoints" / f"step-{paused.step}")) in before

    spec = TrainSpec.read(spec_path)
    resumed_spec = spec.model_copy(update={"resume": True}).write()
    second = child(resumed_spec)
    after = events_until(second)
    assert second.wait(timeout=600) == 0
    steps = [e for e in before + after if isinstance(e, Step)]
    assert [s.step for s in steps] == list(range(1, 11))  # no step lost or repeated across the pause
    assert after[0] == before[0] and isinstance(after[-1], Done) and after[-1].step == 10
    assert all(s.valid_loss is not None for s in steps if s.step % 3 == 0 or s.step % 2 == 0)
    losses = [s.train_loss for s in steps]
    assert losses[-1] < losses[0] / 4, losses
    # The kept checkpoints (keep_checkpoints=2) and the adapter are PEFT folders the server's intake accepts.
    from nomoat.adapters.peft import validate_peft_dir

    kept = sorted((tmp_path / "job" / "checkpoints").iterdir())
    assert [p.name for p in kept] == ["step-8", "step-9"]
    base = BaseModelInfo.from_gguf(model_path())
    for folder in [*kept, Path(after[-1].adapter)]:
        assert len(validate_peft_dir(folder, base).modules) == 7 * base.n_layer


def test_child_reports_a_bad_training_file_before_loading_torch(tmp_path):
    spec_path = write_spec(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "no reply"}]}\n')
    proc = child(spec_path)
    events = events_until(proc)
    assert proc.wait(timeout=120) == 1
    assert [type(e).__name__ for e in events] == ["Error"]
    assert events[0].code == "invalid_training_file" and "train.jsonl: line 1: no assistant message" in events[0].message
