"""A tiny vision projector GGUF (clip, SigLIP tower, output width 576) for the embedded SmolLM2-135M.

SmolVLM-256M's text model is SmolLM2-135M (n_embd 576), so a projector whose output width is 576 pairs with the
model the tests already run. Its weights are random (seeded): what it "sees" is noise, but libmtmd loads,
preprocesses, encodes and decodes it as it does a real projector, so nomoat's tokens for an image prompt can be
compared with llama.cpp's own for the same two files.

Its projector type is gemma3's, not SmolVLM's idefics3: libmtmd wraps an idefics3 image in
`<fake_token_around_image><global-img>`, looked up as single tokens, and SmolLM2's vocabulary has neither
(SmolVLM added them), so llama.cpp's own helper aborts on the -1 ids it gets (GGML_ASSERT in
mtmd_helper_eval_chunk_single). Both types run the same SigLIP tower (clip_graph_siglip), and gemma3's marks an
image with text any vocabulary tokenizes. Tensor names and keys are those tools/mtmd/clip.cpp reads (TN_* and
KEY_* in clip-impl.h; the gemma3 case of clip_graph_siglip).
"""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import gguf
import numpy as np

N_EMBD_TEXT = 576  # SmolLM2-135M's width: the projector's output
WIDTH = 32  # the vision tower's own width
HEADS = 2
FF = 64
LAYERS = 2
IMAGE_SIZE = 32  # the tile's side in pixels
PATCH = 8  # 4 x 4 patches a tile
SCALE = 2  # 2 x 2 patches pool into one token: 4 tokens an image


def write_projector(path: Path, seed: int = 34) -> Path:
    """Write the projector to `path` (once: an existing file is kept) and return it."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tmp = path.with_suffix(".tmp")
    w = gguf.GGUFWriter(str(tmp), "clip")
    w.add_string("general.name", "nomoat test projector (gemma3 type, random)")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "gemma3")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", WIDTH)
    w.add_uint32("clip.vision.feed_forward_length", FF)
    w.add_uint32("clip.vision.block_count", LAYERS)
    w.add_uint32("clip.vision.projection_dim", N_EMBD_TEXT)
    w.add_uint32("clip.vision.attention.head_count", HEADS)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projector.scale_factor", SCALE)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    n_patches = (IMAGE_SIZE // PATCH) ** 2
    # numpy shapes are ggml's dims reversed: the patch convolution's kernel is [PATCH, PATCH, 3, WIDTH] in ggml.
    w.add_tensor("v.patch_embd.weight", rand(WIDTH, 3, PATCH, PATCH))
    w.add_tensor("v.patch_embd.bias", rand(WIDTH))
    w.add_tensor("v.position_embd.weight", rand(n_patches, WIDTH))
    for i in range(LAYERS):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"v.blk.{i}.{name}.weight", rand(WIDTH, WIDTH, scale=0.2))
            w.add_tensor(f"v.blk.{i}.{name}.bias", rand(WIDTH))
        for name in ("ln1", "ln2"):
            w.add_tensor(f"v.blk.{i}.{name}.weight", 1.0 + rand(WIDTH))
            w.add_tensor(f"v.blk.{i}.{name}.bias", rand(WIDTH))
        w.add_tensor(f"v.blk.{i}.ffn_up.weight", rand(FF, WIDTH, scale=0.2))
        w.add_tensor(f"v.blk.{i}.ffn_up.bias", rand(FF))
        w.add_tensor(f"v.blk.{i}.ffn_down.weight", rand(WIDTH, FF, scale=0.2))
        w.add_tensor(f"v.blk.{i}.ffn_down.bias", rand(WIDTH))
    w.add_tensor("v.post_ln.weight", 1.0 + rand(WIDTH))
    w.add_tensor("v.post_ln.bias", rand(WIDTH))
    # Scaled so the image's embeddings are about as large as the text's: the answer then depends on them.
    w.add_tensor("mm.soft_emb_norm.weight", 1.0 + rand(WIDTH))
    w.add_tensor("mm.input_projection.weight", rand(WIDTH, N_EMBD_TEXT, scale=0.5))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of random pixels, written without an image library."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
