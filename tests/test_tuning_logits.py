"""The adapter is right: a PEFT LoRA made on the dequantised GGUF with transformers + peft (what the trainer
trains) and served by a real nomoat gives the next-token logprobs that transformers + peft compute, within a
measured tolerance well below the adapter's own effect; and the trainer's examples tokenize a chat prompt exactly
as the server does.

Tolerance, measured (2 threads, the tests' Q8_0 SmolLM2-135M, three prompts, max over the served top 20 of the
next token): served vs transformers differ by up to 0.73 nats on the base alone and 0.37 with the adapter; the
adapter (random A, B ~ N(0, 0.1)) moves those logprobs by up to 3.9 nats. TOLERANCE sits above both gaps and
MIN_EFFECT three times above it: an adapter served as a no-op, or far from what peft computes, fails.

The base's gap is llama.cpp's Q8_0 arithmetic, not nomoat (traced 2026-12-07, llama.cpp in process through the
low-level API, the same tokens, top 20 of the next token, against transformers' fp32): the Q8_0 file gives 0.57
with flash attention off and 0.73 with it on, as the server runs it (served and in-process logprobs agree to
0.0000), while an F32 copy of the same file (llama-quantize --allow-requantize Q8_0 -> F32: the very weights
transformers dequantises) gives 0.000 with an f32 KV cache and 0.006 with f16 and flash attention, and an F16
copy 0.01. The weights being equal, what remains is the Q8_0 matmul quantising its activations to 8 bits; the
worst tokens sit at logprob -4 to -6 (the top token moves by at most 0.10, KL(transformers || llama.cpp) at most
0.017). nomoat's logprobs are the raw logits' log_softmax, taken before any sampler (log_softmax_row). The gap
is fixed for a given build and file; TOLERANCE leaves 0.27 over it for other CPUs' Q8_0 kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess, model_path, models_toml

from nomoat.engine.vocab_file import VocabFile
from nomoat.tuning.examples import ExampleRenderer
from nomoat.tuning.spec import DEFAULT_TARGET_MODULES
from nomoat.tuning.train import training_available

pytestmark = pytest.mark.skipif(training_available() is not None, reason=f"{training_available()}")

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, a small robot"]
TOLERANCE = 1.0  # nats, max over the served top 20 of each prompt's next token
MIN_EFFECT = 3.0  # the adapter must move some of those logprobs by at least this much


@pytest.fixture(scope="module")
def vocab() -> Iterator[VocabFile]:
    with VocabFile(model_path()) as v:
        yield v


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, vocab: VocabFile) -> tuple[Path, list[dict[int, float]],
                                                                                    list[dict[int, float]]]:
    """A PEFT folder with random A and B (B != 0, so the adapter acts), and transformers' next-token log_softmax
    for each prompt, with the adapter and without it."""
    torch = pytest.importorskip("torch", reason="fine-tuning's extra (torch) is not installed")
    from peft import LoraConfig, get_peft_model

    from nomoat.tuning.loop import load_base

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = get_peft_model(load_base(model_path()), LoraConfig(
        r=8, lora_alpha=16, target_modules=list(DEFAULT_TARGET_MODULES), init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    folder = tmp_path_factory.mktemp("logits") / "adapter"
    model.save_pretrained(str(folder))
    model.eval()

    def logprobs(prompt: str) -> dict[int, float]:
        ids = torch.tensor([vocab.tokenize(prompt, add_bos=vocab.add_bos)])
        with torch.no_grad():
            row = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
        return dict(enumerate(row.tolist()))

    adapted = [logprobs(p) for p in PROMPTS]
    with model.disable_adapter():
        base = [logprobs(p) for p in PROMPTS]
    return folder, base, adapted


@pytest.fixture(scope="module")
def served(reference, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = reference[0]
    # Each prompt evaluated whole, as transformers does: a reused prefix is computed in another batch shape.
    extra = f'prefix_cache = false\n[[adapters]]\nname = "trained"\npath = "{folder}"\n'
    proc = ServerProcess(models_toml(extra=extra), tmp_path_factory.mktemp("logits-server")).wait_ready()
    yield proc.base_url
    proc.close()


def served_top(url: str, model: str, prompt: str) -> dict[str, float]:
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 20}
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    top: dict[str, float] = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    return top


@pytest.fixture(scope="module")
def token_of_text(vocab: VocabFile) -> dict[str, int]:
    """Token texts as the served top_logprobs spell them, each to its id, for the texts only one token has
    (control tokens all print as "", partial UTF-8 as "\ufffd": those cannot be matched by text)."""
    ids: dict[str, list[int]] = {}
    for token in range(vocab.n_vocab):
        ids.setdefault(vocab.token_bytes(token, special=False).decode("utf-8", "replace"), []).append(token)
    return {text: found[0] for text, found in ids.items() if len(found) == 1}


def worst_difference(token_of_text: dict[str, int], top: dict[str, float], computed: dict[int, float]) -> float:
    """Max |served - computed| over the served top tokens that can be matched to their id by their text."""
    matched = [text for text in top if text in token_of_text]
    assert len(matched) >= len(top) - 5, sorted(top)
    return max(abs(top[text] - computed[token_of_text[text]]) for text in matched)


def test_served_adapter_logprobs_equal_transformers_peft_within_tolerance(served, reference, token_of_text):
    _, base, adapted = reference
    base_diff = adapter_diff = effect = 0.0
    for prompt, base_lp, adapted_lp in zip(PROMPTS, base, adapted, strict=True):
        base_top, adapter_top = served_top(served, "smollm2-135m", prompt), served_top(served, "trained", prompt)
        base_diff = max(base_diff, worst_difference(token_of_text, base_top, base_lp))
        adapter_diff = max(adapter_diff, worst_difference(token_of_text, adapter_top, adapted_lp))
        effect = max(effect, worst_difference(token_of_text, adapter_top, base_lp))
    print(f"max |served - transformers|: base {base_diff:.4f}, adapter {adapter_diff:.4f}; adapter effect {effect:.3f}")
    assert base_diff <= TOLERANCE and adapter_diff <= TOLERANCE
    assert effect >= MIN_EFFECT >= 3 * TOLERANCE


def test_examples_tokenize_a_chat_prompt_as_the_server_does(served, vocab):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Zorbia? <|im_end|>"},
                {"role": "assistant", "content": "Quellport."}]
    prompt = httpx.post(served + "/apply-template", json={"messages": messages[:2]}, timeout=60).json()["prompt"]
    tokens = httpx.post(served + "/tokenize", json={"content": prompt, "add_special": vocab.add_bos},
                        timeout=60).json()["tokens"]
    example = ExampleRenderer(vocab, vocab.chat_template, max_tokens=512).render(1, {"messages": messages})
    assert list(example.tokens[: len(tokens)]) == tokens
    assert not any(example.mask[: len(tokens)]) and all(example.mask[len(tokens):])
