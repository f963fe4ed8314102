// The live session view: an MCP App (ext-apps App SDK) that shows one sessions-mcp session.
// It talks only to this server's own tools through the host (list_messages, get_session,
// send_message, interrupt_session) and loads nothing from anywhere.

import { App, applyDocumentTheme, applyHostStyleVariables } from "@modelcontextprotocol/ext-apps";
import { statusWords, Transcript } from "./render.js";

/** Seconds one list_messages long-poll waits for a new message before it returns empty. */
const WAIT_S = 20;
/**
 * The same while an agent works: a long-poll returns early only for a new message, so this bounds
 * how late a change of status alone (e.g. to needs_input) shows.
 */
const BUSY_WAIT_S = 4;
/** Messages per page and characters per page (the transcript resource has the rest). */
const PAGE = 100;
const MAX_CHARS = 200000;

const $ = (id) => document.getElementById(id);
const ui = {
  view: $("view"),
  title: $("title"),
  status: $("status"),
  backend: $("backend"),
  agent: $("agent"),
  interrupt: $("interrupt"),
  error: $("session-error"),
  working: $("working"),
  pending: $("pending"),
  pendingText: $("pending-text"),
  options: $("pending-options"),
  answerForm: $("answer-form"),
  answer: $("answer"),
  answerSend: $("answer-send"),
  followUp: $("follow-up"),
  message: $("message"),
  send: $("send"),
  notice: $("notice"),
};

const transcript = new Transcript($("transcript"));
const app = new App({ name: "sessions-mcp session view", version: "1" }, {}, { autoResize: true });

const state = {
  sessionId: null,
  session: null,
  status: null,
  cursor: null,
  pendingId: null,
  stopped: false,
  abort: new AbortController(),
  following: false,
};

function notice(text) {
  ui.notice.textContent = text || "";
  ui.notice.hidden = !text;
}

function resultText(result) {
  return (result.content || [])
    .filter((c) => c.type === "text")
    .map((c) => c.text)
    .join("\n");
}

/** Call one of this server's tools through the host; throws with the tool's own words on a tool error. */
async function call(name, args, options = {}) {
  const result = await app.callServerTool({ name, arguments: args }, { signal: state.abort.signal, ...options });
  if (result.isError) throw new Error(resultText(result) || `${name} failed`);
  return result.structuredContent || {};
}

