#!/usr/bin/env bash
# What the live-session-view tests need (tests/test_view_browser.py), installed idempotently:
#   - Debian's chromium (apt, --no-install-recommends; the tests run /usr/lib/chromium/chromium, since
#     /usr/bin/chromium is a wrapper script): no browser is ever downloaded by npm;
#   - playwright-core (npm registry) into the git-ignored .tools/browser, to drive it;
#   - web/node_modules from web/package-lock.json (npm ci): esbuild and the ext-apps SDK, to bundle
#     the test host page and to check that the committed view matches a fresh build.
# A second run with nothing to do takes milliseconds. SESSIONS_MCP_SKIP_BROWSER=1 skips it (the
# browser tests then fail loudly, they are not skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SESSIONS_MCP_SKIP_BROWSER:-}" = "1" ]; then
  echo "setup-browser: skipped (SESSIONS_MCP_SKIP_BROWSER=1)" >&2
  exit 0
fi

CHROMIUM=/usr/lib/chromium/chromium
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-browser: $CHROMIUM is missing; install Debian's chromium (apt-get install --no-install-recommends chromium)" >&2
    exit 1
  fi
  echo "== setup-browser: apt-get install chromium" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi

PREFIX=.tools/browser
PACKAGES=("playwright-core@1.65.1")
STAMP="$PREFIX/.installed"
WANT="${PACKAGES[*]}"
if ! { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -f "$PREFIX/node_modules/playwright-core/package.json" ]; }; then
  echo "== setup-browser: installing ${WANT} into ${PREFIX}" >&2
  mkdir -p "$PREFIX"
  [ -f "$PREFIX/package.json" ] || printf '{\n  "name": "sessions-mcp-browser-tools",\n  "private": true\n}\n' >"$PREFIX/package.json"
  # playwright-core never downloads a browser on install (only the `playwright` package does)
  npm install --prefix "$PREFIX" --save-exact --no-audit --no-fund --loglevel=error "${PACKAGES[@]}"
  echo "$WANT" >"$STAMP"
fi

WEB_STAMP=web/node_modules/.lock-sha256
LOCK_SUM="$(sha256sum web/package-lock.json | cut -d' ' -f1)"
if ! { [ -f "$WEB_STAMP" ] && [ "$(cat "$WEB_STAMP")" = "$LOCK_SUM" ]; }; then
  echo "== setup-browser: npm ci in web/" >&2
  npm ci --prefix web --no-audit --no-fund --loglevel=error
  echo "$LOCK_SUM" >"$WEB_STAMP"
fi
