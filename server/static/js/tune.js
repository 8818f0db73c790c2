// The fine-tuning view: upload a JSONL file and start a job (OpenAI's /v1/files and /v1/fine_tuning/jobs), the
// jobs with their statuses, and the chosen job's loss curve, polled while the view is shown and the job runs.

import { drawCurve } from "./curve.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1500; // a training step on a CPU takes a second or more
const PAGE = 100; // events per page; more since the last look are paged back through with `after`

export class TuneView {
  // bases() lists the base model ids; chatWith(id) and compareWithBase(id, base) open the other views;
  // modelsChanged() refreshes the model list once a job has made a model.
  constructor({ api, root, bases, chatWith, compareWithBase, modelsChanged }) {
    Object.assign(this, { api, root, bases, chatWith, compareWithBase, modelsChanged });
    this.el = (id) => root.querySelector(`#tune-${id}`);
    this.visible = false;
    this.job = null;
    this.timer = null;
    this.polling = null; // the generation whose look is under way
    this.generation = 0; // bumped on each choice of job, so a slow answer about the last one is dropped
    this.el("form").addEventListener("submit", (event) => { event.preventDefault(); this.start(); });
    this.el("jobs").addEventListener("click", (event) => {
      const item = event.target.closest("[data-job]");
      if (item) this.select(item.dataset.job);
    });
    for (const action of ["pause", "resume", "cancel"]) {
      this.el(action).addEventListener("click", () => this.act(action));
    }
    this.el("chat").addEventListener("click", () => this.chatWith(this.job.fine_tuned_model));
    this.el("compare").addEventListener("click", () => this.compareWithBase(this.job.fine_tuned_model, this.job.model));
    document.addEventListener("visibilitychange", () => this.schedule());
  }

  // Shown: the bases and jobs refreshed, the chosen job polled again; hidden: polling stops.
  show(visible) {
    this.visible = visible;
    if (!visible) { this.schedule(); return; }
    const picker = this.el("model");
    const kept = picker.value;
    picker.replaceChildren(...this.bases().map((id) => {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id;
      return option;
    }));
    if (kept) picker.value = kept;
    this.refreshJobs();
    if (this.job) this.poll(this.generation);
  }

  async start() {
    const error = this.el("error");
    error.textContent = "";
    this.el("start").disabled = true;
    try {
      const body = { model: this.el("model").value, training_file: await this.upload(this.el("file")) };
      if (this.el("validation").files.length) body.validation_file = await this.upload(this.el("validation"));
      const suffix = this.el("suffix").value.trim();
      if (suffix) body.suffix = suffix;
      const epochs = Number(this.el("epochs").value);
      if (this.el("epochs").value && epochs >= 1) {
        body.method = { type: "supervised", supervised: { hyperparameters: { n_epochs: Math.floor(epochs) } } };
      }
      const job = await this.api.json("/v1/fine_tuning/jobs", { method: "POST", body });
      await this.refreshJobs();
      this.select(job.id);
    } catch (err) {
      error.textContent = err.message;
    } finally {
      this.el("start").disabled = false;
    }
  }

  async upload(input) {
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", input.files[0]);
    const file = await this.api.json("/v1/files", { method: "POST", body: form });
    return file.id;
  }

  async refreshJobs() {
    try {
      const body = await this.api.json("/v1/fine_tuning/jobs?limit=50");
      this.renderJobs(Array.isArray(body.data) ? body.data : []);
    } catch (err) {
      this.el("error").textContent = `Could not list jobs: ${err.message}`;
    }
  }

