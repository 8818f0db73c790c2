"""Images in chat through a real server: the embedded SmolLM2-135M with a tiny random projector of its width
(support/projector.py). Greedy answers must be llama.cpp's own for the same two files, through libmtmd in process
(tokenize into chunks, evaluate them, decode greedily), streamed and not, alone and beside a text-only request;
the prefix cache reuses an image only where it is the same image; bad images and a text-only model get 400s."""

from __future__ import annotations

import concurrent.futures
import ctypes
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import pytest
from support.model import q8_model_path
from support.process import ServerProcess
from support.projector import data_url, png, write_projector
from wire import assert_error, chat_text, post_ok, stream

N_CTX = 1024
# One llama.cpp thread, in the server and the oracle alike: the model is 135M and the prompts ~55 tokens, and two
# threads on a busy 2-core box stall at every op's barrier (an image request measured 0.4 s on one thread, 2 to 16 s
# on two, with other tests running). The thread count does not change CPU results, so greedy answers still match.
THREADS = 1
MAX_TOKENS = 12
QUESTION = "Describe this picture in one sentence."


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_projector(tmp_path_factory.mktemp("projector") / "mmproj-test.gguf")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, projector: Path) -> Iterator[ServerProcess]:
    """`vision` sees images (its mmproj named relative to models.toml); `text` is the same file without one."""
    workdir = projector.parent
    common = f'path = "{q8_model_path()}"\nn_ctx = {N_CTX}\nparallel = 2\nn_threads = {THREADS}\n'
    config = (f'[[models]]\nname = "vision"\n{common}load = "startup"\nmmproj = "{projector.name}"\n\n'
              f'[[models]]\nname = "text"\n{common}')
    proc = ServerProcess(config, workdir).wait_ready()
    yield proc
    proc.close()


def image_chat(image: bytes, question: str = QUESTION, **fields: object) -> dict[str, object]:
    content = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    return {"model": "vision", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": MAX_TOKENS, **fields}


def llama_cpp_greedy(projector: Path, text: str, images: list[bytes], max_tokens: int = MAX_TOKENS) -> str:
    """What llama.cpp answers greedily: libmtmd's tokenize and eval_chunks into a context of nomoat's geometry (one
    sequence's n_ctx, the same batch, flash attention auto), then one token at a time."""
    mparams = llama_cpp.llama_model_default_params()
    mparams.use_extra_bufts = False  # nomoat loads without repacking (docs/architecture.md)
    model = llama_cpp.llama_model_load_from_file(str(q8_model_path()).encode(), mparams)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = N_CTX, 512, 512
    cparams.n_threads = cparams.n_threads_batch = THREADS
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, THREADS, False
    vision = mtmd.mtmd_init_from_file(str(projector).encode(), model, params)
    chunks = mtmd.mtmd_input_chunks_init()
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    try:
        buffers = [(ctypes.c_uint8 * len(b)).from_buffer_copy(b) for b in images]
        bitmaps = [mtmd.mtmd_helper_bitmap_init_from_buf(vision, buf, len(buf), False) for buf in buffers]
        arg = mtmd.mtmd_input_text()
        encoded = text.encode()
        arg.text, arg.text_len, arg.add_special, arg.parse_special = encoded, len(encoded), False, True
        array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        assert mtmd.mtmd_tokenize(vision, chunks, ctypes.byref(arg), array, len(bitmaps)) == 0
        for bitmap in bitmaps:
            mtmd.mtmd_bitmap_free(bitmap)
        n_past = llama_cpp.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(vision, ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)) == 0
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        out = b""
        pos = n_past.value
        for _ in range(max_tokens):
            logits = llama_cpp.llama_get_logits_ith(ctx, -1)
            token = max(range(n_vocab), key=lambda i: logits[i])
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            piece = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(vocab, token, piece, 64, 0, False)
            out += piece.raw[:n]
            batch.n_tokens, batch.token[0], batch.pos[0], batch.n_seq_id[0] = 1, token, pos, 1
            batch.seq_id[0][0], batch.logits[0] = 0, True
            pos += 1
            assert llama_cpp.llama_decode(ctx, batch) == 0
        return out.decode("utf-8", "replace")
    finally:
        llama_cpp.llama_batch_free(batch)
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_free(vision)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def rendered(client: httpx.Client, body: dict[str, object]) -> str:
    """The server's chat text for `body`, its image marker written as libmtmd's default one."""
    prompt = post_ok(client, "/v1/apply-template", body)["prompt"]
    assert isinstance(prompt, str)
    return re.sub(r"<__nomoat_image_[0-9a-f]+__>", mtmd.mtmd_default_marker().decode(), prompt)


IMAGE = png(48, 40, seed=1)


@pytest.fixture(scope="module")
def expected(server, projector) -> str:
    """llama.cpp's greedy answer to QUESTION about IMAGE, as the chat body renders it."""
    with httpx.Client(base_url=server.base_url, timeout=300.0) as client:
        return llama_cpp_greedy(projector, rendered(client, image_chat(IMAGE)), [IMAGE])


