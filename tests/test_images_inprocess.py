"""Images as the protocols hand them to the engine, over the fake engine: each API's image part becomes the same
ChatPrompt (the image's bytes, a marker where it stood in the text), and what is not a usable image is a 400
naming the part, each cap saying its number. Plus the header reader and the models dir's projector pairing."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from support.inprocess import MODEL
from support.projector import data_url, png
from wire import assert_error

from nomoat.core.images import MEDIA_MARKER, image_size
from nomoat.store.models_dir import pair_projectors

PICTURE = png(20, 10, seed=4)
URL = data_url(PICTURE)
PART = "messages[0].content[1].image_url"


def chat(url: Any = URL, **fields: Any) -> dict[str, Any]:
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": content}], **fields}


def test_each_api_hands_the_engine_the_image_and_a_marker_where_it_stood(fake):
    fake.client.post("/v1/chat/completions", json=chat()).raise_for_status()
    fake.client.post("/v1/chat/completions", json={**chat(), "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": URL}]}]}).raise_for_status()
    fake.client.post("/v1/responses", json={"model": MODEL, "max_output_tokens": 2, "store": False, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                     {"type": "input_image", "image_url": URL, "detail": "low"}]}]}).raise_for_status()
    fake.client.post("/v1/messages", json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": URL.split(",")[1]}}]}]},
                     ).raise_for_status()
    prompts = [r.prompt for r in fake.engine.submitted]
    assert len(prompts) == 4
    for prompt in prompts:
        assert prompt.images == (PICTURE,)
        user = [m for m in prompt.messages if m["role"] == "user"]
        assert user[-1]["content"] == f"What is this?{MEDIA_MARKER}", prompt.messages


def test_two_images_keep_their_order(fake):
    other = png(8, 8, seed=5)
    body = chat()
    body["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": data_url(other)}})
    fake.client.post("/v1/chat/completions", json=body).raise_for_status()
    assert fake.engine.submitted[-1].prompt.images == (PICTURE, other)


def _gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 8


@pytest.mark.parametrize(("url", "param", "needle"), [
    ("data:image/png;base64,AAAA", PART, "not a PNG, JPEG, GIF or BMP"),
    ("data:image/png;base64,%%%", PART, "not valid base64"),
    ("data:image/png,rawbytes", PART, "must be base64"),
    ("data:text/plain;base64,QUJD", PART, "not an image media type"),
    ("ftp://example.com/a.png", PART, "data URL"),
    ("https://example.com/a.png", PART, "allow_remote_images"),
    (data_url(_gif(0, 5)), PART, "0x5 pixels"),
    (data_url(_gif(60000, 60000)), PART, "more than 33554432 (max_image_pixels)"),
])
def test_what_is_not_a_usable_image_is_a_400_naming_the_part(fake, url, param, needle):
    error = assert_error(fake.client.post("/v1/chat/completions", json=chat(url)), 400, param=param)
    assert needle in error["message"], error
    assert not fake.engine.submitted


def test_an_image_part_without_its_url_is_a_400(fake):
    body = chat()
    body["messages"][0]["content"][1] = {"type": "image_url"}
    assert_error(fake.client.post("/v1/chat/completions", json=body), 400, param=PART)


def test_the_caps_are_settings_and_say_their_numbers(fake_factory):
    fake = fake_factory(max_image_bytes=2048, max_image_pixels=100)
    error = assert_error(fake.client.post("/v1/chat/completions", json=chat(data_url(png(64, 64, seed=1)))), 400,
                         param=PART)
    assert "2048 bytes (max_image_bytes)" in error["message"]
    error = assert_error(fake.client.post("/v1/chat/completions", json=chat(data_url(png(11, 10)))), 400, param=PART)
    assert "11x10 pixels, more than 100 (max_image_pixels)" in error["message"]


def test_the_header_reader_knows_the_formats_libmtmd_decodes_and_nothing_else():
    jpeg = (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
            + b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 480, 640) + b"\x00" * 12)
    bmp = b"BM" + b"\x00" * 16 + struct.pack("<ii", 30, -20) + b"\x00" * 8
    assert image_size(png(7, 3)) == (7, 3)
    assert image_size(_gif(5, 6)) == (5, 6)
    assert image_size(bmp) == (30, 20)
    assert image_size(jpeg) == (640, 480)
    for other in (b"", b"\x89PNG", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"%PDF-1.7", b"\xff\xd8\xff"):
        assert image_size(other) is None


def test_projectors_pair_with_their_model_by_name():
    smol = "SmolVLM-256M-Instruct-Q8_0"
    models = [smol, "gemma-3-4b-it-Q4_K_M", "qwen"]

    def paired(*names: str) -> dict[str, str]:
        return {m: p.name for m, p in pair_projectors(models, [Path(n) for n in names]).items()}

    assert paired("mmproj-SmolVLM-256M-Instruct-Q8_0.gguf") == {smol: "mmproj-SmolVLM-256M-Instruct-Q8_0.gguf"}
    assert paired("gemma-3-4b-it-mmproj.gguf", "mmproj-SmolVLM-256M-Instruct-f16.gguf") == {  # quants aside
        "gemma-3-4b-it-Q4_K_M": "gemma-3-4b-it-mmproj.gguf", smol: "mmproj-SmolVLM-256M-Instruct-f16.gguf"}
    assert paired("mmproj-SmolVLM-256M-Instruct.gguf") == {smol: "mmproj-SmolVLM-256M-Instruct.gguf"}
    assert paired("mmproj-SmolVLM-500M-Instruct-f16.gguf") == {}  # another model of the family
    assert paired("mmproj-model-f16.gguf") == {}  # no model of that name, and not one model alone
    assert {m: p.name for m, p in pair_projectors(["only"], [Path("mmproj-model-f16.gguf")]).items()} == {
        "only": "mmproj-model-f16.gguf"}


@pytest.fixture()
def image_host() -> Any:
    """A local HTTP server with a picture, a file past the byte cap and a missing path."""
    import http.server
    import threading

    files = {"/a.png": PICTURE, "/big.png": png(64, 64, seed=1)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_images_are_fetched_only_when_allowed_and_within_the_cap(fake_factory, image_host):
    fake = fake_factory(allow_remote_images=True, max_image_bytes=2048)
    fake.client.post("/v1/chat/completions", json=chat(f"{image_host}/a.png")).raise_for_status()
    assert fake.engine.submitted[-1].prompt.images == (PICTURE,)
    error = assert_error(fake.client.post("/v1/chat/completions", json=chat(f"{image_host}/big.png")), 400, param=PART)
    assert "2048 bytes (max_image_bytes)" in error["message"]
    error = assert_error(fake.client.post("/v1/chat/completions", json=chat(f"{image_host}/missing.png")), 400,
                         param=PART)
    assert "HTTP 404" in error["message"]
