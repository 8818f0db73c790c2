"""A loaded GGUF model and its llama.cpp context: loading, tokenizing, templating, token pieces."""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp

from ..formats import ChatFormat
from ..formats import detect as detect_format
from . import vocab_file
from .base_info import BaseModelInfo
from .chat_template import ChatTemplate
from .draft import DraftModel
from .errors import InvalidInput, ModelFileError, PromptTooLong
from .heap import return_free_memory
from .kv import KVCacheTypes
from .types import ChatPrompt, Prompt, RenderedPrompt, Speculation, TextPrompt, TokenPrompt
from .vision import PromptMedia, Vision, load_vision

if TYPE_CHECKING:
    from ..rpc.ggml import Offload

log = logging.getLogger(__name__)
_llama_log = logging.getLogger("nomoat.llama_cpp")
# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line.
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.DEBUG]


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # a ctypes CFUNCTYPE, untyped in llama_cpp
def _forward_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp is chatty at INFO; keep its warnings and errors, the rest only at debug.
    py_level = _last_level[0] if level == 5 else _LEVELS.get(level, logging.DEBUG)
    _last_level[0] = py_level
    message = text.decode("utf-8", "replace").rstrip()
    if message:
        _llama_log.log(py_level, "%s", message)


def install_llama_logging() -> None:
    """Route llama.cpp's log through Python logging instead of raw stderr (call once)."""
    llama_cpp.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to load one model; built from models.toml by the registry."""

    name: str
    path: Path
    n_ctx: int
    n_batch: int
    parallel: int
    n_threads: int
    n_gpu_layers: int = 0
    repack: bool = False
    chat_template: str | None = None
    adapter_contexts: int = 3
    # How chat answers show a thinking block: "auto" splits it into reasoning, "none" leaves it in
    # the content. The engine ignores it; the protocols read it.
    reasoning_format: str = "auto"
    # KV cache element types (llama.cpp's -ctk/-ctv) and flash attention ("auto", "on", "off").
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "auto"
    # Speculative decoding for requests that do not choose: "ngram" (prompt lookup), "draft" (the draft
    # model) or "none"; a draft model (same vocabulary) loaded beside this one, for requests that ask for it.
    speculative: str = "none"
    speculative_n_max: int = 16
    # `nomoat worker`s holding the layers (llama.cpp RPC devices), and how the layers are weighted across them.
    rpc: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()
    draft_model: Path | None = None
    # Keep every position of sliding-window layers (llama.cpp's swa_full), so a cached prefix of any length can be
    # continued; False keeps only the window's (less KV memory), and prefix reuse then takes only what it still holds.
    swa_full: bool = True
    # A vision projector (llama.cpp's mmproj GGUF) paired with this model: chat messages may then hold images.
    mmproj: Path | None = None

    @property
    def speculation(self) -> Speculation:
        return Speculation(self.speculative, self.speculative_n_max)

    def speculation_for(self, asked: Speculation | None) -> Speculation:
        """What a request gets: its own choice, else the model's; its n_max, else the model's."""
        chosen = asked or self.speculation
        if chosen.type == "draft" and self.draft_model is None:
            raise InvalidInput(f"model {self.name!r} has no draft model (draft_model in models.toml), so it cannot "
                               "speculate with type 'draft'; use 'ngram' or 'none'", subject="speculative")
        return chosen if chosen.n_max is not None else Speculation(chosen.type, self.speculative_n_max)

    @property
    def kv_types(self) -> KVCacheTypes:
        return KVCacheTypes(self.cache_type_k, self.cache_type_v, self.flash_attn)


class LoadedModel:
    """Owns a `llama_model` and its `llama_context`s, each with `parallel` KV streams.

    Tokenizing and token pieces read only the vocabulary and are safe from any thread;
    the context is used by the engine's worker thread alone.
    """

    def __init__(self, spec: ModelSpec) -> None:
        started = time.perf_counter()
        self.spec = spec
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = spec.n_gpu_layers
        # Repacked weights crash llama.cpp's AMX path on multi-token batches (docs/architecture.md, "AMX and repacking").
        mparams.use_extra_bufts = spec.repack
        if spec.rpc:
            self._offload = _rpc_offload(spec)
            mparams.devices = ctypes.addressof(self._offload.devices)
            if self._offload.tensor_split is not None:
                mparams.tensor_split = self._offload.tensor_split
        self.model = llama_cpp.llama_model_load_from_file(str(spec.path).encode(), mparams)
        if not self.model:
            raise ModelFileError(f"{spec.path}: llama.cpp could not load this file as a GGUF model")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
        n_ctx = min(spec.n_ctx, n_ctx_train) if n_ctx_train > 0 else spec.n_ctx
        self.architecture = self.metadata("general.architecture") or "unknown"
        self._base_info: BaseModelInfo | None = None
        try:
            problem = spec.kv_types.problem(self.base_info())
        except ModelFileError:
            llama_cpp.llama_model_free(self.model)
            raise
        if problem:
            llama_cpp.llama_model_free(self.model)
            raise ModelFileError(f"{spec.path}: {problem}")

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx * spec.parallel
        cparams.n_seq_max = spec.parallel
        # A KV stream per sequence: each gets its own n_ctx cells, and a prompt's prefill is computed
        # alone (llama.cpp splits the batch per sequence), so it matches the unbatched result. A
        # unified pool was measured no faster once batches list sequence ids in increasing order,
        # and it moves prefill logits enough to flip near-ties (bench/README.md).
        cparams.kv_unified = False
        cparams.n_batch = max(spec.n_batch, spec.parallel)
        cparams.n_ubatch = cparams.n_batch
        cparams.n_threads = spec.n_threads
        cparams.n_threads_batch = spec.n_threads
        cparams.no_perf = True
        cparams.swa_full = spec.swa_full  # said explicitly: llama.cpp's server defaults it to false
        spec.kv_types.apply(cparams)
        self._cparams = cparams
        self.contexts: list[llama_cpp.llama_context_p] = []
        self.draft: DraftModel | None = None
        self.vision: Vision | None = None  # before anything that may fail: close() reads both
        self.ctx = self.new_context()
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ModelFileError(f"{spec.path}: llama.cpp could not create a context (n_ctx={n_ctx}, "
                                 f"parallel={spec.parallel}, KV cache {spec.cache_type_k}/{spec.cache_type_v}; "
                                 "see the log)")
        self.n_ctx = llama_cpp.llama_n_ctx_seq(self.ctx)
        self.n_swa = llama_cpp.llama_model_n_swa(self.model)  # 0: no sliding-window layers
        self.n_batch = cparams.n_batch
        self.draft = self._load_draft(mparams)
        try:
            self.vision = load_vision(spec.mmproj, self.model, n_threads=spec.n_threads, use_gpu=spec.n_gpu_layers != 0)
        except ModelFileError:
            self.close()
            raise
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos_id = llama_cpp.llama_vocab_bos(self.vocab)
        self._pieces: dict[int, bytes] = {}
        self.chat_template, self.chat_format = self._load_chat_template(spec.chat_template)
        # Control tokens that carry its family's calls or thinking ([TOOL_CALLS], <|channel|>) render as
        # text, as llama.cpp's server renders a format's preserved_tokens; other special tokens as nothing.
        self._preserved = self._control_tokens(self.chat_format.preserved)
        log.info("%s: chat format %s (%s)", spec.name, self.chat_format.name, self.chat_format.note or "no note")
        self.load_seconds = time.perf_counter() - started
        log.info("%s: %s", spec.name, spec.kv_types.describe(self.base_info(), self.n_ctx * spec.parallel))

    # --- vocabulary (any thread) -------------------------------------------------

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def base_info(self) -> BaseModelInfo:
        """The dimensions an adapter must match, from llama.cpp's view of the metadata (cached)."""
        if self._base_info is None:
            self._base_info = self._read_base_info()
        return self._base_info

    def _read_base_info(self) -> BaseModelInfo:
        arch = self.architecture

        def number(key: str, default: int | None = None) -> int | None:
            value = self.metadata(f"{arch}.{key}")
            return int(value) if value is not None and value.isdigit() else default

        n_embd, n_head, n_layer = number("embedding_length"), number("attention.head_count"), number("block_count")
        if not (n_embd and n_head and n_layer):
            # Per-layer arrays (hybrid models) are not plain numbers here: let gguf read them.
            return BaseModelInfo.from_gguf(self.spec.path)
        head_dim = n_embd // n_head
        return BaseModelInfo(
            path=self.spec.path, architecture=arch, n_layer=n_layer, n_embd=n_embd,
            n_ff=number("feed_forward_length", 0) or 0, n_head=n_head,
            n_head_kv=number("attention.head_count_kv", n_head) or n_head,
            head_dim_k=number("attention.key_length", head_dim) or head_dim,
            head_dim_v=number("attention.value_length", head_dim) or head_dim,
        )

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        return vocab_file.tokenize(self.vocab, text, add_bos=add_bos, special=special)

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for when generated (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self.token_bytes(token, special=token in self._preserved)
        return cached

    def token_bytes(self, token: int, *, special: bool) -> bytes:
        """A token's bytes; `special` renders control tokens as their text (`<|im_end|>`)."""
        return vocab_file.token_bytes(self.vocab, token, special=special)

    def check_tokens(self, tokens: list[int], subject: str = "prompt") -> None:
        bad = next((t for t in tokens if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise InvalidInput(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})", subject=subject)

    def detokenize(self, tokens: list[int]) -> str:
        """Text for tokens, special ones written out, as llama.cpp's /detokenize does."""
        self.check_tokens(tokens, "tokens")
        return b"".join(self.token_bytes(t, special=True) for t in tokens).decode("utf-8", "replace")

    def chat_text(self, prompt: ChatPrompt) -> str:
        """The text the chat template renders for a chat prompt, ending with the generation prompt."""
        return self.chat_template.render(prompt.messages, tools=prompt.tools, variables=prompt.variables)

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def render(self, prompt: Prompt) -> RenderedPrompt:
        """A prompt's tokens, and for a chat prompt the text its template rendered; only chat
        prompts go through the chat template."""
        text, media = "", None
        if isinstance(prompt, TokenPrompt):
            self.check_tokens(prompt.tokens)
            tokens = list(prompt.tokens)
        elif isinstance(prompt, ChatPrompt):
            text = self.chat_text(prompt)
            bos_in_text = self.chat_template.bos_token and text.startswith(self.chat_template.bos_token)
            if prompt.images:
                tokens, media = self._with_images(text, prompt.images, add_bos=self.add_bos and not bos_in_text)
            else:
                tokens = self.tokenize(text, add_bos=self.add_bos and not bos_in_text, special=True)
        else:
            assert isinstance(prompt, TextPrompt)
            tokens = self.tokenize(prompt.text, add_bos=self.add_bos, special=True)
        if not tokens:
            raise InvalidInput("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise PromptTooLong(
                f"This model's maximum context length is {self.n_ctx} tokens; the prompt has "
                f"{len(tokens)} tokens, leaving no room to generate.",
            )
        return RenderedPrompt(tokens, text, media)

    def _with_images(self, text: str, images: tuple[bytes, ...], *, add_bos: bool) -> tuple[list[int], PromptMedia]:
        if self.vision is None:
            raise InvalidInput(f"model {self.spec.name!r} reads text only: it has no vision projector (mmproj in "
                               "models.toml, or an mmproj-*.gguf beside its file), so it cannot take images",
                               subject="images")
        return self.vision.tokenize(text, images, add_special=add_bos)

    def _load_chat_template(self, override: str | None) -> tuple[ChatTemplate, ChatFormat]:
        """The model's template (models.toml's, the GGUF's, or ChatML) and the family format it marks."""
        source = vocab_file.template_source(self.model, override)
        return vocab_file.chat_template_for(self.model, source), detect_format(source)

    def _control_tokens(self, markers: tuple[str, ...]) -> frozenset[int]:
        """The ids of those markers that are one special token here (a marker the vocabulary spells in
        ordinary tokens renders as text anyway)."""
        ids = set()
        for marker in markers:
            tokens = self.tokenize(marker, add_bos=False, special=True)
            if len(tokens) == 1 and not self.token_bytes(tokens[0], special=False):
                ids.add(tokens[0])
        return frozenset(ids)

    # --- lifecycle ---------------------------------------------------------------

    def _load_draft(self, mparams: llama_cpp.llama_model_params) -> DraftModel | None:
        """The spec's draft model, on the same devices, with contexts like the target's (the same slots,
        n_ctx per slot and KV types), so each running sequence has its slot in the draft too."""
        spec = self.spec
        if spec.draft_model is None:
            if spec.speculative == "draft":
                self.close()
                raise ModelFileError(f"{spec.path}: speculative = 'draft' needs a draft_model")
            return None
        try:
            return DraftModel(spec.draft_model, target_path=spec.path, target_vocab=self.vocab, mparams=mparams,
                              cparams=self._cparams)
        except ModelFileError:
            self.close()
            raise

    def new_context(self) -> llama_cpp.llama_context_p | None:
        """Another context on the same weights with the same settings (its own KV and compute buffer)."""
        ctx: llama_cpp.llama_context_p | None = llama_cpp.llama_init_from_model(self.model, self._cparams)
        if ctx:
            self.contexts.append(ctx)
        return ctx

    def close(self) -> None:
        if self.vision is not None:
            self.vision.close()
            self.vision = None
        if self.draft is not None:
            self.draft.close()
            self.draft = None
        for ctx in self.contexts:
            llama_cpp.llama_free(ctx)
        self.contexts.clear()
        self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
            return_free_memory()


def _rpc_offload(spec: ModelSpec) -> Offload:
    """Only this model's params list the workers' devices (never registered globally: other models stay local)."""
    from ..rpc.endpoints import WorkerUnreachable
    from ..rpc.ggml import RpcUnavailable, offload

    try:
        return offload(list(spec.rpc), list(spec.tensor_split))
    except (RpcUnavailable, WorkerUnreachable, ValueError) as exc:
        raise ModelFileError(f"{spec.name}: {exc}") from None
