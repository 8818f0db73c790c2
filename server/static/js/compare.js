// Side by side: one prompt answered under two adapter sets at once, as two concurrent streams.

import { renderMarkdown } from "./markdown.js";
import { describeRun, runState, streamChat } from "./stream.js";

export class CompareView {
  // options() as the chat's; sets() lists [{key, title, lora}] the columns may choose from.
  constructor({ api, options, sets, elements }) {
    this.api = api;
    this.options = options;
    this.sets = sets;
    this.el = elements; // form, prompt, send, stop, columns: [element, element]
    this.controller = null;
    this.el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.compare();
    });
    this.el.stop.addEventListener("click", () => this.controller && this.controller.abort());
  }

  // Refills both columns' choices, keeping each one's choice where it still exists.
  refresh() {
    const sets = this.sets();
    this.el.columns.forEach((column, side) => {
      const select = column.querySelector(".set-select");
      const kept = select.value || (side === 0 ? "mixer" : "base");
      select.replaceChildren(...sets.map(({ key, title }) => {
        const option = document.createElement("option");
        option.value = key;
        option.textContent = title;
        return option;
      }));
      select.value = sets.some((s) => s.key === kept) ? kept : "base";
    });
  }

  async compare() {
    const text = this.el.prompt.value.trim();
    if (!text || this.controller) return;
    const options = this.options();
    const sets = this.sets();
    this.controller = new AbortController();
    this.el.send.disabled = true;
    this.el.stop.disabled = false;
    const messages = [...(options.system ? [{ role: "system", content: options.system }] : []),
      { role: "user", content: text }];
    await Promise.all(this.el.columns.map((column) => {
      const key = column.querySelector(".set-select").value;
      const set = sets.find((s) => s.key === key) || sets[0];
      return this.stream(column, { ...options, lora: set.lora }, messages);
    }));
    this.controller = null;
    this.el.send.disabled = false;
    this.el.stop.disabled = true;
  }

  async stream(column, options, messages) {
    const answer = column.querySelector(".answer");
    const meta = column.querySelector(".meta");
    answer.replaceChildren();
    meta.textContent = "";
    column.dataset.state = "streaming";
    const run = await streamChat(this.api, {
      model: options.model, messages, temperature: options.temperature, max_tokens: options.maxTokens,
      lora: options.lora,
    }, { signal: this.controller.signal, onText: (text) => answer.replaceChildren(renderMarkdown(text)) });
    answer.replaceChildren(renderMarkdown(run.text));
    meta.textContent = describeRun(run);
    column.dataset.state = runState(run);
  }
}
