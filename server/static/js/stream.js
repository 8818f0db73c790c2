// One streamed chat completion: server-sent events read from fetch's body, timed as they arrive.

import { errorMessage } from "./api.js";

// The JSON payload of each `data:` event, until `data: [DONE]` or the body ends.
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue; // a comment (the server's pings)
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// Streams `body` to /v1/chat/completions; onText(textSoFar) runs as text arrives. Never throws:
// the result says how it ended (finish reason, stopped by the user, or an error message).
export async function streamChat(api, body, { signal, onText = () => {} } = {}) {
  const started = performance.now();
  const result = {
    text: "", reasoning: "", adapters: null, ttft: null, tokensPerSecond: null,
    finish: null, usage: null, stopped: false, error: null,
  };
  let first = null;
  let pieces = 0;
  try {
    const response = await api.fetch("/v1/chat/completions", {
      method: "POST", signal, body: { ...body, stream: true, stream_options: { include_usage: true } },
    });
    if (!response.ok) {
      result.error = await errorMessage(response);
      return result;
    }
    result.adapters = response.headers.get("x-nomoat-adapters");
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) {
        result.error = chunk.error.message || "the stream ended with an error";
        break;
      }
      if (chunk.usage) result.usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      const piece = (delta.content || "") + (delta.reasoning_content || "");
      if (piece) {
        if (first === null) {
          first = performance.now();
          result.ttft = (first - started) / 1000;
        }
        pieces += 1;
        result.text += delta.content || "";
        result.reasoning += delta.reasoning_content || "";
        onText(result.text, result.reasoning);
      }
      if (choice.finish_reason) result.finish = choice.finish_reason;
    }
  } catch (err) {
    if (err.name === "AbortError") result.stopped = true;
    else result.error = err.message || String(err);
  }
  const tokens = result.usage ? result.usage.completion_tokens : pieces;
  const seconds = (performance.now() - (first ?? started)) / 1000;
  if (first !== null && tokens > 1 && seconds > 0) result.tokensPerSecond = (tokens - 1) / seconds;
  return result;
}

// "a@0.5,b@1" from the response header; the base model alone is "base".
export function adapterLabel(header) {
  if (header === null || header === undefined) return "unknown";
  return header === "" ? "base" : header;
}

// The line under an answer: its adapter set, time to first token, tokens/s and how it ended.
export function describeRun(run) {
  const parts = [`adapters: ${adapterLabel(run.adapters)}`];
  if (run.ttft !== null) parts.push(`TTFT ${run.ttft.toFixed(2)} s`);
  if (run.tokensPerSecond !== null) parts.push(`${run.tokensPerSecond.toFixed(1)} tok/s`);
  if (run.usage) parts.push(`${run.usage.completion_tokens} tokens`);
  if (run.stopped) parts.push("stopped");
  else if (run.error) parts.push(`error: ${run.error}`);
  else if (run.finish) parts.push(run.finish);
  return parts.join(" · ");
}

// Where a run ended, for the page's data-state attributes: done, stopped or error.
export function runState(run) {
  return run.stopped ? "stopped" : run.error ? "error" : "done";
}
