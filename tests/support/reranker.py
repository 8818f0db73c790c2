"""A small reranker for the tests (none ships on PyPI): the test model's GGUF copied with rank pooling, and an
oracle scoring pairs with llama.cpp's own rank pooling in process, one pair at a time as llama-server does.

llama.cpp's llama architecture loads no classifier head (only bert, qwen3 and a few others read `cls.output`):
with `llama.pooling_type` = 4 it pools the last token's normed hidden state, and a pair's score is its first
value, what llama-server's `send_rerank` reads for any reranker; `classifier.output_labels` (n_embd of them)
tells llama.cpp how many values each sequence pools, as a real head's labels do. So the copy exercises the same graph path
(build_pooling's RANK case), the formatting and the batching, with the weights the model already has.

Two copies: "plain" has `tokenizer.ggml.add_eos_token` set, so a pair is formatted as BERT-style rerankers'
(query, EOS, document, EOS); "templated" carries a Qwen3-Reranker-style `tokenizer.chat_template.rerank`
prompt with {query} and {document}. Made once per machine beside the Q8_0 model (~1 s each), renamed into place.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path
from typing import Literal

import gguf
import llama_cpp
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from .model import q8_model_path

Variant = Literal["plain", "templated"]

# Qwen3-Reranker's prompt, as llama.cpp's converter writes it into tokenizer.chat_template.rerank (ChatML markers,
# which SmolLM2's vocabulary has as special tokens too).
RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
    "<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


@cache
def reranker_model_path(variant: Variant = "plain") -> Path:
    source = q8_model_path()
    path = source.with_name(f"{source.stem}-rerank-{variant}-2.gguf")
    if path.exists():
        return path
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    name = arch.contents()
    n_embd = reader.get_field(f"{name}.embedding_length")
    assert n_embd is not None
    labels = [f"h{i}" for i in range(int(n_embd.contents()))]
    new = {
        f"{name}.pooling_type": MetadataDetails(gguf.GGUFValueType.UINT32, int(gguf.PoolingType.RANK)),
        # One "label" per pooled value: llama.cpp reads n_cls_out values per sequence at n_cls_out * its place in
        # the batch, so without a head (n_embd values each) and the default of 1, only the first sequence's is right.
        f"{name}.classifier.output_labels": MetadataDetails(gguf.GGUFValueType.ARRAY, labels,
                                                             sub_type=gguf.GGUFValueType.STRING),
    }
    if variant == "plain":
        new[gguf.Keys.Tokenizer.ADD_EOS] = MetadataDetails(gguf.GGUFValueType.BOOL, True)
    else:
        new[f"{gguf.Keys.Tokenizer.CHAT_TEMPLATE}.rerank"] = MetadataDetails(gguf.GGUFValueType.STRING, RERANK_TEMPLATE)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    writer = gguf.GGUFWriter(partial, name, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, new, [])
    os.replace(partial, path)
    return path


def oracle_pair_tokens(llm: llama_cpp.Llama, query: str, document: str, template: str | None) -> list[int]:
    """llama-server's format_prompt_rerank, written here from its source (tools/server/server-common.cpp)."""
    if template is not None:
        prompt = template.replace("{query}", query).replace("{document}", document)
        return llm.tokenize(prompt.encode(), add_bos=False, special=True)
    vocab = llm._model.vocab
    eos = llama_cpp.llama_vocab_eos(vocab)
    if eos == llama_cpp.LLAMA_TOKEN_NULL:
        eos = llama_cpp.llama_vocab_sep(vocab)
    add_eos, add_sep = llama_cpp.llama_vocab_get_add_eos(vocab), llama_cpp.llama_vocab_get_add_sep(vocab)
    tokens = [llama_cpp.llama_vocab_bos(vocab)] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
    tokens += llm.tokenize(query.encode(), add_bos=False, special=False)
    tokens += [eos] if add_eos else []
    tokens += [llama_cpp.llama_vocab_sep(vocab)] if add_sep else []
    tokens += llm.tokenize(document.encode(), add_bos=False, special=False)
    tokens += [eos] if add_eos else []
    return tokens


def oracle_scores(llm: llama_cpp.Llama, query: str, documents: list[str], template: str | None, *,
                  together: bool = False) -> list[float]:
    """Each pair's score, the first value llama.cpp pools for its sequence in a rank-pooling context: each pair
    decoded alone (as llama-server with one slot), or `together` in one batch, sequence i the i-th pair, on a
    context with one KV pool for all (kv_unified, as nomoat's reranker decodes a group)."""
    pairs = [oracle_pair_tokens(llm, query, d, template) for d in documents]
    cparams = llama_cpp.llama_context_default_params()
    cparams.embeddings, cparams.pooling_type = True, llama_cpp.LLAMA_POOLING_TYPE_RANK
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = llm.n_ctx()
    cparams.n_seq_max, cparams.kv_unified = max(1, len(pairs)), True
    cparams.n_threads = cparams.n_threads_batch = llm.n_threads
    ctx = llama_cpp.llama_init_from_model(llm.model, cparams)
    batch = llama_cpp.llama_batch_init(llm.n_ctx(), 0, 1)
    try:
        scores: list[float] = []
        for group in ([list(range(len(pairs)))] if together else [[i] for i in range(len(pairs))]):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            n = 0
            for seq, i in enumerate(group):
                for pos, token in enumerate(pairs[i]):
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                    batch.seq_id[n][0], batch.logits[n] = seq, True
                    n += 1
            batch.n_tokens = n
            assert llama_cpp.llama_decode(ctx, batch) == 0
            for seq in range(len(group)):
                pooled = llama_cpp.llama_get_embeddings_seq(ctx, seq)
                scores.append(float(ctypes.cast(pooled, ctypes.POINTER(ctypes.c_float))[0]))
        return scores
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
