"""The error tree. Every message says what happened and what to do next.

::

    SessionsError
    ├── UserError                 the caller (a model) can fix it  -> is_error tool result
    │   ├── UnknownSession        no such session for this principal (or deleted)
    │   ├── BadCursor             cursor not from this session / not ours
    │   ├── InvalidArgument       empty text, limit out of range, unknown backend ...
    │   ├── Unsupported           the backend lacks a capability (rename, delete, ...)
    │   └── IdempotencyConflict   same key, different parameters / still in flight
    ├── ConfigError               the host is misconfigured; names the setting
    ├── BackendError              a remote API failed
    │   ├── AuthError             401/403; names the credential setting
    │   ├── PaymentRequired       402
    │   ├── RateLimited           429 (retry_after seconds)
    │   ├── Unavailable           connect errors, timeouts, 5xx
    │   └── ProtocolError         a response we cannot understand
    └── StoreError                the local store
        ├── StoreBusy             still locked after retrying
        ├── StoreUnavailable      path unreadable, read-only, corrupt
        └── SchemaTooNew          written by a newer sessions-mcp

Tools turn every ``SessionsError`` into a ``ToolError`` whose text is ``str(error)``;
messages never contain secrets.
"""

from __future__ import annotations

QUOTE_CHARS = 80
"""How much of a caller's input an error message repeats."""


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of a caller's input, cut to ``limit`` characters with its full length said.

    Errors name the bad input so the caller can find it, but never repeat all of it: a
    10 MB session id must not come back as a 10 MB error.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


class SessionsError(Exception):
    """Base of every error this package raises on purpose."""


class UserError(SessionsError):
    """A problem the caller can fix by changing the call."""


class UnknownSession(UserError):
    """No session with that id is visible to the caller."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"unknown session {quote(session_id)}; call list_sessions to see the sessions you can use")
        self.session_id = session_id


class BadCursor(UserError):
    """A cursor that this server did not hand out for this session."""

    def __init__(self, detail: str = "") -> None:
        msg = "bad cursor: pass a cursor returned by list_messages/send_message for the same session"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class InvalidArgument(UserError):
    """An argument is out of range or malformed."""


class Unsupported(UserError):
    """The backend cannot do this."""

    def __init__(self, backend: str, capability: str, hint: str = "") -> None:
        msg = f"the {quote(backend)} backend cannot {capability}"
        super().__init__(f"{msg}; {hint}" if hint else msg)
        self.backend = backend
        self.capability = capability


class IdempotencyConflict(UserError):
    """The idempotency key was used before with other parameters, or is still in flight."""


class ConfigError(SessionsError):
    """The host configuration is wrong; the message names the setting to change."""


class BackendError(SessionsError):
    """A remote session API failed."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class AuthError(BackendError):
    """The remote API rejected our credentials."""


class PaymentRequired(BackendError):
    """The remote account's plan does not allow this."""


class RateLimited(BackendError):
    """The remote API asked us to slow down."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Unavailable(BackendError):
    """The remote API could not be reached or failed on its side."""


class ProtocolError(BackendError):
    """The remote API answered something we cannot understand."""


class StoreError(SessionsError):
    """The local store failed."""


class StoreBusy(StoreError):
    """The database stayed locked by another process for too long."""


class StoreUnavailable(StoreError):
    """The database cannot be opened or written."""


class SchemaTooNew(StoreError):
    """The database was written by a newer version of sessions-mcp."""
