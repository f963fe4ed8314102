"""FactoryClient: the v0 endpoints on the shared HTTP layer (:mod:`sessions_mcp._http`).

Only documented request fields are sent (an unknown field may be rejected with 400). Every
method returns wire models of :mod:`.wire` and raises only :mod:`sessions_mcp.errors` types.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel, ValidationError

from ..._http import HttpApi, HttpConfig, Redactor, RetryPolicy, create_client, protocol_error, standard_errors
from ...errors import ConfigError
from .wire import MessageList, PostedMessage, SessionList, WireSession

M = TypeVar("M", bound=BaseModel)

API = "/api/v0/sessions"
PAGE_MAX = 100
SERVICE = "Factory"
CREDENTIAL = "FACTORY_API_KEY"


class FactoryClient:
    """Factory Sessions API v0 over ``httpx2``."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        computer_id: str = "",
        read_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        transport: httpx2.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.has_key = bool(api_key)
        self.computer_id = computer_id
        self.redact = Redactor([api_key])
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        cfg = HttpConfig(
            base_url=self.base_url,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            headers=headers,
        )
        self.api = HttpApi(
            create_client(cfg, transport=transport),
            service=SERVICE,
            map_error=standard_errors(
                SERVICE, credential=CREDENTIAL, base_url_setting="SESSIONS_MCP_FACTORY__BASE_URL"
            ),
            redactor=self.redact,
            policy=policy,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()

    def _need_key(self) -> None:
        if not self.has_key:
            raise ConfigError(
                "FACTORY_API_KEY is not set; create a key at https://app.factory.ai/settings/api-keys "
                "and export FACTORY_API_KEY=fk-..."
            )

    def _parse(self, model: type[M], data: Any, what: str) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise protocol_error(SERVICE, what, exc, self.redact) from None

    def _params(self, **extra: Any) -> dict[str, Any]:
        params = {k: v for k, v in extra.items() if v is not None}
        if self.computer_id:
            params["computerId"] = self.computer_id
        return params

    @staticmethod
    def _sid(session_id: str) -> str:
        return quote(session_id, safe="")

    # --- sessions ---------------------------------------------------------------------------

    async def create_session(self, *, cwd: str = "", model: str | None = None) -> WireSession:
        """``POST /api/v0/sessions`` (not retried once it may have reached the server)."""
        self._need_key()
        body: dict[str, Any] = {}
        if self.computer_id:
            body["computerId"] = self.computer_id
        if cwd:
            body["cwd"] = cwd
        if model:
            body["sessionSettings"] = {"model": model}
        data = await self.api.json("POST", API, json=body)
        return self._parse(WireSession, data, "create session")

    async def list_sessions(self, *, limit: int, cursor: str | None) -> SessionList:
        """``GET /api/v0/sessions`` (one page)."""
        self._need_key()
        params = self._params(limit=str(max(1, min(limit, PAGE_MAX))), cursor=cursor)
        data = await self.api.json("GET", API, params=params)
        return self._parse(SessionList, data, "list sessions")

    async def get_session(self, session_id: str, *, subject: str) -> WireSession:
        """``GET /api/v0/sessions/{id}``."""
        self._need_key()
        data = await self.api.json("GET", f"{API}/{self._sid(session_id)}", params=self._params(), subject=subject)
        return self._parse(WireSession, data, "get session")

    async def update_title(self, session_id: str, title: str, *, subject: str) -> WireSession | None:
        """``PATCH /api/v0/sessions/{id}`` with ``{"title": ...}`` (idempotent: same body, same result)."""
        self._need_key()
        data = await self.api.json(
            "PATCH", f"{API}/{self._sid(session_id)}", json={"title": title}, idempotent=True, subject=subject
        )
        return self._parse(WireSession, data, "update session") if isinstance(data, dict) and data else None

    async def delete_session(self, session_id: str, *, subject: str) -> None:
        """``DELETE /api/v0/sessions/{id}`` (soft delete; afterwards 404 everywhere)."""
        self._need_key()
        await self.api.request("DELETE", f"{API}/{self._sid(session_id)}", params=self._params(), subject=subject)

    async def interrupt(self, session_id: str, *, subject: str) -> None:
        """``POST /api/v0/sessions/{id}/interrupt`` (documented idempotent, so retried)."""
        self._need_key()
        await self.api.request("POST", f"{API}/{self._sid(session_id)}/interrupt", idempotent=True, subject=subject)

    # --- messages ---------------------------------------------------------------------------

    async def post_message(self, session_id: str, text: str, *, subject: str) -> PostedMessage:
        """``POST /api/v0/sessions/{id}/messages`` with ``{"text": ...}``; never replayed."""
        self._need_key()
        body: dict[str, Any] = {"text": text}
        data = await self.api.json("POST", f"{API}/{self._sid(session_id)}/messages", json=body, subject=subject)
        return self._parse(PostedMessage, data, "post message")

    async def list_messages(self, session_id: str, *, limit: int, cursor: str | None, subject: str) -> MessageList:
        """``GET /api/v0/sessions/{id}/messages`` (one page, oldest first)."""
        self._need_key()
        params = self._params(limit=str(max(1, min(limit, PAGE_MAX))), cursor=cursor)
        data = await self.api.json("GET", f"{API}/{self._sid(session_id)}/messages", params=params, subject=subject)
        return self._parse(MessageList, data, "list messages")
