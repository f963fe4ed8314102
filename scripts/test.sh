#!/usr/bin/env bash
# Install everything the tests need into ./.venv and ./.tools, then lint, type-check and test.
# Used by the README and by .ci/run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

if [ -x scripts/setup-node-tools.sh ] || [ -f scripts/setup-node-tools.sh ]; then
  bash scripts/setup-node-tools.sh
fi
bash scripts/setup-clis.sh       # the coding-agent CLIs the host tests drive, pinned, into .tools/clis
bash scripts/setup-browser.sh   # Debian chromium + playwright-core + web/node_modules for the view tests
bash scripts/setup-postgres.sh  # a PostgreSQL on 127.0.0.1:5432, or initdb for a private one

echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== pyright"
.venv/bin/pyright
echo "== bench smoke"
.venv/bin/python bench/run.py --smoke --out "${TMPDIR:-/tmp}/sessions-mcp-bench-smoke.json"
echo "== pytest, stdio servers in-process (SESSIONS_MCP_DAEMON=off)"
# the stdio tests once more without the per-user daemon (the main run below uses it, the default)
SESSIONS_MCP_TEST_DAEMON=off .venv/bin/python -m pytest -q -n "${SESSIONS_MCP_TEST_WORKERS:-2}" tests/test_stdio.py \
  tests/test_agents_crash.py tests/test_subscriptions.py tests/test_guardian.py tests/test_views.py \
  tests/test_external_clients.py tests/postgres/test_replicas.py tests/postgres/test_turns_pg.py
echo "== pytest"
# Two workers by default (this is sized for a 2-core machine); SESSIONS_MCP_TEST_WORKERS=0 runs serially.
exec .venv/bin/python -m pytest -q -n "${SESSIONS_MCP_TEST_WORKERS:-2}" "$@"
