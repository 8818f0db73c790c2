"""Images in a prompt: a model's vision projector (libmtmd), a chat prompt's text and images as the tokens the
engine schedules, and the image chunks evaluated into a sequence's KV.

A prompt with images is one token list, as any other: its text tokens, and for each image as many
placeholder ids as the positions its embedding fills. A placeholder is negative (never a vocabulary id) and
derived from the image's hash, so the prefix cache, which compares token lists, never reuses KV across a
different image, and reuses it across the same one (llama.cpp's server compares its image chunks by hash).
The worker evaluates an image when its sequence's next tokens are its placeholders, in a llama_decode of its
own (libmtmd's helper: encode once, then the embeddings batch), and the text around it like any text.
"""

from __future__ import annotations

import ctypes
import hashlib
import secrets
import threading
import weakref
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

from .errors import InvalidInput, ModelFileError

if TYPE_CHECKING:
    from .sequences import Sequence

# Where an image goes in the rendered text. Random per process: a client's text can never stand for an image.
MEDIA_MARKER = f"<__nomoat_image_{secrets.token_hex(8)}__>"


@dataclass
class PromptMedia:
    """A prompt's image chunks (owned: freed with this object), keyed by the position their placeholders start at."""

    chunks: Any
    spans: dict[int, tuple[Any, int]] = field(default_factory=dict)  # position → (mtmd chunk, tokens it fills)

    def __post_init__(self) -> None:
        weakref.finalize(self, mtmd.mtmd_input_chunks_free, self.chunks)

    @property
    def images(self) -> int:
        return len(self.spans)


class Vision:
    """A model's projector: libmtmd's context over the text model, used by the tokenizer pool and the worker."""

    def __init__(self, path: Path, model: Any, *, n_threads: int, use_gpu: bool) -> None:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        self._marker = MEDIA_MARKER.encode()  # kept alive: the params hold a pointer to it
        params.media_marker = self._marker
        self.ctx = mtmd.mtmd_init_from_file(str(path).encode(), model, params)
        if not self.ctx:
            raise ModelFileError(f"{path}: libmtmd could not load this file as a vision projector (mmproj); see the log")
        problem = None
        if not mtmd.mtmd_support_vision(self.ctx):
            problem = "it has no vision encoder (an audio-only projector?)"
        elif mtmd.mtmd_decode_use_mrope(self.ctx):
            problem = "its model places image tokens with M-RoPE (Qwen2-VL and kin), which nomoat does not schedule yet"
        if problem:
            mtmd.mtmd_free(self.ctx)
            raise ModelFileError(f"{path}: {problem}")
        self.path = path
        # Preprocessing (tokenizer pool) and encoding (worker) share the projector's state.
        self._lock = threading.Lock()

    def tokenize(self, text: str, images: Seq[bytes], *, add_special: bool) -> tuple[list[int], PromptMedia]:
        """`text` (with one MEDIA_MARKER per image) as tokens and image placeholders; a bad image is an InvalidInput
        naming it (images count from 1, in the order the messages hold them)."""
        bitmaps: list[Any] = []
        chunks = mtmd.mtmd_input_chunks_init()
        media = PromptMedia(chunks)
        try:
            with self._lock:
                for i, data in enumerate(images):
                    bitmaps.append(self._bitmap(i, data))
                arg = mtmd.mtmd_input_text()
                encoded = text.encode("utf-8")
                arg.text, arg.text_len, arg.add_special, arg.parse_special = encoded, len(encoded), add_special, True
                array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
                rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(arg), array, len(bitmaps))
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        if rc == 1:
            raise InvalidInput(f"the chat template rendered a different number of images than the messages hold "
                               f"({len(images)}); this model's template may drop some messages", subject="images")
        if rc != 0:
            raise InvalidInput(f"libmtmd could not preprocess the images (code {rc})", subject="images")
        return _walk(media), media

    def _bitmap(self, i: int, data: bytes) -> Any:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.ctx, buf, len(data), False)
        if not bitmap:
            raise InvalidInput(f"image {i + 1} could not be decoded: it is truncated or not a PNG, JPEG, GIF or BMP "
                               "image", subject="images")
        # The protocols let only image files through (core/images.py, which caps their pixels before this decodes
        # them); libmtmd's loader would take audio too.
        if mtmd.mtmd_bitmap_is_audio(bitmap):
            mtmd.mtmd_bitmap_free(bitmap)
            raise InvalidInput(f"image {i + 1} is audio, not an image", subject="images")
        mtmd.mtmd_bitmap_set_id(bitmap, hashlib.sha256(data).hexdigest().encode())
        return bitmap

    def evaluate(self, seq: Sequence, n_batch: int) -> str | None:
        """(Worker thread.) Evaluate the images `seq`'s next tokens stand for into its KV; the error, if any."""
        media, context = seq.media, seq.context
        assert media is not None and context is not None, "only started sequences with images"
        while seq.todo and seq.todo[0] < 0:
            span = media.spans.get(seq.n_past)
            if span is None:  # a reused prefix ending inside an image: never made (whole images only), refused
                return "a cached prefix ended inside an image"
            chunk, n = span
            context.apply(seq.request.adapters)
            end = llama_cpp.llama_pos(0)
            with self._lock:
                rc = mtmd.mtmd_helper_eval_chunk_single(self.ctx, context.ptr, chunk, seq.n_past, seq.seq_id, n_batch,
                                                        False, ctypes.byref(end))
            if rc != 0:
                return f"evaluating an image failed (code {rc})"
            seq.decoded(n)
        return None

    def evaluate_due(self, active: Seq[Sequence], n_batch: int) -> Iterator[tuple[Sequence, str]]:
        """(Worker thread.) Before a step's batch: the images next in each active prompt, evaluated one sequence at a
        time (`evaluate`); yields each sequence that failed, with why, before the next is evaluated."""
        for seq in [s for s in active if s.media is not None and s.todo and s.todo[0] < 0]:
            problem = self.evaluate(seq, n_batch)
            if problem is not None:
                yield seq, problem

    def close(self) -> None:
        mtmd.mtmd_free(self.ctx)


def _walk(media: PromptMedia) -> list[int]:
    """The chunks as one token list: text tokens as they are, each image as its placeholders."""
    tokens: list[int] = []
    for i in range(mtmd.mtmd_input_chunks_size(media.chunks)):
        chunk = mtmd.mtmd_input_chunks_get(media.chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t(0)
            ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            text = list(ptr[: n.value])
            if any(t < 0 for t in text):  # libmtmd looked up an image token this vocabulary lacks
                raise InvalidInput("the vision projector wraps images in tokens this model's vocabulary lacks: "
                                   "the mmproj file belongs to another model", subject="images")
            tokens.extend(text)
            continue
        n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        if mtmd.mtmd_input_chunk_get_n_pos(chunk) != n_tokens:
            raise InvalidInput("this projector's images take other positions than tokens, which nomoat does not "
                               "schedule yet", subject="images")
        ident = mtmd.mtmd_input_chunk_get_id(chunk) or b""
        placeholder = -1 - int.from_bytes(hashlib.sha256(ident).digest()[:4], "big") % (1 << 30)
        media.spans[len(tokens)] = (chunk, n_tokens)
        tokens.extend([placeholder] * n_tokens)
    if not tokens or tokens[-1] < 0:
        raise InvalidInput("a prompt must not end with an image", subject="images")
    return tokens


def load_vision(path: Path | None, model: Any, *, n_threads: int, use_gpu: bool) -> Vision | None:
    return Vision(path, model, n_threads=n_threads, use_gpu=use_gpu) if path is not None else None
