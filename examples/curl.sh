#!/usr/bin/env bash
# nomoat's OpenAI API with nothing but curl: chat, a stream, JSON held to a schema, a tool call,
# embeddings. Usage: OPENAI_BASE_URL=http://127.0.0.1:8000/v1 examples/curl.sh
set -euo pipefail
BASE="${OPENAI_BASE_URL:-http://localhost:8000/v1}"
MODEL="${MODEL:-smollm2-135m}"

post() { # path, JSON body
  curl -sS --fail-with-body "$BASE$1" -H 'content-type: application/json' -d "$2"
  echo
}

echo "== chat"
post /chat/completions '{"model":"'"$MODEL"'","max_tokens":48,
  "messages":[{"role":"user","content":"Name three colors."}]}'

echo "== chat, streamed (SSE data: lines, then data: [DONE])"
curl -sS -N --fail-with-body "$BASE/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"'"$MODEL"'","max_tokens":16,"stream":true,
       "messages":[{"role":"user","content":"Say hi."}]}'

echo "== structured output: the answer is JSON that satisfies the schema"
post /chat/completions '{"model":"'"$MODEL"'","max_tokens":64,
  "messages":[{"role":"user","content":"Paris is the capital of France. Give the city and its country."}],
  "response_format":{"type":"json_schema","json_schema":{"name":"city","strict":true,"schema":{
    "type":"object","additionalProperties":false,"required":["city","country"],
    "properties":{"city":{"type":"string","maxLength":20},"country":{"type":"string","maxLength":20}}}}}}'

echo "== tool call: message.tool_calls and finish_reason tool_calls"
post /chat/completions '{"model":"'"$MODEL"'","max_tokens":64,
  "messages":[{"role":"user","content":"What is the weather in Paris?"}],
  "tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather in a city",
    "parameters":{"type":"object","required":["city"],
      "properties":{"city":{"type":"string","maxLength":20}}}}}],
  "tool_choice":"required"}'

echo "== embeddings"
post /embeddings '{"model":"'"$MODEL"'","input":["The cat sat on the mat","Quarterly tax deadlines"]}' \
  | cut -c1-300  # the vectors are long: their first characters show the shape
