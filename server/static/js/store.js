// What the page keeps in the browser's local storage: conversations and the last settings.

const CONVERSATIONS = "nomoat.conversations";
const SETTINGS = "nomoat.settings";
const MAX_CONVERSATIONS = 100;

export const DEFAULT_SETTINGS = { system: "", temperature: 0.7, maxTokens: 256, model: "", mixer: {} };

export class Store {
  constructor(storage = window.localStorage) {
    this.storage = storage;
  }

  // Newest first.
  conversations() {
    const list = this.read(CONVERSATIONS, []);
    return Array.isArray(list) ? list.sort((a, b) => b.updated - a.updated) : [];
  }

  conversation(id) {
    return this.conversations().find((c) => c.id === id) || null;
  }

  save(conversation) {
    conversation.updated = Date.now();
    const others = this.conversations().filter((c) => c.id !== conversation.id);
    this.write(CONVERSATIONS, [conversation, ...others].slice(0, MAX_CONVERSATIONS));
  }

  remove(id) {
    this.write(CONVERSATIONS, this.conversations().filter((c) => c.id !== id));
  }

  settings() {
    return { ...DEFAULT_SETTINGS, ...this.read(SETTINGS, {}) };
  }

  saveSettings(settings) {
    this.write(SETTINGS, settings);
  }

  read(key, fallback) {
    try {
      return JSON.parse(this.storage.getItem(key)) ?? fallback;
    } catch {
      return fallback;
    }
  }

  // Past the storage quota the oldest conversations go first.
  write(key, value) {
    for (;;) {
      try {
        this.storage.setItem(key, JSON.stringify(value));
        return;
      } catch (err) {
        if (!Array.isArray(value) || value.length <= 1) throw err;
        value = value.slice(0, -1);
      }
    }
  }
}

export function newConversation() {
  return { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 8), title: "New chat", messages: [], updated: Date.now() };
}
