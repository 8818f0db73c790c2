// The API key form: one dialog, however many requests were refused at once.

export class KeyDialog {
  constructor(dialog) {
    this.dialog = dialog;
    this.form = dialog.querySelector("form");
    this.input = dialog.querySelector("#key-input");
    this.error = dialog.querySelector("#key-error");
    this.pending = null;
  }

  // Resolves to the key typed, or "" when cancelled. Concurrent callers share one answer.
  ask(reason) {
    if (this.pending) return this.pending;
    this.pending = new Promise((resolve) => {
      this.error.textContent = reason;
      this.input.value = "";
      const closed = () => {
        this.dialog.removeEventListener("close", closed);
        this.pending = null;
        resolve(this.dialog.returnValue === "ok" ? this.input.value.trim() : "");
      };
      this.dialog.addEventListener("close", closed);
      this.dialog.returnValue = "";
      this.dialog.showModal();
      this.input.focus();
    });
    return this.pending;
  }
}