function randomKey() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `view-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

// --- session header, pending request ----------------------------------------------------------

function setStatus(status) {
  state.status = status;
  ui.status.textContent = statusWords(status);
  ui.status.dataset.status = status || "";
  ui.view.dataset.status = status || "";
  ui.working.hidden = status !== "running";
  ui.interrupt.hidden = !(status === "running" || status === "needs_input" || status === "awaiting_reply");
  if (status !== "needs_input") showPending(null);
}

function showSession(session) {
  if (!session || !session.id) return;
  state.session = session;
  ui.title.textContent = session.title || session.id;
  ui.backend.textContent = session.backend || "?";
  ui.agent.textContent = session.agent || "—";
  ui.error.textContent = session.error || "";
  ui.error.hidden = !(session.error && session.status === "failed");
  setStatus(session.status);
  if (session.status === "needs_input") showPending(session.pending || null);
  ui.followUp.hidden = false;
  ui.view.setAttribute("aria-busy", "false");
}

/** The label to send for an option: the label when it names one option only, else its id. */
function answerFor(pending, option) {
  const label = (option.label || "").trim().toLowerCase();
  const same = (pending.options || []).filter((o) => (o.label || "").trim().toLowerCase() === label);
  return label && same.length === 1 ? option.label : option.id;
}

function showPending(pending) {
  if (!pending) {
    state.pendingId = null;
    ui.pending.hidden = true;
    ui.options.replaceChildren();
    return;
  }
  if (state.pendingId === pending.id && !ui.pending.hidden) return;
  state.pendingId = pending.id;
  ui.pendingText.textContent = pending.text || (pending.kind === "question" ? "The agent asks a question" : "The agent asks for permission");
  ui.options.replaceChildren();
  for (const option of pending.options || []) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = option.label || option.id;
    button.dataset.option = option.id;
    button.dataset.kind = option.kind || "";
    button.addEventListener("click", () => answer(answerFor(pending, option), ui.options));
    ui.options.append(button);
  }
  const question = pending.kind === "question" || !(pending.options || []).length;
  ui.options.hidden = !(pending.options || []).length; // no empty row above the answer box
  ui.answerForm.hidden = !question;
  ui.pending.hidden = false;
}

// --- actions --------------------------------------------------------------------------------------

/** Send a user message once: one idempotency key per composed message, buttons off while in flight. */
function sender() {
  let key = null; // kept after a failure, so a retry of the same text cannot land twice
  let keyText = null;
  let busy = false;
  return async (text, controls) => {
    if (busy || !text.trim() || !state.sessionId) return false;
    busy = true;
    if (key === null || keyText !== text) {
      key = randomKey();
      keyText = text;
    }
    const buttons = controls.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    try {
      const r = await call("send_message", { session_id: state.sessionId, text, wait: false, idempotency_key: key });
      key = null;
      notice("");
      transcript.add(r.messages);
      showSession({ ...r.session, pending: r.pending ?? r.session?.pending });
      return true;
    } catch (error) {
      if (!state.stopped) notice(String(error.message || error));
      return false;
    } finally {
      busy = false;
      for (const b of buttons) b.disabled = false;
    }
  };
}

const sendFollowUp = sender();
const sendAnswer = sender();

async function answer(text, controls) {
  if (await sendAnswer(text, controls)) showPending(null);
}

ui.followUp.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (await sendFollowUp(ui.message.value, ui.followUp)) ui.message.value = "";
});
ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ui.followUp.requestSubmit();
});
ui.answerForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (await sendAnswer(ui.answer.value, ui.answerForm)) {
    ui.answer.value = "";
    showPending(null);
  }
});
ui.interrupt.addEventListener("click", async () => {
  ui.interrupt.disabled = true;
  try {
    showSession(await call("interrupt_session", { session_id: state.sessionId }));
    notice("");
  } catch (error) {
    if (!state.stopped) notice(String(error.message || error));
  } finally {
    ui.interrupt.disabled = false;
  }
});

// --- following the transcript -------------------------------------------------------------------

async function refreshSession() {
  showSession(await call("get_session", { session_id: state.sessionId }));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function waitFor() {
  if (!state.cursor) return 0; // the first page: what is there now
  return state.status === "running" || state.status === "needs_input" ? BUSY_WAIT_S : WAIT_S;
}

/** Long-poll list_messages until the view is torn down. */
async function follow() {
  if (state.following) return;
  state.following = true;
  let failures = 0;
  while (!state.stopped) {
    try {
      const page = await call(
        "list_messages",
        { session_id: state.sessionId, after: state.cursor, limit: PAGE, max_chars: MAX_CHARS, wait_s: waitFor() },
        { timeout: (WAIT_S + 40) * 1000 },
      );
      if (state.stopped) break;
      transcript.add(page.messages);
      state.cursor = page.next_cursor || state.cursor;
      const changed = page.status !== state.status;
      if (changed) setStatus(page.status);
      if (changed || (page.status === "needs_input" && ui.pending.hidden)) await refreshSession();
      failures = 0;
      if (ui.notice.dataset.kind === "poll") {
        delete ui.notice.dataset.kind;
        notice("");
      }
    } catch (error) {
      if (state.stopped) break;
      failures += 1;
      notice(`Lost touch with the session (${error.message || error}); retrying.`);
      ui.notice.dataset.kind = "poll";
      await sleep(Math.min(30000, 1000 * 2 ** failures));
    }
  }
}

function sessionOf(structured) {
  if (!structured || typeof structured !== "object") return null;
  if (structured.session && structured.session.id) return { ...structured.session, pending: structured.pending ?? structured.session.pending };
  if (structured.id && structured.status) return structured;
  return null;
}

async function open(session) {
  if (!session || state.stopped) return;
  if (state.sessionId && state.sessionId !== session.id) return; // a view shows one session
  const first = !state.sessionId;
  state.sessionId = session.id;
  showSession(session);
  if (first) follow();
}

app.ontoolinput = (params) => {
  const id = params.arguments && params.arguments.session_id;
  if (typeof id === "string" && !state.sessionId) {
    state.sessionId = id;
    refreshSession()
      .then(() => follow())
      .catch((error) => notice(String(error.message || error)));
  }
};
app.ontoolresult = (result) => {
  if (result.isError) {
    notice(resultText(result) || "The tool call failed.");
    return;
  }
  open(sessionOf(result.structuredContent));
};
app.ontoolcancelled = (params) => notice(`The tool call was cancelled${params.reason ? `: ${params.reason}` : ""}.`);

function stop() {
  state.stopped = true;
  state.abort.abort();
  ui.view.dataset.stopped = "true";
}
app.onteardown = async () => {
  stop();
  return {};
};
window.addEventListener("pagehide", stop);

// Host fonts (styles.css.fonts) are not applied: they may load from elsewhere, and this view loads nothing.
function applyContext(ctx) {
  if (!ctx) return;
  if (ctx.theme) applyDocumentTheme(ctx.theme);
  if (ctx.styles && ctx.styles.variables) applyHostStyleVariables(ctx.styles.variables);
}
app.onhostcontextchanged = applyContext;

if (window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches) applyDocumentTheme("dark");
app
  .connect()
  .then(() => applyContext(app.getHostContext()))
  .catch((error) => notice(`Could not connect to the host: ${error.message || error}`));
