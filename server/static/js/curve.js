// A fine-tuning job's loss curve: train and validation loss by step, as inline SVG built with DOM calls.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 220;
const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function node(name, attributes = {}, text) {
  const element = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

// points: [{step, total, train, valid}] in step order; train or valid may be missing (null).
export function drawCurve(container, points) {
  const svg = node("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", class: "curve-svg" });
  svg.dataset.points = String(points.length);
  const losses = points.flatMap((p) => [p.train, p.valid]).filter((v) => Number.isFinite(v));
  if (!losses.length) {
    svg.append(node("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "curve-label" },
      "The loss curve appears with the first training step."));
    svg.setAttribute("aria-label", "No training steps yet");
    container.replaceChildren(svg);
    return;
  }
  const lastStep = Math.max(...points.map((p) => p.total || p.step), 1);
  let low = Math.min(...losses);
  let high = Math.max(...losses);
  if (high - low < 1e-9) { low -= 0.5; high += 0.5; }
  const x = (step) => PAD.left + ((step - (lastStep > 1 ? 1 : 0)) / Math.max(lastStep - 1, 1)) * (WIDTH - PAD.left - PAD.right);
  const y = (loss) => PAD.top + ((high - loss) / (high - low)) * (HEIGHT - PAD.top - PAD.bottom);
  const bottom = HEIGHT - PAD.bottom;
  svg.append(
    node("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: bottom, class: "curve-axis" }),
    node("line", { x1: PAD.left, y1: bottom, x2: WIDTH - PAD.right, y2: bottom, class: "curve-axis" }),
    node("text", { x: PAD.left - 4, y: PAD.top + 10, "text-anchor": "end", class: "curve-label" }, high.toFixed(2)),
    node("text", { x: PAD.left - 4, y: bottom, "text-anchor": "end", class: "curve-label" }, low.toFixed(2)),
    node("text", { x: WIDTH - PAD.right, y: HEIGHT - 8, "text-anchor": "end", class: "curve-label" }, `step ${lastStep}`),
  );
  const last = points[points.length - 1];
  const title = [`step ${last.step}/${lastStep}`];
  for (const [key, label] of [["train", "train loss"], ["valid", "validation loss"]]) {
    const line = points.filter((p) => Number.isFinite(p[key])).map((p) => `${x(p.step).toFixed(1)},${y(p[key]).toFixed(1)}`);
    if (!line.length) continue;
    svg.append(node("polyline", { points: line.join(" "), class: `curve-${key}` }));
    const legendX = PAD.left + (key === "valid" ? 130 : 0); // under the axis, clear of the lines
    svg.append(node("line", { x1: legendX, y1: HEIGHT - 12, x2: legendX + 18, y2: HEIGHT - 12, class: `curve-${key}` }),
      node("text", { x: legendX + 22, y: HEIGHT - 8, class: "curve-label" }, label));
    if (Number.isFinite(last[key])) title.push(`${label} ${last[key].toFixed(4)}`);
  }
  svg.setAttribute("aria-label", `Loss curve: ${title.join(", ")}`);
  container.replaceChildren(svg);
}
