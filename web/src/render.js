// Turns session messages into DOM. Only textContent is ever set: no markup from the session
// reaches the page, and nothing is turned into a link.

/** A status in the contract's words: "awaiting_reply" -> "awaiting reply". */
export function statusWords(status) {
  return String(status || "unknown").replace(/_/g, " ");
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function pretty(value) {
  if (value === undefined || value === null || value === "") return "";
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

function oneLine(text, max = 90) {
  const flat = String(text).replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** The one-line summary of a tool call: its title or name, a hint of its input, its status. */
function toolSummary(call, state) {
  const name = call.title || call.name || "tool";
  const hint = call.title ? "" : oneLine(pretty(call.input), 60);
  const summary = el("summary");
  summary.append(el("span", { class: "tool-name", text: `⚙ ${name}` }));
  if (hint) summary.append(el("span", { class: "tool-hint", text: ` ${hint}` }));
  summary.append(el("span", { class: "tool-status", "data-state": state, text: ` · ${statusWords(state)}` }));
  return summary;
}

function resultState(result) {
  if (result.status) return result.status;
  return result.is_error ? "failed" : "completed";
}

/**
 * Keeps the transcript: one element per message id, tool results folded into their call's line.
 */
export class Transcript {
  constructor(root) {
    this.root = root;
    this.messages = new Map(); // message id -> {node, textNode}
    this.calls = new Map(); // tool_call id -> {details, call, state}
  }

  get size() {
    return this.messages.size;
  }

  /** Add (or continue, for a message cut at max_chars) each message; returns how many were new. */
  add(messages) {
    let added = 0;
    for (const m of messages || []) {
      const known = this.messages.get(m.id);
      if (known) {
        if (m.text_offset > 0 && known.textNode) known.textNode.textContent += m.text;
        continue;
      }
      const node = this.render(m);
      if (node) {
        this.root.append(node);
        added += 1;
      }
    }
    return added;
  }

  render(m) {
    const body = [];
    let textNode = null;
    const parts = Array.isArray(m.parts) && m.parts.length && !m.truncated ? m.parts : null;
    if (!parts) {
      textNode = el("p", { class: "text", text: m.text || "" });
      body.push(textNode);
      if (m.truncated) body.push(el("p", { class: "note", text: "(long message: the rest follows)" }));
    } else {
      for (const part of parts) {
        const node = this.part(part);
        if (node) body.push(node);
      }
      if (!body.length) {
        // only tool results folded into earlier calls, or blocks we do not show
        this.messages.set(m.id, { node: null, textNode: null });
        return null;
      }
      textNode = body.find((n) => n.classList && n.classList.contains("text")) || null;
    }
    const node = el("article", { class: "msg", "data-role": m.role, "data-id": m.id });
    node.append(el("div", { class: "role", text: m.role }), ...body);
    this.messages.set(m.id, { node, textNode });
    return node;
  }

  part(part) {
    switch (part.type) {
      case "text":
        return part.text ? el("p", { class: "text", text: part.text }) : null;
      case "thinking": {
        const details = el("details", { class: "thinking" });
        details.append(el("summary", { text: part.redacted ? "Thinking (redacted)" : "Thinking" }));
        if (part.text) details.append(el("p", { class: "text", text: part.text }));
        return details;
      }
      case "tool_call": {
        const state = part.status || "pending";
        const details = el("details", { class: "tool", "data-tool": part.name || "" });
        details.append(toolSummary(part, state));
        const input = pretty(part.input);
        if (input) details.append(el("pre", { class: "io", text: input }));
        const entry = { details, call: part, state };
        if (part.id) this.calls.set(part.id, entry);
        return details;
      }
      case "tool_result": {
        const entry = part.tool_call_id ? this.calls.get(part.tool_call_id) : undefined;
        if (entry) {
          this.fold(entry, part);
          return null;
        }
        const details = el("details", { class: "tool" });
        details.append(toolSummary({ name: "tool result" }, resultState(part)));
        if (part.output) details.append(el("pre", { class: "io", text: part.output }));
        return details;
      }
      case "plan": {
        const list = el("ol", { class: "plan" });
        for (const entry of part.entries || []) list.append(el("li", { text: `${entry.text} (${statusWords(entry.status)})` }));
        return list;
      }
      case "attachment":
        return el("p", { class: "note", text: `[attachment: ${part.name || part.media_type || "file"}]` });
      default:
        return null; // raw blocks: kept in the transcript resource, not shown here
    }
  }

  /** Put a tool result into its call's folded line. */
  fold(entry, result) {
    entry.state = resultState(result);
    const summary = toolSummary(entry.call, entry.state);
    entry.details.replaceChild(summary, entry.details.querySelector("summary"));
    if (result.output || result.text) {
      const out = el("pre", { class: "io", text: result.output || result.text });
      if (result.is_error) out.classList.add("failed");
      entry.details.append(out);
    }
    entry.details.dataset.state = entry.state;
  }
}
