"""nomoat through the official openai SDK: chat, a stream, structured output, a tool call, embeddings.

Run a server (`nomoat serve`), then: python examples/openai_sdk.py
OPENAI_BASE_URL points it elsewhere (default http://localhost:8000/v1).
"""

from __future__ import annotations

import os

from openai import OpenAI
from pydantic import BaseModel, Field

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://localhost:8000/v1")
MODEL = os.environ.get("MODEL", "smollm2-135m")


class City(BaseModel):
    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string", "maxLength": 20}}},
    },
}


def main() -> None:
    client = OpenAI(base_url=BASE_URL, api_key="unused")
    hi = [{"role": "user", "content": "Name three colors."}]

    reply = client.chat.completions.create(model=MODEL, messages=hi, max_tokens=48)
    print("chat:", reply.choices[0].message.content)

    print("stream: ", end="")
    for chunk in client.chat.completions.create(model=MODEL, messages=hi, max_tokens=48, stream=True):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()

    # The schema is enforced while generating, so the answer always parses.
    parsed = client.chat.completions.parse(
        model=MODEL, response_format=City, max_tokens=64,
        messages=[{"role": "user", "content": "Paris is the capital of France. Give the city and its country."}],
    )
    print("structured:", parsed.choices[0].message.parsed)

    called = client.chat.completions.create(
        model=MODEL, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=64,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    call = called.choices[0].message.tool_calls[0]
    print("tool call:", call.function.name, call.function.arguments)

    vectors = client.embeddings.create(model=MODEL, input=["The cat sat on the mat", "Quarterly tax deadlines"])
    print("embeddings:", len(vectors.data), "vectors of", len(vectors.data[0].embedding))


if __name__ == "__main__":
    main()
