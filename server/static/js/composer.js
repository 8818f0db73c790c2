// The prompt box under both views: it sends to the view shown (chat or side by side), and its
// Stop button stops that view's streams.

export class Composer {
  constructor({ form, prompt, send, stop }) {
    Object.assign(this, { form, prompt, sendButton: send, stopButton: stop });
    this.view = null;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    stop.addEventListener("click", () => this.view && this.view.stop());
  }

  // The view that takes the prompt: an object with send(text), stop() and busy.
  attach(view, label) {
    this.view = view;
    this.sendButton.textContent = label;
    this.update();
  }

  submit() {
    const text = this.prompt.value.trim();
    if (!text || !this.view || this.view.busy) return;
    this.prompt.value = "";
    this.view.send(text);
  }

  update() {
    const busy = Boolean(this.view && this.view.busy);
    this.sendButton.disabled = busy;
    this.stopButton.disabled = !busy;
  }
}
