// Markdown to DOM nodes: paragraphs, headings, lists, quotes, fenced code, inline code, bold, italic.
// Text only ever becomes text nodes (textContent): model output is never parsed as HTML.

import { copyButton } from "./clipboard.js";

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;

// A fragment for `text`; an unclosed code fence (a stream still running) runs to the end.
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1;
      fragment.append(codeBlock(body.join("\n"), fence[2]));
    } else if (!line.trim()) {
      i += 1;
    } else if (HEADING.test(line)) {
      const [, marks, content] = HEADING.exec(line);
      fragment.append(element(`h${Math.min(marks.length + 2, 6)}`, inline(content)));
      i += 1;
    } else if (RULE.test(line)) {
      fragment.append(document.createElement("hr"));
      i += 1;
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      i = list(lines, i, fragment);
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])[1]);
      const quote = document.createElement("blockquote");
      quote.append(renderMarkdown(body.join("\n")));
      fragment.append(quote);
    } else {
      const body = [];
      while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) body.push(lines[i++]);
      fragment.append(element("p", inline(body.join("\n"))));
    }
  }
  return fragment;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || BULLET.test(line) || NUMBERED.test(line)
    || QUOTE.test(line) || RULE.test(line);
}

// Consecutive items of one kind make one list; a following indented line continues an item.
function list(lines, start, fragment) {
  const ordered = !BULLET.test(lines[start]);
  const pattern = ordered ? NUMBERED : BULLET;
  const node = document.createElement(ordered ? "ol" : "ul");
  if (ordered) node.start = Number(NUMBERED.exec(lines[start])[1]);
  let i = start;
  while (i < lines.length && pattern.test(lines[i])) {
    const match = pattern.exec(lines[i++]);
    const parts = [ordered ? match[2] : match[1]];
    while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !startsBlock(lines[i])) parts.push(lines[i++].trim());
    node.append(element("li", inline(parts.join("\n"))));
  }
  fragment.append(node);
  return i;
}

function codeBlock(code, language) {
  const wrapper = document.createElement("div");
  wrapper.className = "code";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const name = document.createElement("span");
  name.textContent = language || "code";
  bar.append(name, copyButton(() => code));
  const pre = document.createElement("pre");
  const inner = document.createElement("code");
  if (language) inner.dataset.language = language;
  inner.textContent = code;
  pre.append(inner);
  wrapper.append(bar, pre);
  return wrapper;
}

// Inline spans, outermost first: `code`, **bold** / __bold__, *italic* / _italic_ (not inside words).
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/;

export function inline(text) {
  const fragment = document.createDocumentFragment();
  let rest = text;
  while (rest) {
    const match = INLINE.exec(rest);
    if (!match) {
      fragment.append(rest);
      break;
    }
    if (match.index) fragment.append(rest.slice(0, match.index));
    if (match[1]) {
      const code = document.createElement("code");
      code.textContent = match[2].replace(/^ (.*) $/s, "$1");
      fragment.append(code);
    } else if (match[3] !== undefined || match[4] !== undefined) {
      fragment.append(element("strong", inline(match[3] ?? match[4])));
    } else {
      fragment.append(element("em", inline(match[5] ?? match[6])));
    }
    rest = rest.slice(match.index + match[0].length);
  }
  return fragment;
}

function element(tag, child) {
  const node = document.createElement(tag);
  node.append(child);
  return node;
}
