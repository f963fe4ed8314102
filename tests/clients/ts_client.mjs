// A non-Python MCP client for tests/test_external_clients.py, on the TypeScript SDK.
//   node ts_client.mjs stdio <command> [args...]   |   node ts_client.mjs http <url>   |   node ts_client.mjs sse <url>
// MCP_TOKEN (optional) is sent as a bearer token. Prints one JSON summary line on stdout; exits 1 on failure.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";

const [mode, target, ...rest] = process.argv.slice(2);
const token = process.env.MCP_TOKEN;
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const transport =
  mode === "stdio"
    ? new StdioClientTransport({ command: target, args: rest, env: process.env, stderr: "inherit" })
    : mode === "http"
      ? new StreamableHTTPClientTransport(new URL(target), { requestInit: { headers } })
      : mode === "sse"
        ? new SSEClientTransport(new URL(target), {
            requestInit: { headers },
            eventSourceInit: { fetch: (url, init) => fetch(url, { ...init, headers: { ...init?.headers, ...headers } }) },
          })
        : null;
if (!transport) throw new Error(`unknown mode ${mode}`);

const client = new Client({ name: "ts-sdk-test", version: "1.0.0" });
await client.connect(transport);
const out = { server: client.getServerVersion(), protocol: transport.protocolVersion ?? null };
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
const created = await client.callTool({ name: "create_session", arguments: { prompt: `hello from ts over ${mode}`, title: "ts" } });
if (created.isError) throw new Error(`create_session failed: ${JSON.stringify(created.content)}`);
const session = created.structuredContent.session;
out.session_id = session.id;
const sent = await client.callTool({ name: "send_message", arguments: { session_id: session.id, text: "answered", role: "assistant" } });
if (sent.isError) throw new Error(`send_message failed: ${JSON.stringify(sent.content)}`);
const page = await client.callTool({ name: "list_messages", arguments: { session_id: session.id } });
out.messages = page.structuredContent.messages.map((m) => `${m.role}: ${m.text}`);
const transcript = await client.readResource({ uri: session.transcript_uri });
out.transcript_has_answer = transcript.contents[0].text.includes("answered");
out.templates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate).sort();
const prompt = await client.getPrompt({ name: "delegate", arguments: { task: "summarise the repo" } });
out.prompt_has_task = prompt.messages[0].content.text.includes("summarise the repo");
const bad = await client.callTool({ name: "get_session", arguments: { session_id: "local:doesnotexist0000000000" } });
out.unknown_is_error = bad.isError === true;
out.unknown_text = bad.content[0].text;
await client.close();
console.log(JSON.stringify(out));
