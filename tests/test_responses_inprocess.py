"""The Responses API over a fake engine, in process: validation, the store, stream events, the SDK's
stream helper. Fast: no model (the fake answers `SAY:<text>` with exactly <text>)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from support.inprocess import MODEL

RESPONSES = "/v1/responses"
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture()
def srv(fake_factory, tmp_path):
    return fake_factory(state_dir=tmp_path)


def create(srv: Any, input_: Any, **fields: Any) -> dict[str, Any]:
    r = srv.client.post(RESPONSES, json={"model": MODEL, "input": input_, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def events(srv: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A stream's events, checking the framing: `event:` names the data's type, numbers count from 0."""
    with srv.client.stream("POST", RESPONSES, json={"model": MODEL, **body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith(("event: ", "data: "))]
    names, datas = lines[0::2], [json.loads(ln[len("data: "):]) for ln in lines[1::2]]
    assert [f"event: {d['type']}" for d in datas] == names
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    return datas


def sdk(srv: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=srv.client, max_retries=0)


def output_text(body: dict[str, Any]) -> str:
    return "".join(c["text"] for item in body["output"] if item["type"] == "message" for c in item["content"])


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"type": "file_search_call", "id": "x"}]}, "input[0].type"),
    ({"input": [{"content": "no role"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/a.png"}]}]},
     "input[0].content[0].image_url"),  # allow_remote_images is off
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
    ({"input": "hi", "tools": [WEATHER, WEATHER]}, "tools[1].name"),
    ({"input": "hi", "tools": [{**WEATHER, "parameters": {"type": "string"}}]}, "tools[0].parameters"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "max_output_tokens": 10**6}, "max_output_tokens"),
    ({"input": []}, "input"),
    ({"input": 5}, "input"),
    ({"input": "hi", "grammar": "root ::= \"unclosed"}, "grammar"),
    ({"input": "hi", "grammar": 'root ::= "a"', "text": {"format": {"type": "json_object"}}}, "grammar"),
])
def test_bad_requests_are_400s_naming_the_field(srv, body, param):
    r = srv.client.post(RESPONSES, json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert create(srv, "still serving")["status"] == "completed"


def test_an_unknown_previous_response_is_a_404_naming_it(srv):
    r = srv.client.post(RESPONSES, json={"model": MODEL, "input": "hi", "previous_response_id": "resp_nope"})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["param"] == "previous_response_id"


def test_bad_input_is_a_400_and_the_server_keeps_serving(srv):
    """The SDK's exceptions for those refusals."""
    client = sdk(srv)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert err.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_unknown")
    assert client.responses.create(model=MODEL, input="hi", max_output_tokens=4).output_text


def test_unknown_fields_and_nulls_are_ignored(srv):
    body = create(srv, "hi", include=["reasoning.encrypted_content"], reasoning={"effort": "low"},
                  truncation="auto", temperature=None, service_tier="auto")
    assert output_text(body) == "You said: hi"


# --- answers -----------------------------------------------------------------------------------


def test_a_text_answer_has_the_response_shape(srv):
    body = create(srv, [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                  instructions="Be brief.", metadata={"k": "v"}, temperature=0.5)
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    [message] = body["output"]
    assert message["id"].startswith("msg_") and message["role"] == "assistant" and message["status"] == "completed"
    assert message["content"] == [{"type": "output_text", "text": "You said: hi", "annotations": []}]
    assert body["metadata"] == {"k": "v"} and body["instructions"] == "Be brief." and body["temperature"] == 0.5
    usage = body["usage"]
    assert usage["output_tokens"] == len("You said: hi")
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    # The SDK reads it into its Response model, and `output_text` joins the text.
    assert sdk(srv).responses.create(model=MODEL, input="hi").output_text == "You said: hi"


def test_instructions_and_developer_messages_are_system_messages(srv):
    create(srv, [{"type": "message", "role": "developer", "content": "rules"}, {"role": "user", "content": "hi"}],
           instructions="Be brief.")
    messages = srv.engine.submitted[-1].prompt.messages
    assert [m["role"] for m in messages] == ["system", "system", "user"]
    assert messages[0]["content"] == "Be brief."


def test_max_output_tokens_makes_an_incomplete_response(srv):
    body = create(srv, "hello there", max_output_tokens=3)
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and output_text(body) == "You"
    assert body["usage"]["output_tokens"] == 3


def test_a_think_block_becomes_a_reasoning_item_first(srv):
    body = create(srv, "SAY:<think>\nweighing it\n</think>\n\nThe answer.")
    reasoning, _ = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_") and reasoning["summary"] == []
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "weighing it"}]
    assert output_text(body) == "The answer."
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] > 0


