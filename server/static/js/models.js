// The models the server lists (/v1/models): bases with their status, adapters and stacks, and the picker.

export class Catalog {
  constructor(api) {
    this.api = api;
    this.cards = [];
  }

  async refresh() {
    const body = await this.api.json("/v1/models");
    this.cards = Array.isArray(body.data) ? body.data : [];
  }

  // Models proper: no parent, and not an alias of another model; and fine-tuned models (ft:BASE:SUFFIX:JOB),
  // which answer by their own name, as OpenAI's do, whatever the server lists as their parent.
  bases() {
    return this.cards.filter((c) => isFineTune(c.id) || (!c.parent && (!c.root || c.root === c.id)));
  }

  fineTunesOf(base) {
    return this.cards.filter((c) => c.id.startsWith(`ft:${base}:`));
  }

  adaptersOf(base) {
    return this.cards.filter((c) => c.parent === base && !Array.isArray(c.adapters));
  }

  stacksOf(base) {
    return this.cards.filter((c) => c.parent === base && Array.isArray(c.adapters));
  }

  // A missing status is a server without the model lifecycle: every listed model is loaded.
  status(id) {
    const card = this.cards.find((c) => c.id === id);
    return (card && card.status) || "loaded";
  }
}

export function isFineTune(id) {
  return typeof id === "string" && id.startsWith("ft:");
}

// Fills the model <select>: one option per base, with its status; keeps `wanted` when it is listed.
export function fillPicker(select, catalog, wanted) {
  const bases = catalog.bases();
  select.replaceChildren(...bases.map((card) => {
    const option = document.createElement("option");
    option.value = card.id;
    option.textContent = `${card.id} (${catalog.status(card.id)})`;
    return option;
  }));
  if (bases.some((c) => c.id === wanted)) select.value = wanted;
  return select.value;
}
