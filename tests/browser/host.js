// A minimal MCP Apps host for the browser tests, built on the official AppBridge of
// @modelcontextprotocol/ext-apps and the TypeScript SDK client (bundled by esbuild at test time).
// It connects to the sessions-mcp server on its own origin (/mcp, streamable HTTP), calls one
// tool, reads the tool's ui:// resource and renders it in a double-iframe sandbox on another
// origin, proxying the view's tools/call and resources/read to the server.
import { AppBridge, PostMessageTransport, RESOURCE_MIME_TYPE, getToolUiResourceUri } from "@modelcontextprotocol/ext-apps/app-bridge";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const query = new URLSearchParams(location.search);
const tool = query.get("tool") || "get_session";
const args = JSON.parse(query.get("args") || "{}");
const theme = query.get("theme") || "light";
const sandboxOrigin = query.get("sandbox");
const HOST = { name: "sessions-mcp-test-host", version: "1.0.0" };

const state = (window.hostState = {
  ready: false, error: null, calls: [], result: null, bridge: null, csp: null, mime: null,
});

async function main() {
  if (theme === "dark") document.body.classList.add("dark");
  const client = new Client(HOST, {
    capabilities: { extensions: { "io.modelcontextprotocol/ui": { mimeTypes: [RESOURCE_MIME_TYPE] } } },
    // "legacy" is the 2025-11-25 handshake; "auto" negotiates 2026-07-28 with this server
    versionNegotiation: { mode: query.get("era") === "auto" ? "auto" : "legacy" },
  });
  await client.connect(new StreamableHTTPClientTransport(new URL("/mcp", location.href)));
  const { tools } = await client.listTools();
  const info = tools.find((t) => t.name === tool);
  if (!info) throw new Error(`no tool ${tool}`);
  const uri = getToolUiResourceUri(info);
  if (!uri) throw new Error(`tool ${tool} names no ui:// resource`);
  const resource = await client.readResource({ uri });
  const content = resource.contents[0];
  state.mime = content.mimeType;
  state.protocolVersion = client.getNegotiatedProtocolVersion ? client.getNegotiatedProtocolVersion() : null;
  if (content.mimeType !== RESOURCE_MIME_TYPE) throw new Error(`resource ${uri} has MIME type ${content.mimeType}`);
  const csp = content._meta?.ui?.csp ?? {};
  state.csp = csp;

  // outer iframe: the sandbox proxy, on another origin, with the resource's CSP as an HTTP header
  const frame = document.createElement("iframe");
  frame.id = "frame";
  frame.setAttribute("sandbox", "allow-scripts allow-same-origin allow-forms");
  const proxyReady = new Promise((resolve) => {
    const listener = (event) => {
      if (event.source === frame.contentWindow && event.data?.method === "ui/notifications/sandbox-proxy-ready") {
        window.removeEventListener("message", listener);
        resolve();
      }
    };
    window.addEventListener("message", listener);
  });
  const src = new URL("/sandbox.html", sandboxOrigin);
  src.searchParams.set("csp", JSON.stringify(csp));
  frame.src = src.href;
  document.getElementById("holder").append(frame);
  await proxyReady;

  const caps = client.getServerCapabilities();
  const bridge = new AppBridge(client, HOST, { serverTools: caps?.tools ?? {}, serverResources: caps?.resources ?? {} }, {
    hostContext: {
      theme,
      platform: "web",
      displayMode: "inline",
      availableDisplayModes: ["inline"],
      containerDimensions: { maxHeight: 2000, width: frame.clientWidth },
      locale: "en-US",
    },
  });
  state.bridge = bridge;
  bridge.onsizechange = ({ height }) => {
    if (height !== undefined) frame.style.height = `${height + 2}px`;
  };
  bridge.onopenlink = async (params) => {
    state.calls.push({ name: "ui/open-link", arguments: params });
    return { isError: true };
  };
  bridge.onmessage = async (params) => {
    state.calls.push({ name: "ui/message", arguments: params });
    return { isError: true };
  };
  const initialized = new Promise((resolve) => {
    bridge.oninitialized = () => resolve();
  });
  await bridge.connect(new PostMessageTransport(frame.contentWindow, frame.contentWindow));
  // log every tools/call the view makes, then forward it as the AppBridge does
  bridge.oncalltool = async (params, extra) => {
    const entry = { name: params.name, arguments: params.arguments, started: Date.now(), done: false };
    state.calls.push(entry);
    try {
      return await client.request({ method: "tools/call", params }, { signal: extra.mcpReq.signal, timeout: 120000 });
    } finally {
      entry.done = true;
    }
  };
  await bridge.sendSandboxResourceReady({ html: content.text, csp });
  await initialized;
  await bridge.sendToolInput({ arguments: args });
  const result = await client.callTool({ name: tool, arguments: args });
  state.result = result;
  await bridge.sendToolResult(result);
  state.ready = true;
}

window.hostTeardown = async () => {
  await state.bridge.teardownResource({});
  state.tornDown = Date.now();
};
window.hostTheme = async (next) => {
  document.body.classList.toggle("dark", next === "dark");
  await state.bridge.sendHostContextChange({ theme: next });
};

main().catch((error) => {
  state.error = String(error && error.stack ? error.stack : error);
  console.error("[HOST]", state.error);
});
