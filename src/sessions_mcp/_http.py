"""The shared HTTP layer of every remote backend (Factory, Fabro, the Factory web-app mirror).

One :class:`HttpApi` per remote service wraps one ``httpx2.AsyncClient`` and adds what every
backend needs and none should repeat:

- explicit timeouts (:class:`HttpConfig`: connect and read separately), optional mTLS;
- a retry policy (``stamina``) that only retries what is safe:

  * connection failures that prove the request never reached the server (connect errors,
    connect/pool timeouts) are retried for every method;
  * ``408 409 429 5xx`` and read-side failures (read timeout, reset connection) are retried only
    for idempotent requests (GET/HEAD/PUT/DELETE/OPTIONS, or ``idempotent=True``): a
    non-idempotent POST is never replayed once it may have reached the server;
  * ``Retry-After`` is honoured up to :attr:`RetryPolicy.retry_after_cap`; a longer ask ends the
    call at once with :class:`~sessions_mcp.errors.RateLimited` (the caller decides);

- one status-to-exception hook per backend (:data:`ErrorMapper`); :func:`standard_errors` builds
  the usual one (401/403 name the credential setting, 402, 404 on a subject, 429, 5xx);
- redaction: every text that may be logged, raised or returned goes through :class:`Redactor`,
  which removes the configured secrets and anything that looks like a bearer token or API key.

Typical use::

    redactor = Redactor([api_key])
    api = HttpApi(
        create_client(HttpConfig(base_url=url, headers={"Authorization": f"Bearer {key}"}), transport=t),
        service="Factory",
        map_error=standard_errors("Factory", credential="FACTORY_API_KEY"),
        redactor=redactor,
    )
    data = await api.json("GET", "/api/v0/sessions", params={"limit": 20})
    data = await api.json("POST", f"/api/v0/sessions/{sid}/messages", json=body, subject=f"factory:{sid}")
"""

from __future__ import annotations

import email.utils
import json as jsonlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2
import stamina

from .errors import (
    AuthError,
    BackendError,
    PaymentRequired,
    ProtocolError,
    RateLimited,
    SessionsError,
    Unavailable,
    UnknownSession,
)

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

# --- redaction --------------------------------------------------------------------------------

_TOKENISH = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"\bfk-[A-Za-z0-9._-]{6,}"),
    re.compile(r"\bsk-[A-Za-z0-9._-]{6,}"),
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{4,}"),
]


class Redactor:
    """Removes secrets from text: the exact configured values and token-shaped strings."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        """Also redact ``secret`` from now on."""
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        for pattern in _TOKENISH:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
        return text


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """How to reach one remote service."""

    base_url: str
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    client_cert: str = ""
    """Path of a client certificate (PEM) for mutual TLS; may contain the key too."""
    client_key: str = ""
    """Path of the client certificate's key, when it is a separate file."""
    ca_cert: str = ""
    """CA bundle that verifies the server (default: the system's)."""
    user_agent: str = "sessions-mcp"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before giving up; the total stays under ``budget_s``."""

    attempts: int = 4
    budget_s: float = 20.0
    """Total time for all attempts and waits of one call."""
    wait_initial_s: float = 0.25
    wait_max_s: float = 4.0
    wait_jitter_s: float = 0.25
    retry_after_cap_s: float = 10.0
    """Longest ``Retry-After`` we sleep through; a longer one is reported to the caller."""


def create_client(cfg: HttpConfig, *, transport: httpx2.AsyncBaseTransport | None = None) -> httpx2.AsyncClient:
    """An ``AsyncClient`` with explicit timeouts, optional mTLS, no redirects and no env proxies.

    ``transport`` replaces the network (``httpx2.ASGITransport`` in tests).
    """
    verify: ssl.SSLContext | bool = True
    if cfg.ca_cert or cfg.client_cert:
        ctx = ssl.create_default_context(cafile=cfg.ca_cert or None)
        if cfg.client_cert:
            ctx.load_cert_chain(cfg.client_cert, cfg.client_key or None)
        verify = ctx
    timeout = httpx2.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s, pool=cfg.connect_timeout_s)
    headers = {"User-Agent": cfg.user_agent, "Accept": "application/json", **cfg.headers}
    return httpx2.AsyncClient(
        base_url=cfg.base_url.rstrip("/"),
        headers=headers,
        timeout=timeout,
        verify=verify,
        follow_redirects=False,
        trust_env=False,
        transport=transport,
    )


# --- errors -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpFailure:
    """A non-2xx answer, already redacted, handed to the backend's :data:`ErrorMapper`."""

    status: int
    method: str
    path: str
    detail: str
    """What the server said (RFC 7807 ``title``/``detail``/``errors[].message``, or a snippet)."""
    retry_after: float | None = None
    request_id: str | None = None
    subject: str | None = None
    """The session handle the request was about, when any (a 404 then means an unknown session)."""
    body: Any = None
    """The parsed JSON body (redacted strings), when it was JSON."""


