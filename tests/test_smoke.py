"""The shared server answers a chat request."""


def test_chat_answers(client):
    r = client.post("/v1/chat/completions", json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
