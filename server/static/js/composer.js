// The prompt box under both views: it sends to the view shown (chat or side by side), and its
// Stop button stops that view's streams. Images attached or pasted go with the next message as data URLs
// (docs/images.md), shown only as <img> sources: the page's CSP allows data: images and nothing else.

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/bmp"];

export class Composer {
  constructor({ form, prompt, send, stop, attach, file, attachments }) {
    Object.assign(this, { form, prompt, sendButton: send, stopButton: stop, file, attachments });
    this.view = null;
    this.images = []; // data URLs waiting for the next message
    attach.addEventListener("click", () => file.click());
    file.addEventListener("change", () => {
      this.addFiles([...file.files]);
      file.value = "";
    });
    prompt.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData ? event.clipboardData.files : [])].filter((f) => IMAGE_TYPES.includes(f.type));
      if (!files.length) return;
      event.preventDefault();
      this.addFiles(files);
    });
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
    if ((!text && !this.images.length) || !this.view || this.view.busy) return;
    this.prompt.value = "";
    const images = this.images;
    this.images = [];
    this.showImages();
    this.view.send(text, images);
  }

  addFiles(files) {
    for (const f of files.filter((f) => IMAGE_TYPES.includes(f.type))) {
      const reader = new FileReader();
      reader.addEventListener("load", () => {
        this.images.push(String(reader.result));
        this.showImages();
      });
      reader.readAsDataURL(f);
    }
  }

  // Thumbnails of the waiting images, each removed by a click.
  showImages() {
    this.attachments.hidden = !this.images.length;
    this.attachments.replaceChildren(...this.images.map((url, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "attachment";
      button.title = "Remove this image";
      const img = document.createElement("img");
      img.src = url;
      img.alt = `image ${i + 1}`;
      button.append(img);
      button.addEventListener("click", () => {
        this.images.splice(i, 1);
        this.showImages();
      });
      return button;
    }));
  }

  update() {
    const busy = Boolean(this.view && this.view.busy);
    this.sendButton.disabled = busy;
    this.stopButton.disabled = !busy;
  }
}