ErrorMapper = Callable[[HttpFailure], SessionsError]
"""Turns a failed response into an exception of :mod:`sessions_mcp.errors`."""


def standard_errors(service: str, *, credential: str, base_url_setting: str = "") -> ErrorMapper:
    """The usual mapping: 401/403 → :class:`AuthError` naming ``credential``, 402 →
    :class:`PaymentRequired`, 404 on a subject → :class:`UnknownSession`, 429 →
    :class:`RateLimited`, 5xx/408 → :class:`Unavailable`, anything else → :class:`BackendError`."""

    def mapper(f: HttpFailure) -> SessionsError:
        said = f": {f.detail}" if f.detail else ""
        rid = f" (request id {f.request_id})" if f.request_id else ""
        if f.status == 401:
            return AuthError(
                f"{service} rejected the credentials (401){said}; check {credential}",
                status=401,
                request_id=f.request_id,
            )
        if f.status == 403:
            return AuthError(
                f"{service} refused access (403){said}; check that {credential} is valid and that your "
                "organization has this feature enabled",
                status=403,
                request_id=f.request_id,
            )
        if f.status == 402:
            return PaymentRequired(
                f"{service} says this needs another plan (402){said}", status=402, request_id=f.request_id
            )
        if f.status == 404 and f.subject:
            return UnknownSession(f.subject)
        if f.status == 429:
            wait = f"; retry in {f.retry_after:g} s" if f.retry_after is not None else "; retry later"
            return RateLimited(f"{service} is rate limiting requests (429){said}{wait}", retry_after=f.retry_after)
        if f.status >= 500 or f.status == 408:
            return Unavailable(
                f"{service} failed on its side ({f.status}){said}{rid}; try again shortly",
                status=f.status,
                request_id=f.request_id,
            )
        where = f"; check {base_url_setting}" if f.status == 404 and base_url_setting else ""
        return BackendError(
            f"{service} refused {f.method} {f.path} ({f.status}){said}{rid}{where}",
            status=f.status,
            request_id=f.request_id,
        )

    return mapper


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC).timestamp()
    return max(when.timestamp() - current, 0.0)


def _problem_detail(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    obj: dict[str, Any] = body  # pyright: ignore[reportUnknownVariableType]
    if isinstance(obj.get("error"), dict):
        obj = obj["error"]
    bits: list[str] = []
    for key in ("title", "detail", "message", "error"):
        v = obj.get(key)
        if isinstance(v, str) and v and v not in bits:
            bits.append(v)
    errors = obj.get("errors")
    if isinstance(errors, list):
        for e in errors[:3]:  # pyright: ignore[reportUnknownVariableType]
            if isinstance(e, dict) and isinstance(e.get("message"), str):  # pyright: ignore[reportUnknownMemberType]
                bits.append(str(e["message"]))  # pyright: ignore[reportUnknownArgumentType]
    return " - ".join(bits)


def _redact_json(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_json(v, redact) for v in value]  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, dict):
        return {k: _redact_json(v, redact) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]
    return value


# --- the client -------------------------------------------------------------------------------


class _Retry(Exception):
    """Internal: this attempt failed in a way that may be retried."""

    def __init__(self, error: SessionsError, delay: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


def _retry_hook(exc: Exception) -> bool | float:
    if isinstance(exc, _Retry):
        return exc.delay if exc.delay is not None else True
    return False


_NEVER_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.UnsupportedProtocol)


