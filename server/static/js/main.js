// The page's wiring: settings, model picker, mixer, chat, side by side, fine-tuning and the server panel.

import { Api } from "./api.js";
import { ChatView } from "./chat.js";
import { CompareView } from "./compare.js";
import { Composer } from "./composer.js";
import { ConversationList } from "./conversations.js";
import { KeyDialog } from "./keydialog.js";
import { Mixer } from "./mixer.js";
import { Catalog, fillPicker, isFineTune } from "./models.js";
import { ServerPanel } from "./panel.js";
import { newConversation, Store } from "./store.js";
import { TuneView } from "./tune.js";

const $ = (selector) => document.querySelector(selector);

const store = new Store();
const settings = store.settings();
const keys = new KeyDialog($("#key-dialog"));
const api = new Api((reason) => keys.ask(reason));
const catalog = new Catalog(api);
const picker = $("#model");

function saveSettings() {
  store.saveSettings(settings);
}

// What every request takes from the controls.
function options(lora = mixer.lora()) {
  return {
    model: picker.value || undefined,
    system: settings.system,
    temperature: settings.temperature,
    maxTokens: settings.maxTokens,
    lora,
  };
}

// The adapter sets a side-by-side column may run under.
function adapterSets() {
  const base = picker.value;
  return [
    { key: "mixer", title: "The mixer's set", lora: mixer.lora() },
    { key: "base", title: "Base model (no adapters)", lora: [] },
    ...catalog.adaptersOf(base).map((a) => ({ key: `adapter:${a.id}`, title: `${a.id} @ 1`, lora: [{ name: a.id, scale: 1 }] })),
    ...catalog.stacksOf(base).map((s) => ({ key: `stack:${s.id}`, title: `stack ${s.id}`, lora: s.adapters })),
    ...catalog.fineTunesOf(base).map((f) => ({ key: `model:${f.id}`, title: `${f.id} (fine-tuned)`, model: f.id })),
  ];
}

const mixer = new Mixer($("#mixer"), (scales) => {
  settings.mixer[picker.value] = scales;
  saveSettings();
  compare.refresh();
});

const composer = new Composer({ form: $("#composer"), prompt: $("#prompt"), send: $("#send"), stop: $("#stop"),
  attach: $("#attach"), file: $("#attach-file"), attachments: $("#attachments") });

const chat = new ChatView({
  api, store, options, messages: $("#messages"), onBusy: () => composer.update(),
  onSaved: () => conversations.render(chat.conversation && chat.conversation.id),
});

const compare = new CompareView({
  api, options, sets: adapterSets, onBusy: () => composer.update(), columns: [$("#column-a"), $("#column-b")],
});

const conversations = new ConversationList({
  list: $("#conversation-list"), store,
  select: (conversation) => openConversation(conversation),
  remove: (id) => {
    store.remove(id);
    if (chat.conversation && chat.conversation.id === id) openConversation(store.conversations()[0] || newConversation());
    conversations.render(chat.conversation.id);
  },
});

const panel = new ServerPanel({
  api, catalog, details: $("#server-panel"), container: $("#server-status"), admin: $("#admin"),
  adapterForm: $("#adapter-load"), currentModel: () => picker.value, changed: refreshModels,
});

const tune = new TuneView({
  api, root: $("#tune-view"),
  bases: () => catalog.bases().map((c) => c.id).filter((id) => !isFineTune(id)),
  modelsChanged: refreshModels,
  chatWith: async (model) => {
    await pickModel(model);
    openConversation(newConversation());
    selectView("chat");
  },
  compareWithBase: async (model, base) => {
    await pickModel(base);
    compare.choose(`model:${model}`, "base");
    selectView("compare");
  },
});

// The picker set to `id`, the model list asked again first when it does not list it yet (a model just made).
async function pickModel(id) {
  if (!catalog.cards.some((c) => c.id === id)) await refreshModels();
  settings.model = id;
  fillPicker(picker, catalog, id);
  showModel();
}

function openConversation(conversation) {
  chat.open(conversation);
  conversations.render(conversation.id);
  showDrawer("");
}

// Below 900 px the conversations and the settings are drawers shown in place of the chat (ui.css);
// `name` is the one open, "" for none.
function showDrawer(name) {
  document.body.dataset.drawer = name;
  for (const button of document.querySelectorAll(".drawers [data-drawer]")) {
    button.setAttribute("aria-expanded", String(button.dataset.drawer === name));
  }
}

function bindDrawers() {
  for (const button of document.querySelectorAll(".drawers [data-drawer]")) {
    button.addEventListener("click", () => {
      showDrawer(document.body.dataset.drawer === button.dataset.drawer ? "" : button.dataset.drawer);
    });
  }
}

function showModel() {
  const base = picker.value;
  settings.model = base;
  saveSettings();
  $("#model-status").textContent = base ? catalog.status(base) : "";
  $("#model-status").dataset.status = base ? catalog.status(base) : "";
  mixer.show(catalog.adaptersOf(base), catalog.stacksOf(base), settings.mixer[base] || {});
  compare.refresh();
}

async function refreshModels() {
  try {
    await catalog.refresh();
    fillPicker(picker, catalog, settings.model);
    showModel();
    notice("");
  } catch (err) {
    notice(`Could not list models: ${err.message}`);
  }
}

function notice(text) {
  $("#notice").textContent = text;
}

function bindSettings() {
  const system = $("#system-prompt");
  const temperature = $("#temperature");
  const maxTokens = $("#max-tokens");
  system.value = settings.system;
  temperature.value = String(settings.temperature);
  maxTokens.value = String(settings.maxTokens);
  system.addEventListener("input", () => { settings.system = system.value; saveSettings(); });
  temperature.addEventListener("input", () => {
    const value = Number(temperature.value);
    if (temperature.validity.valid && !Number.isNaN(value)) { settings.temperature = value; saveSettings(); }
  });
  maxTokens.addEventListener("input", () => {
    const value = Number(maxTokens.value);
    if (maxTokens.validity.valid && value >= 1) { settings.maxTokens = Math.floor(value); saveSettings(); }
  });
}

// Shows one view (chat, compare or tune); the prompt box serves the first two, the conversations the chat.
function selectView(name) {
  for (const tab of document.querySelectorAll(".tabs [data-view]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === name));
  }
  const chatShown = name === "chat";
  $("#chat-view").hidden = !chatShown;
  $("#compare-view").hidden = name !== "compare";
  $("#tune-view").hidden = name !== "tune";
  $("#composer").hidden = name === "tune";
  document.querySelector(".conversations").hidden = !chatShown;
  $("#toggle-conversations").hidden = !chatShown;
  showDrawer("");
  if (name !== "tune") composer.attach(chatShown ? chat : compare, chatShown ? "Send" : "Compare");
  tune.show(name === "tune");
}

function bindTabs() {
  for (const tab of document.querySelectorAll(".tabs [data-view]")) {
    tab.addEventListener("click", () => selectView(tab.dataset.view));
  }
}

function start() {
  bindSettings();
  bindTabs();
  bindDrawers();
  composer.attach(chat, "Send");
  picker.addEventListener("change", showModel);
  $("#new-chat").addEventListener("click", () => openConversation(newConversation()));
  openConversation(store.conversations()[0] || newConversation());
  refreshModels().then(() => {
    document.body.dataset.ready = "true";
    panel.start();
  });
}

start();
