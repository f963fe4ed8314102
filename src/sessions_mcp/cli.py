"""Command line: the one edge where settings are read. Logs go to stderr; stdout is protocol only."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, startup

EPILOG = """\
configuration (environment, TOML file via --config, flags; flags win):
  SESSIONS_MCP_BACKENDS          enabled backends, first is the default (local, factory, fabro)
  SESSIONS_MCP_LOCAL__DB         SQLite path or postgresql:// URL (default: user data dir)
  SESSIONS_MCP_LOCAL__AGENT      none | command | openai: what answers local sessions
  FACTORY_API_KEY                Factory API key (factory backend)
  SESSIONS_MCP_FABRO__BASE_URL   Fabro server (fabro backend)
  the README has the full table.

examples:
  sessions-mcp                                  serve MCP over stdio, local store, no setup
  sessions-mcp --transport http --port 8765     streamable HTTP at /mcp and SSE at /sse
  sessions-mcp doctor                           check configuration and reachability
  sessions-mcp ls | show ID | tail ID           look at sessions from a terminal
  sessions-mcp setup claude-code                add this server to an MCP host (or --print)
  sessions-mcp daemon status | stop             the per-user daemon behind stdio (SESSIONS_MCP_DAEMON=off)
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples, but wraps lines wider than the terminal."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return "\n".join(
            textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            if len(indent + line) > width
            else indent + line
            for line in text.splitlines()
        )


SETUP_HELP = "add sessions-mcp to an MCP host's configuration"


def _parser(argv: Sequence[str] = ("setup",)) -> argparse.ArgumentParser:
    """The command line parser; ``setup``'s own arguments only when ``argv`` names it.

    Describing ``setup`` imports the host registry (~13 ms), which every stdio start would
    otherwise pay; ``sessions-mcp --help`` still lists the command.
    """
    p = argparse.ArgumentParser(
        prog="sessions-mcp",
        description="MCP server that exposes agent sessions (local store, Factory, Fabro) as tools, "
        "resources and prompts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"sessions-mcp {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="TOML configuration file (default: user config dir)")
    common.add_argument("--backends", metavar="LIST", help="comma list of backends; first is the default")
    common.add_argument("--db", metavar="PATH_OR_URL", help="local store: SQLite path or postgresql:// URL")
    common.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING (default), ERROR")
    p.add_argument("--transport", choices=["stdio", "http", "sse"], default="stdio",
                   help="stdio (default); http serves streamable HTTP at /mcp and SSE at /sse on one port; "
                   "sse is an alias of http")  # fmt: skip
    p.add_argument("--host", help="HTTP bind address (default 127.0.0.1; others need auth configured)")
    p.add_argument("--port", type=int, help="HTTP port (default 8765)")
    p.add_argument("--no-daemon", action="store_true",
                   help="serve stdio in this process instead of through the per-user daemon")  # fmt: skip
    p.add_argument("--stateless", action="store_true", default=None,
                   help="HTTP without protocol sessions, for replicas behind a load balancer")  # fmt: skip
    for action in common._actions:  # share the common flags with the top level
        p._add_action(action)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    raw = _HelpFormatter
    sub.add_parser("serve", parents=[common], formatter_class=raw, help="serve MCP (the default)",
                   description="Serve MCP. With no flags: stdio, the local backend, a SQLite store in the user "
                   "data dir; nothing to configure.\nHTTP: sessions-mcp --transport http --port 8765 "
                   "(/mcp and /sse on one port).")  # fmt: skip
    sub.add_parser("doctor", parents=[common], formatter_class=raw,
                   help="check configuration, the store and every backend",
                   description="Check the configuration, the local store (path, permissions, schema version, "
                   "integrity, size, WAL size, locks) and every enabled backend (keys, reachability).\n"
                   "Prints ok / warn / FAIL with what to do; exits 1 when something is broken, 0 otherwise. "
                   "Never prints secrets.",
                   epilog="examples:\n  sessions-mcp doctor\n  sessions-mcp doctor --backends local,factory\n"
                   "  SESSIONS_MCP_LOCAL__DB=/path/other.db sessions-mcp doctor")  # fmt: skip
    principal_help = ("owner of the sessions (default: local, the owner of everything made over stdio; "
                      "over HTTP it is the token's principal)")  # fmt: skip
    ls = sub.add_parser("ls", parents=[common], formatter_class=raw, help="list sessions with status and age",
                        description="List sessions, most recently updated first, on every enabled backend "
                        "(or --backend).",
                        epilog="examples:\n  sessions-mcp ls\n  sessions-mcp ls --status awaiting_reply   "
                        "# the mailbox inbox\n  sessions-mcp ls --backends local,factory --backend factory")  # fmt: skip
    ls.add_argument("--backend", help="only this backend (must be enabled: --backends / SESSIONS_MCP_BACKENDS)")
    ls.add_argument(
        "--status", help="only these statuses, comma list: idle, running, awaiting_reply, failed, needs_input"
    )
    ls.add_argument("--query", help="only sessions whose title contains this text")
    ls.add_argument("--limit", type=int, default=20, help="how many sessions (1-200, default 20)")
    ls.add_argument("--principal", default=None, help=principal_help)
    show = sub.add_parser("show", parents=[common], formatter_class=raw, help="print a session's transcript",
                          description="Print a session's whole transcript: who said what and when, tool calls "
                          "and results.",
                          epilog="example:\n  sessions-mcp show local:9f1cXyZ...   # ids come from 'sessions-mcp "
                          "ls'")  # fmt: skip
    show.add_argument("session_id", help="a session id such as local:9f1c... (see 'sessions-mcp ls')")
    show.add_argument("--principal", default=None, help=principal_help)
    tail = sub.add_parser("tail", parents=[common], formatter_class=raw, help="follow a live session until Ctrl-C",
                          description="Print the last messages of a session, then every new message and status "
                          "change as it happens (also those written by other processes) until Ctrl-C. Looking "
                          "never starts or stops an agent.",
                          epilog="example:\n  sessions-mcp tail local:9f1cXyZ... -n 3")  # fmt: skip
    tail.add_argument("session_id", help="a session id such as local:9f1c... (see 'sessions-mcp ls')")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                      help="how many earlier messages to print first (default 10; 0 for none)")  # fmt: skip
    tail.add_argument("--principal", default=None, help=principal_help)
    daemon = sub.add_parser("daemon", help="show or stop the per-user daemon behind stdio",
                            description="sessions-mcp over stdio attaches to a per-user daemon (one per "
                            "configuration) and starts it when none runs; it exits after "
                            "SESSIONS_MCP_DAEMON__IDLE_S (default 600) without connections. "
                            "SESSIONS_MCP_DAEMON=off or --no-daemon serve in-process.")  # fmt: skip
    daemon.add_argument("daemon_command", choices=["status", "stop"], help="status: list them; stop: stop them all")
    if "setup" in argv:
        from .hosts import add_setup_parser

        add_setup_parser(sub, _HelpFormatter, SETUP_HELP)
    else:
        sub.add_parser("setup", help=SETUP_HELP)
    db = sub.add_parser("db", parents=[common], help="database maintenance")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION")
    copy = dbsub.add_parser("copy", parents=[common], help="copy a SQLite store into PostgreSQL and verify")
    copy.add_argument("source", help="SQLite file")
    copy.add_argument("target", help="postgresql:// URL")
    copy.add_argument("--merge", action="store_true",
                      help="copy into a non-empty target, keeping rows that are already there (e.g. to resume)")  # fmt: skip
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "backends", None):
        out["backends"] = args.backends
    if getattr(args, "log_level", None):
        out["log_level"] = args.log_level
    local: dict[str, Any] = {}
    if getattr(args, "db", None):
        local["db"] = args.db
    http: dict[str, Any] = {}
    if getattr(args, "host", None):
        http["host"] = args.host
    if getattr(args, "port", None) is not None:
        http["port"] = args.port
    if getattr(args, "stateless", None):
        http["stateless"] = True
    return out | ({"local": local} if local else {}) | ({"http": http} if http else {})