class HttpApi:
    """One remote service: requests with retries, error mapping and redaction.

    ``request``/``json`` raise only :class:`~sessions_mcp.errors.SessionsError` subclasses whose
    messages are redacted; the underlying ``httpx2`` exception is never chained.
    """

    def __init__(
        self,
        client: httpx2.AsyncClient,
        *,
        service: str,
        map_error: ErrorMapper,
        redactor: Redactor | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.service = service
        self.map_error = map_error
        self.redact = redactor or Redactor()
        self.policy = policy or RetryPolicy()
        self.requests_sent = 0
        """How many HTTP requests went out (retries included), for tests and diagnostics."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    def _unreachable(self, method: str, path: str, exc: Exception) -> Unavailable:
        kind = type(exc).__name__
        text = self.redact(str(exc)) or kind
        return Unavailable(
            f"cannot reach {self.service} ({method} {self.redact(path)}: {kind}: {text}); "
            f"check the base URL and the network, then retry"
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        subject: str | None = None,
        policy: RetryPolicy | None = None,
    ) -> httpx2.Response:
        """Send one logical request (maybe several attempts) and return the 2xx response.

        ``idempotent`` overrides the method's default (e.g. ``True`` for an idempotent POST such
        as an interrupt). ``subject`` names the session the path is about, for 404 mapping.
        """
        method = method.upper()
        safe = idempotent if idempotent is not None else method in IDEMPOTENT_METHODS
        pol = policy or self.policy
        clean: dict[str, Any] | None = None
        if params is not None:
            clean = {k: v for k, v in params.items() if v is not None and v != ""}
        started = time.monotonic()
        try:
            async for attempt in stamina.retry_context(
                on=_retry_hook,
                attempts=max(pol.attempts, 1),
                timeout=pol.budget_s,
                wait_initial=pol.wait_initial_s,
                wait_max=pol.wait_max_s,
                wait_jitter=pol.wait_jitter_s,
            ):
                with attempt:
                    return await self._attempt(
                        method, path, clean, json, data, files, headers, safe, subject, pol, started
                    )
        except _Retry as exc:
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover - stamina either returns or raises

    async def _attempt(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json: Any,
        data: Mapping[str, Any] | None,
        files: Any,
        headers: Mapping[str, str] | None,
        safe: bool,
        subject: str | None,
        pol: RetryPolicy,
        started: float,
    ) -> httpx2.Response:
        self.requests_sent += 1
        try:
            resp = await self.client.request(
                method, path, params=params, json=json, data=data, files=files, headers=headers
            )
        except _NEVER_SENT as exc:
            raise _Retry(self._unreachable(method, path, exc)) from None
        except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
            err = self._unreachable(method, path, exc)
            if safe:
                raise _Retry(err) from None
            raise Unavailable(
                f"{err}; the request may have reached {self.service}, so it was not repeated: "
                "check whether it took effect before sending it again"
            ) from None
        except httpx2.HTTPError as exc:
            raise self._unreachable(method, path, exc) from None
        if resp.is_success:
            return resp
        await resp.aread()
        failure = self._failure(method, path, resp, subject)
        error = self.map_error(failure)
        log.debug("%s %s -> %s: %s", method, self.redact(path), resp.status_code, failure.detail)
        if safe and resp.status_code in RETRY_STATUSES:
            delay = failure.retry_after
            if delay is not None:
                elapsed = time.monotonic() - started
                if delay > pol.retry_after_cap_s or elapsed + delay > pol.budget_s:
                    raise error  # waiting that long is the caller's decision
            raise _Retry(error, delay)
        raise error

    def _failure(self, method: str, path: str, resp: httpx2.Response, subject: str | None) -> HttpFailure:
        body: Any = None
        detail = ""
        try:
            body = _redact_json(jsonlib.loads(resp.content), self.redact) if resp.content else None
            detail = _problem_detail(body)
        except ValueError:
            snippet = resp.content[:200].decode("utf-8", "replace").strip()
            detail = self.redact(" ".join(snippet.split()))
        if not detail and resp.reason_phrase:
            detail = resp.reason_phrase
        rid = resp.headers.get("x-request-id") or resp.headers.get("request-id")
        if rid is None and isinstance(body, dict):
            maybe = body.get("requestId")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            rid = maybe if isinstance(maybe, str) else None
        return HttpFailure(
            status=resp.status_code,
            method=method,
            path=self.redact(path),
            detail=self.redact(detail)[:500],
            retry_after=parse_retry_after(resp.headers.get("retry-after")),
            request_id=self.redact(rid) if rid else None,
            subject=subject,
            body=body,
        )

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, then parse the body as JSON (None for an empty body, e.g. 204).

        A body that is not JSON raises :class:`~sessions_mcp.errors.ProtocolError`.
        """
        resp = await self.request(method, path, **kwargs)
        if not resp.content or resp.status_code == 204:
            return None
        try:
            return jsonlib.loads(resp.content)
        except ValueError:
            snippet = self.redact(" ".join(resp.content[:120].decode("utf-8", "replace").split()))
            raise ProtocolError(
                f"{self.service} answered {method} {self.redact(path)} with something that is not JSON "
                f"({snippet!r}); check the base URL points at the API, or retry later",
                status=resp.status_code,
            ) from None


def protocol_error(
    service: str, what: str, exc: Exception | None = None, redact: Redactor | None = None
) -> ProtocolError:
    """A :class:`ProtocolError` for a JSON answer of the wrong shape (e.g. a pydantic failure)."""
    detail = ""
    if exc is not None:
        text = str(exc).splitlines()
        detail = f": {' '.join(text[:3])}"
        if redact is not None:
            detail = redact(detail)
    return ProtocolError(f"{service} answered {what} in a shape this server does not understand{detail[:300]}")


__all__ = [
    "BackendError",
    "ErrorMapper",
    "HttpApi",
    "HttpConfig",
    "HttpFailure",
    "Redactor",
    "RetryPolicy",
    "create_client",
    "parse_retry_after",
    "protocol_error",
    "standard_errors",
]
