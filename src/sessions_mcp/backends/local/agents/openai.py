"""The ``openai`` agent: any OpenAI-compatible chat-completions endpoint answers each turn.

Works with OpenAI, Ollama, vLLM, LM Studio, the llama.cpp server, OpenRouter and anything else
that serves ``POST {base_url}/chat/completions``. The request carries the system prompt (the
session's, else ``SESSIONS_MCP_LOCAL__OPENAI_SYSTEM``) and the session's history, asks for a
stream (``"stream": true``) and reads SSE ``data:`` chunks into the reply as they come; a server
that answers with one JSON body instead is read the same way, all at once.

Errors map like the HTTP backends (:func:`sessions_mcp._http.standard_errors`): 401/403 name the
key setting, 429 and 5xx are retried before the first byte of the reply (``Retry-After`` honoured
up to a cap; a chat completion has no side effects, so repeating a refused request is safe), and
what is left becomes the session's ``error``. The API key is a ``SecretStr``, sent only in the
``Authorization`` header and redacted from every message.
"""

from __future__ import annotations

import json
import logging
import random
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx2

from ...._http import (
    RETRY_STATUSES,
    HttpConfig,
    HttpFailure,
    Redactor,
    RetryPolicy,
    create_client,
    parse_retry_after,
    standard_errors,
)
from . import AgentFailed, Emit, TurnInput

if TYPE_CHECKING:
    from ....settings import LocalSettings

log = logging.getLogger(__name__)

SERVICE = "the OpenAI-compatible endpoint"
ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def _detail(content: bytes) -> str:
    try:
        body: Any = json.loads(content)
    except ValueError:
        return " ".join(content[:200].decode("utf-8", "replace").split())
    obj = _obj(body)
    obj = _obj(obj.get("error")) or obj
    for key in ("message", "detail", "error", "title"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _obj(value: Any) -> dict[str, Any]:
    return cast(dict[str, Any], value) if isinstance(value, dict) else {}


class OpenAIAgent:
    """Streams a chat completion per turn. See the module docstring."""

    name = "openai"

    def __init__(
        self,
        settings: LocalSettings,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key is not None else ""
        self.base_url = settings.openai_base_url.rstrip("/")
        self.model = settings.openai_model
        self.system = settings.openai_system
        self.redact = Redactor([key])
        self.policy = policy or RetryPolicy()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = create_client(
            HttpConfig(
                base_url=self.base_url,
                read_timeout_s=max(settings.agent_timeout_s, 30.0),
                headers=headers,
                user_agent="sessions-mcp (local openai agent)",
            ),
            transport=transport,
        )
        self.map_error = standard_errors(
            SERVICE,
            credential="OPENAI_API_KEY (or SESSIONS_MCP_LOCAL__OPENAI_API_KEY)",
            base_url_setting="SESSIONS_MCP_LOCAL__OPENAI_BASE_URL (it includes /v1)",
        )
        self.requests_sent = 0

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    def body(self, turn: TurnInput) -> dict[str, Any]:
        """The chat-completions request of this turn."""
        model = turn.model or self.model
        if not model:
            raise AgentFailed(
                "no model for the openai agent: set SESSIONS_MCP_LOCAL__OPENAI_MODEL, or pass model to create_session"
            )
        messages: list[dict[str, str]] = []
        system = turn.system or self.system
        if system:
            messages.append({"role": "system", "content": system})
        for m in turn.messages:
            role = ROLES.get(m.role)
            if role is not None and m.text:
                messages.append({"role": role, "content": m.text})
        return {"model": model, "messages": messages, "stream": True}

    async def run(self, turn: TurnInput, emit: Emit) -> None:
        """Ask the endpoint and stream its answer into ``emit``."""
        body = self.body(turn)
        pol = self.policy
        delay = pol.wait_initial_s
        waited = 0.0
        for attempt in range(1, max(pol.attempts, 1) + 1):
            last = attempt >= pol.attempts
            try:
                async with self.client.stream(
                    "POST", "/chat/completions", json=body, headers={"Accept": "text/event-stream, application/json"}
                ) as resp:
                    self.requests_sent += 1
                    if resp.is_success:
                        await self._read(resp, emit)
                        return
                    await resp.aread()
                    error = self._error(resp)
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                    if last or resp.status_code not in RETRY_STATUSES:
                        raise AgentFailed(error)
                    pause = retry_after if retry_after is not None else delay
                    if pause > pol.retry_after_cap_s or waited + pause > pol.budget_s:
                        raise AgentFailed(error)
            except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
                self.requests_sent += 1
                if last:
                    raise AgentFailed(self._unreachable(exc)) from None
                pause = delay
            except httpx2.HTTPError as exc:  # mid-stream: part of the reply may be out already
                raise AgentFailed(self._unreachable(exc)) from None
            log.info("openai agent: attempt %d failed, retrying in %.2fs", attempt, pause)
            await anyio.sleep(pause)
            waited += pause
            delay = min(delay * 2, pol.wait_max_s) + random.uniform(0, pol.wait_jitter_s)
        raise AgentFailed(f"{SERVICE} did not answer; retry later")  # pragma: no cover - loop returns or raises

    def _error(self, resp: httpx2.Response) -> str:
        failure = HttpFailure(
            status=resp.status_code,
            method="POST",
            path="/chat/completions",
            detail=self.redact(_detail(resp.content) or resp.reason_phrase)[:500],
            retry_after=parse_retry_after(resp.headers.get("retry-after")),
            request_id=resp.headers.get("x-request-id"),
        )
        return self.redact(str(self.map_error(failure)))

    def _unreachable(self, exc: Exception) -> str:
        what = self.redact(str(exc)) or type(exc).__name__
        return (
            f"cannot reach {SERVICE} at {self.redact(self.base_url)} ({type(exc).__name__}: {what}); check "
            "SESSIONS_MCP_LOCAL__OPENAI_BASE_URL and that the model server runs"
        )

    async def _read(self, resp: httpx2.Response, emit: Emit) -> None:
        ctype = resp.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            content = await resp.aread()
            try:
                data: Any = json.loads(content)
                text = data["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise AgentFailed(
                    f"{SERVICE} answered in a shape this server does not understand; check "
                    "SESSIONS_MCP_LOCAL__OPENAI_BASE_URL points at a chat-completions API (it includes /v1)"
                ) from None
            if isinstance(text, str) and text:
                await emit(text)
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # comments, event:, id:, blank separators
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            try:
                chunk: Any = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            chunk = _obj(chunk)
            if "error" in chunk:
                raise AgentFailed(
                    f"{SERVICE} failed mid-reply: {self.redact(_detail(payload.encode()) or 'unknown error')}"
                )
            choices = chunk.get("choices")
            for choice in cast(list[Any], choices) if isinstance(choices, list) else []:
                content = _obj(_obj(choice).get("delta")).get("content")
                if isinstance(content, str) and content:
                    await emit(content)
