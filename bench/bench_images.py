"""An image request's TTFT and total time: nomoat's streamed chat through HTTP against llama.cpp's libmtmd in process,
on the same two files (the embedded SmolLM2-135M Q8_0 and tests/support/projector.py's test projector), the same
image and the same prompt.

Run: .venv/bin/python bench/bench_images.py [--runs 5] [--tokens 32] [--size 256] [--threads 2]
Both sides are warm (model and projector loaded before the clock starts) and see a new image each run (seeded
random pixels, the same on both sides), so neither reuses an earlier image's KV. TTFT is from the request (nomoat)
or from the image bytes (llama.cpp: bitmap decode, mtmd_tokenize, mtmd_helper_eval_chunks) to the first token;
total is to the last of --tokens greedy tokens, end-of-generation banned on both sides. The projector's tile is
32 px, so --size only changes how much PNG each side decodes and resizes. llama-mtmd-cli
(bench/.cache/llama-cpp-python-0.3.36/build/bin/) runs the same files too, but it loads both per run, so its times
are not a warm server's.
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import sys
import time
from pathlib import Path

import httpx
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.model import q8_model_path
from support.projector import data_url, png, write_projector

from bench.common import NO_EOG, Nomoat, stream_chat

N_CTX = 2048
N_BATCH = 512
QUESTION = "Describe this picture in one sentence."
PROJECTOR = Path(__file__).resolve().parent / ".cache" / "mmproj-test.gguf"


def chat_body(image: bytes, tokens: int) -> dict[str, object]:
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    return {"model": "vision", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": tokens, "logit_bias": NO_EOG, "cache_prompt": False}


def nomoat_times(images: list[bytes], tokens: int, threads: int) -> tuple[list[float], list[float], str]:
    """Each run's TTFT and total through HTTP, and the prompt nomoat renders (libmtmd's marker for the image)."""
    config = (f'[[models]]\nname = "vision"\npath = "{q8_model_path()}"\nmmproj = "{PROJECTOR}"\nn_ctx = {N_CTX}\n'
              f'n_batch = {N_BATCH}\nparallel = 1\nn_threads = {threads}\nload = "startup"\n')
    with Nomoat(config) as server, httpx.Client(base_url=server.url, timeout=600) as client:
        prompt = client.post("/v1/apply-template", json=chat_body(images[0], tokens)).raise_for_status().json()["prompt"]
        stream_chat(server.url, chat_body(png(64, 64, seed=999), tokens), client)  # the first request makes the context
        ttft, total = [], []
        for image in images:
            timing = stream_chat(server.url, chat_body(image, tokens), client)
            ttft.append(timing.ttft)
            total.append(timing.total)
    return ttft, total, re.sub(r"<__nomoat_image_[0-9a-f]+__>", mtmd.mtmd_default_marker().decode(), prompt)


def llama_cpp_times(prompt: str, images: list[bytes], tokens: int, threads: int) -> tuple[list[float], list[float]]:
    """libmtmd as llama-mtmd-cli drives it, on one warm context: clear the KV, decode and evaluate the image prompt,
    then decode greedily one token at a time."""
    mparams = llama_cpp.llama_model_default_params()
    mparams.use_extra_bufts = False  # nomoat loads without repacking (docs/architecture.md)
    model = llama_cpp.llama_model_load_from_file(str(q8_model_path()).encode(), mparams)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = N_CTX, N_BATCH, N_BATCH
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, threads, False
    vision = mtmd.mtmd_init_from_file(str(PROJECTOR).encode(), model, params)
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    banned = [int(t) for t in NO_EOG]
    encoded = prompt.encode()
    ttft, total = [], []
    try:
        for image in [png(64, 64, seed=999), *images]:  # the first run warms the context, as on nomoat's side
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            chunks = mtmd.mtmd_input_chunks_init()
            started = time.perf_counter()
            buf = (ctypes.c_uint8 * len(image)).from_buffer_copy(image)
            bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(vision, buf, len(buf), False)
            arg = mtmd.mtmd_input_text()
            arg.text, arg.text_len, arg.add_special, arg.parse_special = encoded, len(encoded), False, True
            array = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            assert mtmd.mtmd_tokenize(vision, chunks, ctypes.byref(arg), array, 1) == 0
            mtmd.mtmd_bitmap_free(bitmap)
            n_past = llama_cpp.llama_pos(0)
            assert mtmd.mtmd_helper_eval_chunks(vision, ctx, chunks, 0, 0, N_BATCH, True, ctypes.byref(n_past)) == 0
            mtmd.mtmd_input_chunks_free(chunks)
            pos = n_past.value
            for i in range(tokens):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
                logits[banned] = -np.inf
                token = int(np.argmax(logits))
                if i == 0:
                    first = time.perf_counter() - started
                batch.n_tokens, batch.token[0], batch.pos[0], batch.n_seq_id[0] = 1, token, pos, 1
                batch.seq_id[0][0], batch.logits[0] = 0, True
                pos += 1
                if i < tokens - 1:
                    assert llama_cpp.llama_decode(ctx, batch) == 0
            ttft.append(first)
            total.append(time.perf_counter() - started)
        return ttft[1:], total[1:]
    finally:
        llama_cpp.llama_batch_free(batch)
        mtmd.mtmd_free(vision)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--size", type=int, default=256, help="the PNG's side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    PROJECTOR.parent.mkdir(parents=True, exist_ok=True)
    write_projector(PROJECTOR)
    images = [png(args.size, args.size, seed=run) for run in range(args.runs)]
    n_ttft, n_total, prompt = nomoat_times(images, args.tokens, args.threads)
    l_ttft, l_total = llama_cpp_times(prompt, images, args.tokens, args.threads)
    print(f"{args.size}x{args.size} PNG, {args.tokens} tokens, median of {args.runs} runs, {args.threads} threads")
    print(f"{'':30} {'TTFT ms':>9} {'total ms':>9}")
    for name, ttft, total in (("nomoat (HTTP, streamed)", n_ttft, n_total),
                              ("llama.cpp libmtmd in process", l_ttft, l_total)):
        print(f"{name:30} {statistics.median(ttft) * 1000:9.1f} {statistics.median(total) * 1000:9.1f}")


if __name__ == "__main__":
    main()
