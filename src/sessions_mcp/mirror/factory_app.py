"""The Factory web app's session endpoints, exactly as the seed captured them (unofficial).

``docs/SESSION-APIS.md`` §1B: this is Factory's internal web/CLI sync API, used here only to
*mirror* local sessions into the web app. Shapes:

- ``POST /api/sessions/create`` JSON ``{"id", "title", "isStarted": false, "machineConnectionType": "tui"}``
- ``POST /api/sessions/{id}/update-title`` JSON ``{"title"}``
- ``POST /api/sessions/{id}/message/user/create`` multipart form: ``draftMessage`` (JSON message),
  ``images`` (``[]``), ``existingImages`` (``[]``)
- ``POST /api/sessions/{id}/message/assistant/create``: the request was not captured; ASSUMPTION:
  the same multipart form as the user message, with ``role: "assistant"``.

A draft message is ``{"id", "role", "contents": [{"type": "text", "text", "isInvisible": false}],
"parent", "tokens": 0}``; ``parent`` is ``"root"`` or the previous message's id. Ids are the
local ones, so a repeated create answers 409 and is treated as done (no duplicates).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx2

from .._http import HttpApi, HttpConfig, Redactor, RetryPolicy, create_client, standard_errors
from ..errors import BackendError

SERVICE = "Factory web app"
CREDENTIAL = "SESSIONS_MCP_FACTORY_APP__TOKEN"


class FactoryAppClient:
    """Calls of the seed's web-app API (each at most once past the network: the outbox retries)."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None,
        transport: httpx2.AsyncBaseTransport | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.redact = Redactor([token])
        self.api = HttpApi(
            create_client(
                HttpConfig(base_url=base_url, headers=headers, read_timeout_s=timeout_s), transport=transport
            ),
            service=SERVICE,
            map_error=standard_errors(
                SERVICE, credential=CREDENTIAL, base_url_setting="SESSIONS_MCP_FACTORY_APP__BASE_URL"
            ),
            redactor=self.redact,
            policy=RetryPolicy(attempts=2, budget_s=15.0),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()

    @staticmethod
    def _path(session_id: str, tail: str) -> str:
        return f"/api/sessions/{quote(session_id, safe='')}/{tail}"

    async def _post(self, path: str, **kwargs: Any) -> Any:
        try:
            return await self.api.json("POST", path, **kwargs)
        except BackendError as exc:
            if exc.status == 409:
                return None  # already there: an earlier attempt landed
            raise

    async def create_session(self, session_id: str, title: str) -> None:
        """Create the web-app session with the local id."""
        body = {"id": session_id, "title": title, "isStarted": False, "machineConnectionType": "tui"}
        await self._post("/api/sessions/create", json=body)

    async def update_title(self, session_id: str, title: str) -> None:
        """Set the title (idempotent: the same title twice is the same state)."""
        await self.api.json("POST", self._path(session_id, "update-title"), json={"title": title}, idempotent=True)

    async def create_message(self, session_id: str, *, role: str, message_id: str, text: str, parent: str) -> None:
        """Create a user or assistant message as the multipart ``draftMessage`` form."""
        draft = {
            "id": message_id,
            "role": role,
            "contents": [{"type": "text", "text": text, "isInvisible": False}],
            "parent": parent,
            "tokens": 0,
        }
        files = {
            "draftMessage": (None, json.dumps(draft)),
            "images": (None, "[]"),
            "existingImages": (None, "[]"),
        }
        await self._post(self._path(session_id, f"message/{role}/create"), files=files)
