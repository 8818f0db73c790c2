"""The training loop itself (torch, transformers, peft): the base dequantised from its GGUF, a PEFT LoRA on it,
AdamW with linear warmup and decay over padded, masked batches, checkpoints that resume exactly.

A plain loop rather than transformers' Trainer: the child must stop after any step on SIGTERM with a checkpoint
and its resume state, print one progress line per step in the parent's protocol, and restore the data order,
optimizer, schedule and RNG bit for bit; Trainer brings accelerate and its own callbacks, state files and
schedule of saves for all of that, and hides the step in between. Only tuning/train.py imports this module.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from .examples import Example
from .spec import Checkpoint, Done, Event, Paused, Step, TrainSpec, steps_per_epoch

STATE_NAME = "trainer_state.pt"
_IGNORE = -100  # torch's cross_entropy ignore_index


def load_base(gguf: Path) -> Any:
    """The served GGUF, dequantised to fp32 by transformers."""
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)


def lora_model(base: Any, spec: TrainSpec) -> Any:
    torch.manual_seed(spec.seed)  # lora_A's initialisation
    # peft annotates lora_alpha as int but only ever divides by it: a float alpha scales as written.
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,  # type: ignore[arg-type]
                        target_modules=list(spec.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(base, config)


@dataclass(frozen=True)
class BatchStats:
    loss: float
    accuracy: float
    tokens: int  # every token of the batch, prompt included (OpenAI's trained_tokens counts them all)


def _micro_batches(examples: list[Example], size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask, labels), padded on the right to each micro-batch's longest example."""
    out = []
    for start in range(0, len(examples), size):
        chunk = examples[start:start + size]
        width = max(len(e.tokens) for e in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), _IGNORE, dtype=torch.long)
        for row, example in enumerate(chunk):
            n = len(example.tokens)
            tokens = torch.tensor(example.tokens, dtype=torch.long)
            ids[row, :n] = tokens
            attention[row, :n] = 1
            labels[row, :n] = torch.where(torch.tensor(example.mask), tokens, _IGNORE)
        out.append((ids, attention, labels))
    return out


