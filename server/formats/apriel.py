"""ServiceNow's Apriel 1.5 / 1.6 Thinker: reasoning steps first, then the answer after a marker, calls as a JSON list:

    Here are my reasoning steps:
    I should look it up.
    [BEGIN FINAL RESPONSE]
    <tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>

1.6's prompt writes "Here are my reasoning steps:" itself, so its output starts inside the reasoning; 1.5
writes it in its output. The answer markers are dropped from the content. llama.cpp counts the prompt's
"Here are my reasoning steps:" as part of the reasoning; here the reasoning is what the model wrote.
"""

from __future__ import annotations

from .base import ChatFormat, Reasoning
from .minimax_m1 import BLOCK_OPEN, JsonBlockSyntax

REASONING = Reasoning("Here are my reasoning steps:", "[BEGIN FINAL RESPONSE]")

APRIEL = ChatFormat(
    "apriel", JsonBlockSyntax("apriel", listed=True), REASONING,
    # 1.5 is told to end its answer with [END FINAL RESPONSE]; a model that skipped the opening steps
    # line still writes [BEGIN FINAL RESPONSE]: neither is content.
    wrappers=("[BEGIN FINAL RESPONSE]", "[END FINAL RESPONSE]"),
    note="<tool_calls>[...]</tool_calls> JSON lists; reasoning steps up to [BEGIN FINAL RESPONSE]")

DETECT = [(30, lambda src: "[BEGIN FINAL RESPONSE]" in src and BLOCK_OPEN in src, APRIEL)]
