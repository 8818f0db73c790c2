// The adapter mixer: a slider per adapter of the chosen model (scale -2..2, 0 = off) and its stacks
// as presets. Its set goes out as the request's `lora` field.

export class Mixer {
  constructor(container, onChange) {
    this.container = container;
    this.onChange = onChange;
    this.sliders = new Map();
  }

  // Rebuilds the sliders for `adapters` (cards) and `stacks`, at the scales in `saved` (name → scale).
  show(adapters, stacks, saved = {}) {
    this.sliders.clear();
    const nodes = [];
    if (!adapters.length) {
      const none = document.createElement("p");
      none.className = "hint";
      none.textContent = "This model has no adapters loaded.";
      nodes.push(none);
    }
    for (const card of adapters) nodes.push(this.slider(card.id, saved[card.id] ?? 0));
    if (adapters.length) {
      const buttons = document.createElement("div");
      buttons.className = "presets";
      buttons.append(this.preset("All off", []));
      for (const stack of stacks) {
        buttons.append(this.preset(`Stack ${stack.id}`, stack.adapters.map((a) => [a.name, a.scale])));
      }
      nodes.push(buttons);
    }
    this.container.replaceChildren(...nodes);
  }

  slider(name, scale) {
    const row = document.createElement("div");
    row.className = "slider";
    const label = document.createElement("label");
    label.textContent = name;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: "-2", max: "2", step: "0.05", value: String(scale) });
    input.dataset.adapter = name;
    input.id = `adapter-${name.replace(/[^\w-]/g, "_")}`;
    label.htmlFor = input.id;
    const output = document.createElement("output");
    output.textContent = format(scale);
    input.addEventListener("input", () => {
      output.textContent = format(Number(input.value));
      this.onChange(this.scales());
    });
    row.append(label, input, output);
    this.sliders.set(name, { input, output });
    return row;
  }

  preset(title, pairs) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small";
    button.textContent = title;
    button.addEventListener("click", () => this.set(Object.fromEntries(pairs)));
    return button;
  }

  // Sets every slider (absent names: 0) and reports the change.
  set(scales) {
    for (const [name, { input, output }] of this.sliders) {
      const scale = Math.max(-2, Math.min(2, scales[name] ?? 0));
      input.value = String(scale);
      output.textContent = format(scale);
    }
    this.onChange(this.scales());
  }

  scales() {
    const out = {};
    for (const [name, { input }] of this.sliders) out[name] = Number(input.value);
    return out;
  }

  // The request's `lora` field: adapters whose scale is not 0 ([] asks for the base alone).
  lora() {
    return Object.entries(this.scales()).filter(([, scale]) => scale !== 0)
      .map(([name, scale]) => ({ name, scale }));
  }
}

function format(scale) {
  return (scale > 0 ? "+" : "") + scale.toFixed(2);
}