def test_function_calls_and_their_outputs_continue_a_conversation(srv):
    body = create(srv, "SAY:" + CALL_TEXT, tools=[WEATHER], tool_choice="required")
    [call] = body["output"]
    assert call["type"] == "function_call" and call["id"].startswith("fc_") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"} and call["call_id"] and call["status"] == "completed"
    assert body["tool_choice"] == "required" and body["tools"][0]["name"] == "get_weather"
    items = [{"role": "user", "content": "weather?"}, call,
             {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]
    create(srv, items, tools=[WEATHER])
    messages = srv.engine.submitted[-1].prompt.messages
    # The fake template renders no tools: the call and its output are written into the text.
    assert "get_weather" in messages[-2]["content"] and "sunny" in messages[-1]["content"]


def test_a_named_tool_choice_forces_that_function(srv):
    other = {**WEATHER, "name": "other"}
    body = create(srv, "SAY:" + CALL_TEXT, tools=[other, WEATHER],
                  tool_choice={"type": "function", "name": "get_weather"})
    assert body["output"][0]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert srv.engine.submitted[-1].sampling.grammar is not None


def test_a_json_schema_format_is_enforced_by_a_grammar_and_parsed_by_the_sdk(srv):
    class City(BaseModel):
        name: str

    parsed = sdk(srv).responses.parse(model=MODEL, input='SAY:{"name": "Paris"}', text_format=City)
    assert parsed.output_parsed == City(name="Paris")
    grammar = srv.engine.submitted[-1].sampling.grammar
    assert grammar is not None and "name" in grammar
    create(srv, "SAY:{}", text={"format": {"type": "json_object"}})
    assert srv.engine.submitted[-1].sampling.grammar is not None


# --- the store ---------------------------------------------------------------------------------


def test_a_stored_response_is_read_deleted_then_gone(srv):
    body = create(srv, "hi")
    assert srv.client.get(f"{RESPONSES}/{body['id']}").json() == body
    r = srv.client.delete(f"{RESPONSES}/{body['id']}")
    assert r.status_code == 200 and r.json() == {"id": body["id"], "object": "response", "deleted": True}
    for r in (srv.client.get(f"{RESPONSES}/{body['id']}"), srv.client.delete(f"{RESPONSES}/{body['id']}")):
        assert r.status_code == 404 and r.json()["error"]["param"] == "response_id"
    r = srv.client.post(RESPONSES, json={"model": MODEL, "input": "x", "previous_response_id": body["id"]})
    assert r.status_code == 404


def test_store_false_keeps_nothing(srv, tmp_path):
    body = create(srv, "hi", store=False)
    assert body["store"] is False
    assert srv.client.get(f"{RESPONSES}/{body['id']}").status_code == 404
    assert not (tmp_path / "responses.sqlite3").exists()


def test_previous_response_id_prepends_the_earlier_turns(srv):
    first = create(srv, "my name is Ada", instructions="first rules")
    create(srv, "what is my name?", previous_response_id=first["id"], instructions="second rules")
    messages = srv.engine.submitted[-1].prompt.messages
    assert messages == [
        {"role": "system", "content": "second rules"},  # instructions are not carried over, as OpenAI's
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "You said: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]


def test_the_store_is_pruned_by_count(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path, responses_max_count=2)
    ids = [create(srv, f"n{i}")["id"] for i in range(3)]
    assert [srv.client.get(f"{RESPONSES}/{i}").status_code for i in ids] == [404, 200, 200]


def test_the_store_is_pruned_by_age_and_kept_private(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path, responses_max_age=0.001)
    body = create(srv, "soon gone")
    assert srv.client.get(f"{RESPONSES}/{body['id']}").status_code == 404
    assert (tmp_path / "responses.sqlite3").stat().st_mode & 0o777 == 0o600


def test_the_store_survives_a_new_app_over_the_same_state_dir(fake_factory, tmp_path):
    body = create(fake_factory(state_dir=tmp_path), "remember me")
    again = fake_factory(state_dir=tmp_path)
    assert again.client.get(f"{RESPONSES}/{body['id']}").json() == body
    create(again, "and now?", previous_response_id=body["id"])
    assert again.engine.submitted[-1].prompt.messages[0] == {"role": "user", "content": "remember me"}


# --- streaming ---------------------------------------------------------------------------------


def test_a_text_stream_sends_the_semantic_events_in_order(srv):
    datas = events(srv, {"input": "hi"})
    types = [d["type"] for d in datas]
    deltas = [d["delta"] for d in datas if d["type"] == "response.output_text.delta"]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * len(deltas),
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert "".join(deltas) == "You said: hi" == datas[-4]["text"]
    final = datas[-1]["response"]
    assert final["status"] == "completed" and output_text(final) == "You said: hi" and final["usage"]
    assert srv.client.get(f"{RESPONSES}/{final['id']}").json() == final


def test_a_tool_call_stream_sends_argument_deltas(srv):
    datas = events(srv, {"input": "SAY:" + CALL_TEXT, "tools": [WEATHER], "tool_choice": "required"})
    types = [d["type"] for d in datas]
    assert types[2] == "response.output_item.added" and datas[2]["item"]["type"] == "function_call"
    args = "".join(d["delta"] for d in datas if d["type"] == "response.function_call_arguments.delta")
    done = next(d for d in datas if d["type"] == "response.function_call_arguments.done")
    assert json.loads(args) == {"city": "Paris"} and done["arguments"] == args and done["name"] == "get_weather"
    assert types[-2:] == ["response.output_item.done", "response.completed"]


def test_a_cut_stream_ends_incomplete(srv):
    datas = events(srv, {"input": "hello there", "max_output_tokens": 2})
    assert datas[-1]["type"] == "response.incomplete"
    assert datas[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_the_sdk_stream_helper_accumulates_the_deltas(srv):
    with sdk(srv).responses.stream(model=MODEL, input="SAY:<think>hm</think>Hello, world") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Hello, world"
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_an_engine_failure_mid_stream_is_an_error_then_response_failed(srv):
    engine, make_event, made = srv.engine, srv.engine._event, []

    def third_token_fails(*args: Any) -> Any:
        made.append(1)
        if len(made) == 3:
            engine.abort("going down")  # the fake sends this token, then ends the generation with ShuttingDown
        return make_event(*args)

    engine._event = third_token_fails
    datas = events(srv, {"input": "hello there"})
    assert [d["type"] for d in datas[-2:]] == ["error", "response.failed"]
    assert sum(d["type"] == "response.output_text.delta" for d in datas) == 3
    assert datas[-2]["code"] == "service_unavailable" and datas[-2]["message"]
    failed = datas[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] and output_text(failed) == "You"
    assert srv.client.get(f"{RESPONSES}/{failed['id']}").status_code == 404


def test_llama_cpp_grammar_extension_reaches_the_engine(srv):
    create(srv, "SAY:yes", grammar='root ::= "yes" | "no"')
    assert srv.engine.submitted[-1].sampling.grammar == 'root ::= "yes" | "no"'


# --- input_items and input_tokens --------------------------------------------------------------


def test_input_items_lists_the_conversation_a_response_ran_on_in_cursor_pages(srv):
    first = create(srv, [{"type": "message", "role": "developer", "content": "rules"},
                         {"type": "function_call", "id": "fc_given", "call_id": "c1", "name": "f", "arguments": "{}"},
                         {"type": "function_call_output", "call_id": "c1", "output": "done"},
                         {"role": "user", "content": [{"type": "input_text", "text": "SAY:a"}]}])
    second = create(srv, "SAY:b", previous_response_id=first["id"])
    client = sdk(srv)
    newest_first = list(client.responses.input_items.list(second["id"]))  # default: desc, 20 a page
    assert [item.type for item in newest_first] == ["message", "message", "message", "function_call_output",
                                                    "function_call", "message"]
    user_b, answer_a = newest_first[0], newest_first[1]
    assert user_b.role == "user" and user_b.content[0].type == "input_text" and user_b.content[0].text == "SAY:b"
    assert answer_a.id == first["output"][0]["id"] and answer_a.content[0].text == "a"
    assert newest_first[4].id == "fc_given"
    ids = [item.id for item in newest_first]
    assert len(set(ids)) == len(ids) and all(ids)
    # Pages of one, oldest first: the SDK follows `after` until has_more is false.
    assert [item.id for item in client.responses.input_items.list(second["id"], limit=1, order="asc")] == ids[::-1]
    page = srv.client.get(f"{RESPONSES}/{second['id']}/input_items", params={"limit": 2, "after": ids[1]}).json()
    assert [i["id"] for i in page["data"]] == ids[2:4] and page["has_more"] is True
    assert page["object"] == "list" and page["first_id"] == ids[2] and page["last_id"] == ids[3]
    page = srv.client.get(f"{RESPONSES}/{second['id']}/input_items", params={"limit": 2, "before": ids[3]}).json()
    assert [i["id"] for i in page["data"]] == ids[1:3] and page["has_more"] is True
    # The first response ran on its own input alone.
    assert len(client.responses.input_items.list(first["id"]).data) == 4


@pytest.mark.parametrize(("query", "param"), [({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                                              ({"limit": "many"}, "limit"), ({"order": "up"}, "order"),
                                              ({"after": "msg_nope"}, "after"), ({"before": "msg_nope"}, "before")])
def test_input_items_queries_are_checked(srv, query, param):
    body = create(srv, "hi")
    r = srv.client.get(f"{RESPONSES}/{body['id']}/input_items", params=query)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert srv.client.get(f"{RESPONSES}/resp_nope/input_items").status_code == 404


def test_input_tokens_counts_the_prompt_a_response_would_have(srv):
    client = sdk(srv)
    count = client.responses.input_tokens.count(model=MODEL, input="weather?", instructions="Be brief.", tools=[WEATHER])
    assert count.object == "response.input_tokens"
    made = create(srv, "weather?", instructions="Be brief.", tools=[WEATHER])
    assert count.input_tokens == made["usage"]["input_tokens"] > 0
    # A continuation counts the earlier turns, as its generation would.
    follow = client.responses.input_tokens.count(input="and tomorrow?", previous_response_id=made["id"])
    assert follow.input_tokens == create(srv, "and tomorrow?", previous_response_id=made["id"])["usage"]["input_tokens"]
    r = srv.client.post(f"{RESPONSES}/input_tokens", json={"model": MODEL, "input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
