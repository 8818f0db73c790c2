// The server panel: GET /status every few seconds while it is open and the tab visible, and the admin
// actions (load/unload a model or an adapter) for a key the server accepts as admin.

import { errorMessage } from "./api.js";

const POLL_MS = 3000;

export class ServerPanel {
  // currentModel() names the model new adapters load onto; changed() runs after an admin action.
  constructor({ api, catalog, details, container, admin, adapterForm, currentModel, changed }) {
    Object.assign(this, { api, catalog, details, container, admin, adapterForm, currentModel, changed });
    this.status = null;
    this.timer = null;
    // The last admin action's error: kept across refreshes until dismissed or the next action.
    this.error = null;
    this.refreshes = 0;
    details.addEventListener("toggle", () => this.poll());
    document.addEventListener("visibilitychange", () => this.poll());
    adapterForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.loadAdapter();
    });
  }

  start() {
    this.poll();
  }

  async poll() {
    clearTimeout(this.timer);
    if (this.details.open && document.visibilityState === "visible") {
      try {
        this.status = await this.api.json("/status");
        this.render();
      } catch (err) {
        this.container.replaceChildren(...this.errorLine(), line(`Status unavailable: ${err.message}`, "error"));
      }
    }
    this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  render() {
    const s = this.status;
    const t = s.totals;
    const nodes = [
      ...this.errorLine(),
      line(`nomoat ${s.version} · up ${duration(s.uptime_seconds)}`),
      line(rate(s) + ` · ${t.completion_tokens} tokens since start`, "rate"),
      line(`${t.models_loaded} loaded · ${t.active_sequences} active · ${t.queue_depth} queued`
        + (t.memory_bytes !== null ? ` · ${bytes(t.memory_bytes)}` : ""), "totals"),
    ];
    for (const m of s.models) nodes.push(this.modelCard(m));
    if (s.admin && s.model_lifecycle) nodes.push(this.lifecycleButtons());
    this.container.replaceChildren(...nodes);
    // Only what the server allows: an adapter loads at runtime only from a configured adapter directory.
    this.admin.hidden = !(s.admin && s.runtime_adapters);
    this.refreshes += 1;
    this.container.dataset.refreshes = String(this.refreshes);
  }

  errorLine() {
    if (this.error === null) return [];
    const p = line(this.error, "error admin-error");
    p.append(" ", actionButton("Dismiss", "Dismiss this error", () => {
      this.error = null;
      p.remove();
    }));
    return [p];
  }

  modelCard(m) {
    const card = document.createElement("div");
    card.className = "model-card";
    const title = document.createElement("div");
    title.className = "model-name";
    const status = document.createElement("span");
    status.className = "badge";
    status.dataset.status = m.status;
    status.textContent = m.status;
    title.append(`${m.id} `, status);
    const figures = [
      `${m.active_sequences}/${m.parallel} active`,
      `${m.queue_depth} queued`,
      `memory ${m.memory_bytes !== null ? bytes(m.memory_bytes) : "unknown"}`,
      `prompt cache ${bytes(m.prompt_cache_bytes || 0)}`,
      `unloads ${m.pinned ? "never (pinned)" : expires(m.expires_at)}`,
    ];
    const adapters = document.createElement("div");
    adapters.className = "chips";
    adapters.append(this.adapterChips(m));
    card.append(title, line(figures.join(" · "), "figures"), adapters);
    return card;
  }

  adapterChips(model) {
    const cell = document.createDocumentFragment();
    const names = [...model.adapters, ...model.stacks];
    if (!names.length) cell.append("no adapters");
    for (const name of model.adapters) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = name;
      if (this.status.admin) {
        chip.append(actionButton("×", `Unload adapter ${name}`,
          () => this.act("DELETE", `/v1/adapters/${encodeURIComponent(name)}`)));
      }
      cell.append(chip);
    }
    for (const name of model.stacks) {
      const chip = document.createElement("span");
      chip.className = "chip stack";
      chip.textContent = `stack ${name}`;
      cell.append(chip);
    }
    return cell;
  }

  lifecycleButtons() {
    const box = document.createElement("div");
    box.className = "lifecycle";
    const pinned = new Set(this.status.models.filter((m) => m.pinned).map((m) => m.id));
    for (const card of this.catalog.bases()) {
      const loaded = this.catalog.status(card.id) !== "unloaded";
      if (loaded && pinned.has(card.id)) continue; // a pinned model stays loaded: unloading it answers 409
      box.append(actionButton(`${loaded ? "Unload" : "Load"} ${card.id}`, "",
        () => this.act("POST", `/models/${loaded ? "unload" : "load"}`, { model: card.id })));
    }
    return box;
  }

  async loadAdapter() {
    const name = this.adapterForm.querySelector("#adapter-name").value.trim();
    const path = this.adapterForm.querySelector("#adapter-path").value.trim();
    if (await this.act("POST", "/v1/adapters", { name, path, base: this.currentModel() })) this.adapterForm.reset();
  }

  // An admin request; its error shows in the panel. True when it succeeded.
  async act(method, path, body) {
    this.error = null;
    this.container.querySelector(".admin-error")?.remove();
    const response = await this.api.fetch(path, { method, body });
    if (!response.ok) {
      this.error = await errorMessage(response);
      this.container.prepend(...this.errorLine());
      return false;
    }
    await this.changed();
    await this.poll();
    return true;
  }
}

// Both rates are over time spent generating (as the tok/s beside an answer), never idle wall time.
function rate(s) {
  if (s.last_tokens_per_second === null) return "no answer yet";
  const last = `last answer ${s.last_tokens_per_second.toFixed(1)} tok/s`;
  if (!s.generating_seconds) return last;
  return `${last} · ${s.tokens_per_second.toFixed(1)} tok/s while generating `
    + `(${s.generating_seconds.toFixed(1)} s in the last ${s.tokens_window_seconds} s)`;
}

function line(text, className = "") {
  const p = document.createElement("p");
  p.className = className;
  p.textContent = text;
  return p;
}

function actionButton(text, title, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "small action";
  button.textContent = text;
  if (title) button.title = title;
  button.addEventListener("click", action);
  return button;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// expires_at as epoch seconds or an ISO date; none: stays loaded.
function expires(at) {
  if (at === null || at === undefined) return "not scheduled";
  const when = typeof at === "number" ? at * 1000 : Date.parse(at);
  if (Number.isNaN(when)) return String(at);
  const left = (when - Date.now()) / 1000;
  return left <= 0 ? "when idle" : `in ${duration(left)}`;
}
