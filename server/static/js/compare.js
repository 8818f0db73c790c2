// Side by side: one prompt answered under two adapter sets at once, as two concurrent streams.

import { renderMarkdown } from "./markdown.js";
import { describeRun, runState, streamChat } from "./stream.js";

export class CompareView {
  // options() as the chat's; sets() lists [{key, title, lora, model}] the columns may choose from (`model`, where
  // given, is asked instead of the picker's: a fine-tuned model beside its base);
  // onBusy(busy) when a comparison starts or ends.
  constructor({ api, options, sets, onBusy, columns }) {
    Object.assign(this, { api, options, sets, onBusy, columns });
    this.controller = null;
  }

  get busy() {
    return this.controller !== null;
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  // Refills both columns' choices, keeping each one's choice where it still exists.
  refresh() {
    const sets = this.sets();
    this.columns.forEach((column, side) => {
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

  // Each column's set by key, where it is one of sets() (after refresh()).
  choose(...keys) {
    this.columns.forEach((column, side) => {
      const select = column.querySelector(".set-select");
      if ([...select.options].some((o) => o.value === keys[side])) select.value = keys[side];
    });
  }

  async send(text) {
    if (this.busy) return;
    const options = this.options();
    const sets = this.sets();
    this.controller = new AbortController();
    this.onBusy(true);
    const messages = [...(options.system ? [{ role: "system", content: options.system }] : []),
      { role: "user", content: text }];
    await Promise.all(this.columns.map((column) => {
      const key = column.querySelector(".set-select").value;
      const set = sets.find((s) => s.key === key) || sets[0];
      return this.stream(column, { ...options, lora: set.lora, model: set.model || options.model }, messages);
    }));
    this.controller = null;
    this.onBusy(false);
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
