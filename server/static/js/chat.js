// The chat view: one conversation's messages, streamed answers, stop, copy and regenerate.

import { copyButton } from "./clipboard.js";
import { renderMarkdown } from "./markdown.js";
import { describeRun, runState, streamChat } from "./stream.js";

export class ChatView {
  // options() gives {model, lora, system, temperature, maxTokens}; onSaved() runs after each save,
  // onBusy(busy) when an answer starts or ends.
  constructor({ api, store, options, onSaved, onBusy, messages }) {
    Object.assign(this, { api, store, options, onSaved, onBusy, messages });
    this.conversation = null;
    this.controller = null;
  }

  get busy() {
    return this.controller !== null;
  }

  open(conversation) {
    this.stop();
    this.conversation = conversation;
    for (const message of conversation.messages) {
      if (message.state === "streaming") message.state = "stopped"; // the page closed mid-answer
    }
    this.render();
  }

  async send(text, images = []) {
    if (this.busy) return;
    const messages = this.conversation.messages;
    if (!messages.some((m) => m.role === "user")) this.conversation.title = (text || "Image").slice(0, 60);
    messages.push(images.length ? { role: "user", content: text, images } : { role: "user", content: text });
    await this.answer();
  }

  async regenerate() {
    const messages = this.conversation.messages;
    if (this.busy || !messages.length || messages.at(-1).role !== "assistant") return;
    messages.pop();
    await this.answer();
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  // Streams an answer to the conversation so far into a new assistant message.
  async answer() {
    const conversation = this.conversation;
    const options = this.options();
    const history = conversation.messages.map(({ role, content, images }) => ({ role, content: parts(content, images) }));
    const message = { role: "assistant", content: "", meta: "", state: "streaming" };
    conversation.messages.push(message);
    this.save();
    this.render();
    const node = this.messages.lastElementChild;
    const body = node.querySelector(".body");
    this.controller = new AbortController();
    this.onBusy(true);
    const run = await streamChat(this.api, {
      model: options.model,
      messages: [...(options.system ? [{ role: "system", content: options.system }] : []), ...history],
      temperature: options.temperature,
      max_tokens: options.maxTokens,
      lora: options.lora,
    }, {
      signal: this.controller.signal,
      onText: (text) => {
        body.replaceChildren(renderMarkdown(text));
        this.follow();
      },
    });
    this.controller = null;
    this.onBusy(false);
    Object.assign(message, { content: run.text, meta: describeRun(run), state: runState(run) });
    this.save();
    if (this.conversation === conversation) this.render();
  }

  save() {
    this.store.save(this.conversation);
    this.onSaved();
  }

  render() {
    const messages = this.conversation ? this.conversation.messages : [];
    this.messages.replaceChildren(...messages.map((m, i) => this.messageNode(m, i === messages.length - 1)));
    this.follow();
  }

  messageNode(message, last) {
    const node = document.createElement("article");
    node.className = `message ${message.role}`;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = message.role === "user" ? "You" : "Model";
    const body = document.createElement("div");
    body.className = "body";
    if (message.role === "assistant") {
      body.classList.add("markdown");
      body.append(renderMarkdown(message.content));
      node.dataset.state = message.state || "done";
    } else {
      body.textContent = message.content;
      for (const url of message.images || []) {
        const img = document.createElement("img");
        img.className = "attached";
        img.src = url; // a data URL the composer read: never HTML
        img.alt = "attached image";
        body.append(img);
      }
    }
    node.append(role, body);
    if (message.role === "assistant") {
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = message.meta || "";
      const actions = document.createElement("div");
      actions.className = "message-actions";
      if (message.state !== "streaming") {
        actions.append(copyButton(() => message.content));
        if (last) {
          const again = document.createElement("button");
          again.type = "button";
          again.className = "small regenerate";
          again.textContent = "Regenerate";
          again.addEventListener("click", () => this.regenerate());
          actions.append(again);
        }
      }
      node.append(meta, actions);
    }
    return node;
  }

  follow() {
    this.messages.scrollTop = this.messages.scrollHeight;
  }
}

// A message's content as chat completions takes it: its text, then its images as image_url parts.
function parts(content, images) {
  if (!images || !images.length) return content;
  return [...(content ? [{ type: "text", text: content }] : []),
    ...images.map((url) => ({ type: "image_url", image_url: { url } }))];
}
