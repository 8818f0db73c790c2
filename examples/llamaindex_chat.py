"""nomoat through llama-index's OpenAILike: complete, chat, a stream, structured prediction.

Needs `pip install llama-index-llms-openai-like`. Run a server (`nomoat serve`), then:
python examples/llamaindex_chat.py   (OPENAI_BASE_URL, default http://localhost:8000/v1)
"""

from __future__ import annotations

import os

from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel, Field

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://localhost:8000/v1")
MODEL = os.environ.get("MODEL", "smollm2-135m")


class City(BaseModel):
    """A city and the country it is in."""

    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


def main() -> None:
    # is_chat_model=True sends chats to /v1/chat/completions, where the model's chat template applies;
    # the default (False) flattens them into a prompt for /v1/completions.
    llm = OpenAILike(model=MODEL, api_base=BASE_URL, api_key="unused", max_tokens=64, temperature=0,
                     is_chat_model=True, is_function_calling_model=True)
    colors = [ChatMessage(role="user", content="Name three colors.")]

    print("complete:", llm.complete("Name three colors.").text)
    print("chat:", llm.chat(colors).message.content)

    print("stream: ", end="")
    for chunk in llm.stream_chat(colors):
        print(chunk.delta or "", end="", flush=True)
    print()

    # A function-calling model: the schema is sent as a tool and the call is required.
    city = llm.structured_predict(City, PromptTemplate("Give the city and its country: {text}"),
                                  text="Paris is the capital of France.")
    print("structured:", city)


if __name__ == "__main__":
    main()
