// The TypeScript SDK's experimental tasks client (SEP-1686, 2025-11-25) against sessions-mcp, for
// tests/test_tasks_clients.py.   node ts_tasks.mjs <command> [args...]   (the server over stdio)
// Runs two task calls through client.experimental.tasks.callToolStream: "wait:ts1" to its end, and
// "wait:ts2" cancelled with cancelTask once created. Prints one JSON summary line on stdout.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [command, ...args] = process.argv.slice(2);
const transport = new StdioClientTransport({ command, args, env: process.env, stderr: "inherit" });
const client = new Client({ name: "ts-tasks-test", version: "1.0.0" }, { capabilities: { tasks: { list: {}, cancel: {} } } });
await client.connect(transport);
const out = { caps: client.getServerCapabilities().tasks ?? null };
const tools = (await client.listTools()).tools;
out.task_support = Object.fromEntries(tools.map((t) => [t.name, t.execution?.taskSupport ?? null]));
out.is_task_tool = client.isToolTask("send_message");

async function run(prompt, onCreated) {
  const seen = [];
  let result = null;
  let error = null;
  let taskId = null;
  const stream = client.experimental.tasks.callToolStream({ name: "create_session", arguments: { prompt } });
  for await (const m of stream) {
    if (m.type === "taskCreated") {
      taskId = m.task.taskId;
      seen.push(`created:${m.task.status}`);
      if (onCreated) await onCreated(m.task.taskId);
    } else if (m.type === "taskStatus") {
      if (seen[seen.length - 1] !== `status:${m.task.status}`) seen.push(`status:${m.task.status}`);
    } else if (m.type === "result") {
      result = m.result;
    } else if (m.type === "error") {
      error = String(m.error?.message ?? m.error);
    }
  }
  return { taskId, seen, result, error };
}

const first = await run("wait:ts1");
out.first = {
  seen: first.seen,
  status: first.result?.structuredContent?.status ?? null,
  last_text: first.result?.structuredContent?.messages?.at(-1)?.text ?? null,
  related: first.result?._meta?.["io.modelcontextprotocol/related-task"]?.taskId === first.taskId,
};
out.got = (await client.experimental.tasks.getTask(first.taskId)).status;
const second = await run("wait:ts2", async (taskId) => {
  const cancelled = await client.experimental.tasks.cancelTask(taskId);
  out.cancel_answer = cancelled.status;
});
out.second = { seen: second.seen, error: second.error };
out.listed = (await client.experimental.tasks.listTasks()).tasks.map((t) => t.status).sort();
await client.close();
console.log(JSON.stringify(out));