def test_greedy_image_answers_are_llama_cpps_own_streamed_or_not_alone_or_beside_text(server, expected):
    body = image_chat(IMAGE)
    with httpx.Client(base_url=server.base_url, timeout=300.0) as client:
        answer = post_ok(client, "/v1/chat/completions", body)
        assert answer["choices"][0]["message"]["content"] == expected
        usage = answer["usage"]
        assert usage["prompt_tokens"] > 4  # the image's 4 positions are counted with the text's
        assert chat_text(stream(client, "/v1/chat/completions", {**body, "stream": True})) == expected

        text_body = {"model": "vision", "messages": [{"role": "user", "content": "Count from one to forty in words."}],
                     "temperature": 0, "max_tokens": 24}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            text_future = pool.submit(post_ok, client, "/v1/chat/completions", text_body)
            image_future = pool.submit(post_ok, client, "/v1/chat/completions", {**body, "cache_prompt": False})
            assert image_future.result()["choices"][0]["message"]["content"] == expected
            assert text_future.result()["choices"][0]["message"]["content"]


def test_the_responses_api_anthropics_messages_langchain_and_llama_index_see_the_same_image(server, expected):
    """Each API's own image part, sent by its own SDK or framework, renders to the chat's prompt: the same greedy
    answer. LangChain's ChatOpenAI sends a HumanMessage's image_url part as is; llama-index's OpenAILike turns an
    ImageBlock's bytes into a data URL of its own."""
    import anthropic
    import openai
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI
    from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock
    from llama_index.llms.openai_like import OpenAILike

    url = data_url(IMAGE)
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    response = oai.responses.create(model="vision", temperature=0, max_output_tokens=MAX_TOKENS, store=False, input=[
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}, {"type": "input_image", "image_url": url,
                                                                               "detail": "auto"}]}])
    assert response.output_text == expected
    claude = anthropic.Anthropic(base_url=server.base_url, api_key="none", max_retries=0)
    # The SDK (2.x) takes temperature as extra_body (tests/test_anthropic.py).
    message = claude.messages.create(model="vision", max_tokens=MAX_TOKENS, extra_body={"temperature": 0}, messages=[
        {"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": url.split(",", 1)[1]}}]}])
    assert message.content[0].type == "text" and message.content[0].text == expected
    counted = claude.messages.count_tokens(model="vision", messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": url.split(",", 1)[1]}}]}])
    assert counted.input_tokens > 4  # the image's positions count

    chat = ChatOpenAI(base_url=f"{server.base_url}/v1", api_key="none", model="vision", temperature=0,
                      max_tokens=MAX_TOKENS, max_retries=0)
    answer = chat.invoke([HumanMessage(content=[{"type": "text", "text": QUESTION},
                                                {"type": "image_url", "image_url": {"url": url}}])])
    assert answer.content == expected
    llm = OpenAILike(model="vision", api_base=f"{server.base_url}/v1", api_key="none", is_chat_model=True,
                     temperature=0, max_tokens=MAX_TOKENS, max_retries=0, timeout=300)
    reply = llm.chat([ChatMessage(role="user", blocks=[TextBlock(text=QUESTION),
                                                       ImageBlock(image=IMAGE, image_mimetype="image/png")])])
    assert reply.message.content == expected


def test_the_prefix_cache_reuses_an_image_only_when_it_is_the_same_image(server):
    first, second = png(40, 40, seed=2), png(40, 40, seed=3)
    with httpx.Client(base_url=server.base_url, timeout=300.0) as client:
        post_ok(client, "/v1/chat/completions", image_chat(first, max_tokens=1))
        again = post_ok(client, "/v1/chat/completions", image_chat(first, max_tokens=1))["usage"]
        other = post_ok(client, "/v1/chat/completions", image_chat(second, max_tokens=1))["usage"]
    prompt = again["prompt_tokens"]
    # The same image: all of the prompt but its last token. Another: only the text before the image.
    assert again["prompt_tokens_details"]["cached_tokens"] == prompt - 1, again
    assert other["prompt_tokens_details"]["cached_tokens"] < prompt - 6, other


def test_bad_images_and_a_text_only_model_get_400s_naming_the_part(server):
    param = "messages[0].content[1].image_url"
    good = png(16, 16)
    with httpx.Client(base_url=server.base_url, timeout=300.0) as client:
        def post(body: dict[str, object]) -> httpx.Response:
            return client.post("/v1/chat/completions", json=body)

        assert_error(post(image_chat(good[: len(good) // 2])), 400)  # cut short: libmtmd cannot decode it
        error = assert_error(post(image_chat(b"GIF89a" + b"\x00" * 4)), 400)
        assert "image 1" in error["message"] or error["param"] == param, error
        error = assert_error(post(image_chat(b"%PDF-1.7 not an image")), 400, param=param)
        assert "PNG, JPEG" in error["message"]
        error = assert_error(post(image_chat(png(1, 1)[:16] + (100_000).to_bytes(4, "big") * 2)), 400, param=param)
        assert "33554432" in error["message"], error  # the pixel cap says its number
        remote = image_chat(good)
        remote["messages"][0]["content"][1]["image_url"]["url"] = "https://example.com/cat.png"  # type: ignore[index]
        error = assert_error(post(remote), 400, param=param)
        assert "allow_remote_images" in error["message"]
        error = assert_error(post({**image_chat(good), "model": "text"}), 400)
        assert "mmproj" in error["message"] and "text only" in error["message"], error
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert cards["vision"]["vision"] is True and cards["text"]["vision"] is False
