// The tasks extension's own requester (@modelcontextprotocol/ext-tasks, SEP-2663, 2026-07-28) against
// sessions-mcp over streamable HTTP, for tests/test_tasks_clients.py.   node ts_ext_tasks.mjs <url of /mcp>
// The port is a plain 2026-07-28 HTTP client (fetch): the package frames task requests itself and
// asks the port only to carry JSON-RPC. MCP_TOKEN (optional) is sent as a bearer token.
// Runs "wait:x1" to its end through session.callTool(...).settle(), then "wait:x2" cancelled through
// execution.cancel(). Prints one JSON summary line on stdout.
import { withTasks, resultFromTaskOutcome } from "@modelcontextprotocol/ext-tasks/client";

const url = process.argv[2];
const token = process.env.MCP_TOKEN;
const framing = {
  "io.modelcontextprotocol/protocolVersion": "2026-07-28",
  "io.modelcontextprotocol/clientInfo": { name: "ext-tasks-test", version: "1.0.0" },
  "io.modelcontextprotocol/clientCapabilities": { extensions: { "io.modelcontextprotocol/tasks": {} } },
};
const wire = [];
let nextId = 1;

async function post(request, signal) {
  const params = { ...(request.params ?? {}) };
  params._meta = { ...framing, ...(params._meta ?? {}) };
  const id = nextId++;  // the port owns the JSON-RPC envelope: the package hands over method and params
  const body = { jsonrpc: "2.0", id, method: request.method, params };
  const headers = {
    "Content-Type": "application/json",
    Accept: "application/json, text/event-stream",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": request.method,
  };
  const name = request.method === "tools/call" ? params.name : params.taskId;
  if (typeof name === "string") headers["Mcp-Name"] = name;
  if (token) headers.Authorization = `Bearer ${token}`;
  wire.push(request.method);
  const r = await fetch(url, { method: "POST", headers, body: JSON.stringify(body), signal });
  const text = await r.text();
  const messages = (r.headers.get("content-type") ?? "").startsWith("text/event-stream")
    ? text.split("\n\n").map((e) => e.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n")).filter((d) => d.trim()).map((d) => JSON.parse(d))
    : [JSON.parse(text)];
  const msg = messages.filter((m) => m.id === id).at(-1);
  if (!msg) throw new Error(`no answer to ${JSON.stringify(request)}: ${r.status} ${text.slice(0, 300)}`);
  return msg.error ? { kind: "error", error: msg.error } : { kind: "result", result: msg.result };
}

const port = {
  endpointId: "sessions-mcp-ext-tasks-test",
  taskCapabilities: { generation: "v2", capabilities: {} },
  invalidated: false,
  dispatch: (request, options) => post(request, options?.signal),
  onServerRequest: () => () => {},
  onNotification: () => () => {},
  onInvalidated: () => () => {},
};

const session = withTasks(port);
const out = {};
const first = await session.callTool("create_session", { prompt: "wait:x1", title: "ext-tasks" });
out.first_kind = first.kind;
out.task_id = first.handle?.taskId ?? null;
const statuses = [];
const settled = await first.settle({
  onEvent: (e) => {
    if (e.type === "task" && statuses.at(-1) !== e.task.status) statuses.push(e.task.status);
  },
});
out.statuses = statuses;
const result = resultFromTaskOutcome(settled.outcome);
out.status = result.structuredContent?.status ?? null;
out.last_text = result.structuredContent?.messages?.at(-1)?.text ?? null;
const second = await session.callTool("create_session", { prompt: "wait:x2" });
out.second_kind = second.kind;
await second.cancel();
const after = await second.result();
out.second_outcome = after.kind ?? after.status ?? JSON.stringify(after).slice(0, 80);
out.wire = [...new Set(wire)].sort();
await session.close();
console.log(JSON.stringify(out));
