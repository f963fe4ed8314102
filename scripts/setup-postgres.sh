#!/usr/bin/env bash
# Make sure the PostgreSQL tests (tests/postgres, the local_postgres contract harness) can run:
# either a server answers on 127.0.0.1:5432 (trust auth for local users, as Debian sets it up),
# or initdb/postgres are installed so tests/pg.py starts a private cluster on a free loopback
# port (and stops it by PID afterwards). Installs Debian's postgresql package when neither is
# there. Quick and idempotent when everything is in place.
#   SESSIONS_MCP_TEST_PG=postgresql://...   use that server instead
#   SESSIONS_MCP_TEST_PG=private            always start a private cluster
set -euo pipefail

wanted="${SESSIONS_MCP_TEST_PG:-}"
if [ -n "$wanted" ] && [ "$wanted" != private ]; then
  echo "postgres: using SESSIONS_MCP_TEST_PG"
  exit 0
fi

answers() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
have_binaries() {
  { command -v initdb && command -v postgres; } >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if [ "$wanted" != private ] && answers; then
  echo "postgres: tests use the server on 127.0.0.1:5432"
  exit 0
fi
if have_binaries; then
  echo "postgres: tests start a private cluster with initdb"
  exit 0
fi

echo "postgres: installing Debian's postgresql package (initdb, postgres)"
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_binaries || { echo "postgres: installation did not provide initdb" >&2; exit 1; }