  renderJobs(jobs) {
    this.el("jobs").replaceChildren(...jobs.map((job) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link";
      button.dataset.job = job.id;
      button.textContent = `${job.fine_tuned_model || job.id} (${job.model})`;
      const status = document.createElement("span");
      status.className = "job-status";
      status.dataset.status = job.status;
      status.textContent = job.status;
      item.append(button, status);
      item.classList.toggle("current", Boolean(this.job && this.job.id === job.id));
      return item;
    }));
  }

  select(id) {
    this.generation += 1;
    this.job = { id, status: "" };
    this.seen = new Set();
    this.points = [];
    this.el("job").hidden = false;
    this.el("job-title").textContent = id;
    this.el("job-status").textContent = "";
    for (const item of this.el("jobs").querySelectorAll("li")) {
      item.classList.toggle("current", item.querySelector("[data-job]").dataset.job === id);
    }
    drawCurve(this.el("curve"), this.points);
    this.poll(this.generation);
  }

  // One look at the job: its record, then the events since the last look (so none before its end is missed).
  async poll(generation) {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.polling === generation) return; // the look under way schedules the next
    this.polling = generation;
    try {
      const job = await this.api.json(`/v1/fine_tuning/jobs/${encodeURIComponent(this.job.id)}`);
      const events = await this.newEvents(job.id);
      if (generation !== this.generation) return;
      const was = this.job.status;
      this.job = job;
      for (const event of events) {
        if (event.type === "metrics" && event.data) this.points.push(pointOf(event.data));
      }
      this.points.sort((a, b) => a.step - b.step);
      this.render();
      if (was && was !== job.status) {
        this.refreshJobs();
        if (job.status === "succeeded") this.modelsChanged();
      }
    } catch (err) {
      if (generation === this.generation) this.el("job-status").textContent = err.message;
    }
    if (this.polling === generation) this.polling = null;
    if (generation === this.generation) this.schedule();
  }

  async newEvents(id) {
    const fresh = [];
    let after = "";
    for (;;) {
      const page = await this.api.json(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=${PAGE}${after}`);
      const data = Array.isArray(page.data) ? page.data : [];
      const known = data.findIndex((event) => this.seen.has(event.id));
      fresh.push(...(known < 0 ? data : data.slice(0, known)));
      if (known >= 0 || !page.has_more || !data.length) break;
      after = `&after=${encodeURIComponent(data[data.length - 1].id)}`;
    }
    for (const event of fresh) this.seen.add(event.id);
    return fresh.reverse();
  }

  // The next look, only while the view and the tab are shown and the job is still going.
  schedule() {
    clearTimeout(this.timer);
    this.timer = null;
    const going = this.job && !FINISHED.has(this.job.status);
    if (this.visible && going && document.visibilityState === "visible") {
      const generation = this.generation;
      this.timer = setTimeout(() => this.poll(generation), POLL_MS);
    }
  }

  render() {
    const job = this.job;
    this.el("job").dataset.status = job.status;
    this.el("job-title").textContent = job.fine_tuned_model || job.id;
    const error = job.error && job.error.message ? `: ${job.error.message}` : "";
    const tokens = Number.isFinite(job.trained_tokens) ? `, ${job.trained_tokens} tokens trained` : "";
    this.el("job-status").textContent = `${job.status}${error} (${job.model}${tokens})`;
    drawCurve(this.el("curve"), this.points);
    this.el("pause").hidden = !["running", "queued"].includes(job.status);
    this.el("resume").hidden = job.status !== "paused";
    this.el("cancel").hidden = FINISHED.has(job.status);
    const made = job.status === "succeeded" && Boolean(job.fine_tuned_model);
    this.el("chat").hidden = !made;
    this.el("compare").hidden = !made;
  }

  async act(action) {
    const id = this.job.id;
    try {
      this.job = await this.api.json(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${action}`, { method: "POST" });
      this.render();
      this.refreshJobs();
      this.poll(this.generation);
    } catch (err) {
      this.el("job-status").textContent = err.message;
    }
  }
}

function pointOf(data) {
  const number = (value) => (Number.isFinite(value) ? value : null);
  return { step: Number(data.step) || 0, total: number(data.total_steps), train: number(data.train_loss),
    valid: number(data.valid_loss) };
}