def _loss_sums(model: Any, ids: torch.Tensor, attention: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The summed next-token loss over the targets, how many targets, how many the argmax got right."""
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=_IGNORE, reduction="sum")
    chosen = targets != _IGNORE
    correct = int((logits.argmax(-1)[chosen] == targets[chosen]).sum())
    return loss, int(chosen.sum()), correct


def evaluate(model: Any, examples: list[Example], micro_batch_size: int) -> tuple[float, float]:
    """Mean loss and token accuracy over the targets of `examples`, without dropout or gradients."""
    model.eval()
    total, count, correct = 0.0, 0, 0
    with torch.no_grad():
        for ids, attention, labels in _micro_batches(examples, micro_batch_size):
            loss, n, right = _loss_sums(model, ids, attention, labels)
            total, count, correct = total + float(loss), count + n, correct + right
    model.train()
    return total / max(count, 1), correct / max(count, 1)


def _schedule(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = math.ceil(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


class Trainer:
    """One run of `spec` over tokenized examples; `run` prints its events through `emit`."""

    def __init__(self, spec: TrainSpec, model: Any, train: list[Example], valid: list[Example] | None,
                 emit: Callable[[Event], None], stop_requested: Callable[[], bool]) -> None:
        self.spec, self.model, self.train, self.valid = spec, model, train, valid
        self.emit, self.stop_requested = emit, stop_requested
        self.per_epoch = steps_per_epoch(len(train), spec.batch_size)
        self.total_steps = self.per_epoch * spec.n_epochs
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           _schedule(self.total_steps, spec.warmup_fraction))
        self.step = 0
        self.tokens = 0

    def _order(self, epoch: int) -> list[int]:
        """The epoch's shuffle, a function of the seed and the epoch alone, so a resume sees the same order."""
        generator = torch.Generator().manual_seed(self.spec.seed * 1_000_003 + epoch)
        return [int(i) for i in torch.randperm(len(self.train), generator=generator)]

    def _batch(self, step: int) -> list[Example]:
        epoch, index = divmod(step, self.per_epoch)
        order = self._order(epoch)
        size = self.spec.batch_size
        return [self.train[i] for i in order[index * size:(index + 1) * size]]

    def _train_step(self, batch: list[Example]) -> BatchStats:
        targets = sum(max(0, sum(e.mask[1:])) for e in batch)
        total, correct = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for ids, attention, labels in _micro_batches(batch, self.spec.micro_batch_size):
            loss, _, right = _loss_sums(self.model, ids, attention, labels)
            # Normalised by the whole batch's targets: the gradient of one big batch, accumulated in pieces.
            (loss / targets).backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
            total, correct = total + float(loss.detach()), correct + right
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return BatchStats(total / targets, correct / targets, sum(len(e.tokens) for e in batch))

    def run(self) -> Event:
        """Train from self.step to the end, or until a stop is requested; the last event (Done or Paused)."""
        self.model.train()
        while self.step < self.total_steps:
            if self.stop_requested():
                return self._pause()
            stats = self._train_step(self._batch(self.step))
            self.step += 1
            self.tokens += stats.tokens
            epoch_end = self.step % self.per_epoch == 0
            due = epoch_end or (self.spec.checkpoint_every and self.step % self.spec.checkpoint_every == 0)
            valid = evaluate(self.model, self.valid, self.spec.micro_batch_size) if due and self.valid else None
            self.emit(Step(step=self.step, total_steps=self.total_steps, epoch=(self.step - 1) // self.per_epoch + 1,
                           train_loss=stats.loss, train_mean_token_accuracy=stats.accuracy, tokens=self.tokens,
                           valid_loss=valid[0] if valid else None,
                           valid_mean_token_accuracy=valid[1] if valid else None))
            if due and self.step < self.total_steps:
                self.save_checkpoint()
        self.spec.job_dir.mkdir(parents=True, exist_ok=True)
        _replace_dir(self.spec.adapter_dir, self.model.save_pretrained)
        return Done(step=self.step, trained_tokens=self.tokens, adapter=str(self.spec.adapter_dir))

    def _pause(self) -> Event:
        if self.step > 0 and not (self.spec.checkpoints_dir / f"step-{self.step}").is_dir():
            self.save_checkpoint()
        return Paused(step=self.step)

    # --- checkpoints -----------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """checkpoints/step-N (a PEFT folder) and resume/step-N/trainer_state.pt; older ones beyond the keep go."""
        peft_dir = self.spec.checkpoints_dir / f"step-{self.step}"
        state_dir = self.spec.job_dir / "resume" / f"step-{self.step}"
        self.spec.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "tokens": self.tokens, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state()}
        # The state first: a checkpoint folder listed means its resume state is there too.
        _replace_dir(state_dir, lambda path: torch.save(state, Path(path) / STATE_NAME))
        _replace_dir(peft_dir, self.model.save_pretrained)
        self.emit(Checkpoint(step=self.step, path=str(peft_dir)))
        self._prune()

    def _prune(self) -> None:
        steps = sorted(_saved_steps(self.spec.checkpoints_dir))
        for old in steps[: max(0, len(steps) - self.spec.keep_checkpoints)]:
            shutil.rmtree(self.spec.checkpoints_dir / f"step-{old}", ignore_errors=True)
            shutil.rmtree(self.spec.job_dir / "resume" / f"step-{old}", ignore_errors=True)

    def restore_latest(self) -> int | None:
        """Continue from the newest checkpoint with its resume state; its step, or None when there is none."""
        resume_dir = self.spec.job_dir / "resume"
        steps = [s for s in _saved_steps(self.spec.checkpoints_dir) if (resume_dir / f"step-{s}" / STATE_NAME).is_file()]
        if not steps:
            return None
        step = max(steps)
        weights = load_file(str(self.spec.checkpoints_dir / f"step-{step}" / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, weights)
        state = torch.load(resume_dir / f"step-{step}" / STATE_NAME, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        return step


def _saved_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return [int(p.name[5:]) for p in folder.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit()]


def _replace_dir(target: Path, write: Callable[[str], Any]) -> None:
    """`write(folder)` into a fresh folder that then takes `target`'s place: a kill mid-save leaves the old one."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(str(partial))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
