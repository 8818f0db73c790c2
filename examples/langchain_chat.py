"""nomoat through LangChain's ChatOpenAI: invoke, stream, structured output, a tool call.

Needs `pip install langchain-openai`. Run a server (`nomoat serve`), then:
python examples/langchain_chat.py   (OPENAI_BASE_URL, default http://localhost:8000/v1)
"""

from __future__ import annotations

import os

from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://localhost:8000/v1")
MODEL = os.environ.get("MODEL", "smollm2-135m")


class City(BaseModel):
    """A city and the country it is in."""

    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(max_length=20)


def main() -> None:
    llm = ChatOpenAI(base_url=BASE_URL, api_key="unused", model=MODEL, max_tokens=64, temperature=0)

    print("invoke:", llm.invoke("Name three colors.").content)

    print("stream: ", end="")
    for chunk in llm.stream("Name three colors."):
        print(chunk.content, end="", flush=True)
    print()

    # json_schema by default; method="function_calling" works too.
    print("structured:", llm.with_structured_output(City).invoke("Paris is the capital of France."))

    message = llm.bind_tools([GetWeather], tool_choice="any").invoke("What is the weather in Paris?")
    print("tool calls:", message.tool_calls)


if __name__ == "__main__":
    main()
