#!/usr/bin/env bash
# Install the coding-agent CLIs the host tests (tests/test_hosts.py) and the ACP agent tests drive,
# at PINNED versions, from the npm registry only, into one git-ignored prefix:
#   ${SESSIONS_MCP_CLIS_DIR:-.tools/clis}
# Set SESSIONS_MCP_CLIS_DIR to an absolute path to share one install between worktrees/checkouts.
# Idempotent: a stamp file records the package list; a second run with nothing to do takes
# milliseconds. Set SESSIONS_MCP_SKIP_CLIS=1 to skip (the tests that need a CLI then fail loudly).
#
# After it ran, the executables are in "$DIR/node_modules/.bin": claude, codex, gemini, qwen,
# copilot, droid, opencode, claude-agent-acp, codex-acp. tests/clis.py finds them there.
# Versions are the ones measured offline in REAL-AGENTS.md. @factory/cli's shim needs its platform
# binary package, which the registry has only at 0.225.2, hence the separate pin.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SESSIONS_MCP_SKIP_CLIS:-}" = "1" ]; then
  echo "setup-clis: skipped (SESSIONS_MCP_SKIP_CLIS=1)" >&2
  exit 0
fi

DIR="${SESSIONS_MCP_CLIS_DIR:-.tools/clis}"
PACKAGES=(
  "@anthropic-ai/claude-code@2.1.332"
  "@openai/codex@0.171.0"
  "@google/gemini-cli@0.61.0"
  "@qwen-code/qwen-code@0.24.4"
  "@github/copilot@1.0.102"
  "@factory/cli@0.225.1"
  "@factory/cli-linux-x64@0.225.2"
  "opencode-ai@1.18.33"
  "@agentclientprotocol/claude-agent-acp@0.101.0"
  "@agentclientprotocol/codex-acp@2.6.0"
)
BINS=(claude codex gemini qwen copilot droid opencode claude-agent-acp codex-acp)
STAMP="$DIR/.installed"
WANT="${PACKAGES[*]}"

all_bins() {
  local b
  for b in "${BINS[@]}"; do [ -e "$DIR/node_modules/.bin/$b" ] || return 1; done
}
# Copilot CLI unpacks ~235 MB into $XDG_CACHE_HOME/copilot on its first run; unpack it once here
# (tests/clis.py points every run at "$DIR/cache") so parallel test workers never race on it.
warm_copilot() {
  [ -d "$DIR/cache/copilot" ] && return 0
  mkdir -p "$DIR/cache/home"
  XDG_CACHE_HOME="$DIR/cache" HOME="$DIR/cache/home" "$DIR/node_modules/.bin/copilot" --version </dev/null >/dev/null
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && all_bins; then
  warm_copilot
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "setup-clis: npm is not installed; install Node.js/npm (e.g. apt-get install npm) and rerun" >&2
  exit 1
fi
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "setup-clis: the pinned platform packages fit Linux x86_64; on $(uname -s)-$(uname -m)" \
          "the droid pin (@factory/cli-linux-x64) will not install" >&2 ;;
esac

echo "== setup-clis: installing into ${DIR}: ${WANT}" >&2
mkdir -p "$DIR"
if [ ! -f "$DIR/package.json" ]; then
  printf '{\n  "name": "sessions-mcp-test-clis",\n  "private": true\n}\n' >"$DIR/package.json"
fi
# EBADENGINE warnings (packages asking for node >= 22 while npm runs on the system Node) are expected.
npm install --prefix "$DIR" --save-exact --no-audit --no-fund --loglevel=error "${PACKAGES[@]}"
missing=()
for b in "${BINS[@]}"; do [ -e "$DIR/node_modules/.bin/$b" ] || missing+=("$b"); done
if [ "${#missing[@]}" -ne 0 ]; then
  echo "setup-clis: installed, but these executables are missing: ${missing[*]}" >&2
  exit 1
fi
warm_copilot
echo "$WANT" >"$STAMP"
echo "== setup-clis: done" >&2
