// The outer frame of the double-iframe sandbox (MCP Apps spec): served from an origin other than
// the host's, with the view's CSP as an HTTP header (the inner frame inherits it). It writes the
// view into an inner, script-only sandboxed iframe and relays JSON-RPC messages both ways.
(() => {
  if (window.top === window.self) throw new Error("sandbox proxy must be framed");
  const hostOrigin = new URL(document.referrer).origin;
  const inner = document.createElement("iframe");
  inner.setAttribute("sandbox", "allow-scripts allow-forms");
  inner.title = "MCP App";
  document.body.append(inner);
  window.addEventListener("message", (event) => {
    const data = event.data;
    if (event.source === window.parent) {
      if (event.origin !== hostOrigin) return;
      if (data && data.method === "ui/notifications/sandbox-resource-ready") {
        inner.srcdoc = data.params.html;
        return;
      }
      inner.contentWindow && inner.contentWindow.postMessage(data, "*");
    } else if (event.source === inner.contentWindow) {
      window.parent.postMessage(data, hostOrigin);
    }
  });
  window.parent.postMessage({ jsonrpc: "2.0", method: "ui/notifications/sandbox-proxy-ready", params: {} }, hostOrigin);
})();