def _merge_env(overrides: dict[str, Any]) -> Any:
    """Load settings, then apply flag overrides on top of the nested models (flags win)."""
    from .settings import load_settings

    args_config = overrides.pop("_config", None)
    nested = {k: overrides.pop(k) for k in ("local", "http") if k in overrides}
    settings = load_settings(args_config, **overrides)
    for section, values in nested.items():
        current = getattr(settings, section)
        setattr(settings, section, current.model_validate(current.model_dump() | values))
    return settings


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line."""
    arglist = list(sys.argv[1:] if argv is None else argv)
    return _parser(arglist).parse_args(arglist)


def settings_from_args(args: argparse.Namespace) -> Any:
    """Settings from the environment, the TOML file and the flags in ``args``."""
    overrides = _overrides(args)
    overrides["_config"] = args.config
    return _merge_env(overrides)


def config_file_of(args: argparse.Namespace) -> Any:
    """The TOML file these arguments read (it may not exist)."""
    from pathlib import Path

    from .settings import default_config_path

    return Path(args.config) if args.config else default_config_path()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sessions-mcp`` command."""
    arglist = list(sys.argv[1:] if argv is None else argv)
    args = parse(arglist)
    if (args.command or "serve") == "serve" and args.transport == "stdio" and not args.no_daemon:
        from . import daemon

        if daemon.enabled():
            from .daemon.relay import relay

            code = relay(arglist)
            if code is not None:
                return code
    if args.command == "daemon":
        from .daemon.control import run_control

        return run_control(args.daemon_command)
    if (args.command or "serve") == "serve":
        startup.begin()
    try:
        return _run(args)
    finally:
        startup.done()


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=(args.log_level or "WARNING").upper() if isinstance(args.log_level, str) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .errors import SessionsError

    try:
        if args.command == "setup":  # needs no settings: a broken config file must not block it
            from .hosts import run_setup_command

            return run_setup_command(args)
        settings = settings_from_args(args)
        logging.getLogger().setLevel(settings.log_level.upper())
        command = args.command or "serve"
        if command == "serve":
            return _serve(settings, args.transport)
        if command == "doctor":
            from .doctor import run_doctor

            return run_doctor(settings)
        if command in ("ls", "show", "tail"):
            from . import views

            return views.run(command, settings, args)
        if command == "db":
            if args.db_command != "copy":
                print("sessions-mcp db: name an action, e.g. 'sessions-mcp db copy SRC.db postgresql://…'",
                      file=sys.stderr)  # fmt: skip
                return 2
            from .store.copy import run_copy

            return run_copy(args.source, args.target, merge=args.merge)
    except SessionsError as exc:
        print(f"sessions-mcp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _only_broken_pipes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(e) for e in exc.exceptions)  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType, reportUnknownArgumentType]
    return isinstance(exc, BrokenPipeError)


def _serve(settings: Any, transport: str) -> int:
    import anyio

    if transport == "stdio":
        from .server import build_server
        from .stdio import serve_stdio

        mcp = build_server(settings)
        startup.done()
        try:
            anyio.run(serve_stdio, mcp)
        except BaseException as exc:  # the client closed our stdout: leave quietly, nothing to report
            if not _only_broken_pipes(exc):
                raise
        return 0
    from .http_app import create_app, serve_http

    built = create_app(settings)
    startup.done()
    return serve_http(settings, built)
