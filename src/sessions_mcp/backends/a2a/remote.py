"""One remote agent: its card (cached), an ``a2a-sdk`` client for the interface the card names,
the bearer token scoped to the agent's own origin, and one function that turns every failure
into this server's error tree, naming the setting to fix."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from contextlib import aclosing
from dataclasses import dataclass
from typing import cast

import httpx
from a2a.client import (
    A2ACardResolver,
    A2AClientError,
    A2AClientTimeoutError,
    AgentCardResolutionError,
    Client,
    ClientConfig,
    ClientFactory,
)
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
)
from a2a.utils.errors import A2AError, TaskNotCancelableError, TaskNotFoundError

from ...errors import AuthError, BackendError, ConfigError, ProtocolError, SessionsError, Unavailable
from .config import AGENTS, TOKENS, AgentConfig, origin_of
from .mapping import Event, TaskView, event_view, task_view

log = logging.getLogger(__name__)

BINDINGS = ["JSONRPC", "HTTP+JSON"]
"""The protocol bindings this server speaks, in order of preference (gRPC is not installed)."""


class _OriginBearer(httpx.Auth):
    """Adds the agent's token to requests for the agent's own origin, and to nothing else."""

    def __init__(self, origin: str, token: str) -> None:
        self.origin = origin
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin_of(str(request.url)) == self.origin:
            request.headers["Authorization"] = self._header
        yield request


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What the card says, in neutral terms."""

    name: str
    streaming: bool
    binding: str
    version: str
    url: str
    needs_auth: bool
    schemes: list[str]


class AgentLink:
    """Talks to one configured agent through ``a2a-sdk``."""

    def __init__(self, agent: AgentConfig, *, timeout_s: float, card_ttl_s: float) -> None:
        self.agent = agent
        self.card_ttl_s = card_ttl_s
        auth = _OriginBearer(agent.origin, agent.token.get_secret_value()) if agent.token is not None else None
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)), auth=auth)
        self.timeout_s = timeout_s
        self._card: AgentCard | None = None
        self._card_at = 0.0
        self._client: Client | None = None
        self.facts: CardFacts | None = None

    async def aclose(self) -> None:
        """Close the HTTP client (and with it every SDK client built on it)."""
        await self.http.aclose()

    # --- the card -------------------------------------------------------------------------

    async def card(self, *, fresh: bool = False) -> CardFacts:
        """The agent's card (cached ``card_ttl_s``); raises a clear :class:`SessionsError`."""
        now = time.monotonic()
        if self._card is not None and self.facts is not None and not fresh and now - self._card_at < self.card_ttl_s:
            return self.facts
        try:
            card = await A2ACardResolver(self.http, self.agent.url).get_agent_card()
            client = ClientFactory(
                ClientConfig(streaming=True, polling=True, httpx_client=self.http, supported_protocol_bindings=BINDINGS)
            ).create(card)
        except Exception as exc:
            raise self.translate(exc, "reading the agent card") from None
        facts = _facts(card)
        if facts.needs_auth and self.agent.token is None:
            raise ConfigError(
                f"A2A agent {self.agent.name!r} requires authentication ({', '.join(facts.schemes) or 'per its card'}); "
                f"set {TOKENS}={self.agent.name}=<token>"
            )
        self._card, self._card_at, self._client, self.facts = card, now, client, facts
        return facts

    async def _sdk(self) -> Client:
        await self.card()
        assert self._client is not None
        return self._client

    # --- calls ----------------------------------------------------------------------------

    async def send(
        self, text: str, *, message_id: str, context_id: str | None, task_id: str | None
    ) -> AsyncGenerator[Event, None]:
        """SendMessage (streamed when the card streams); yields the events as neutral values."""
        client = await self._sdk()
        msg = Message(
            role=Role.ROLE_USER, message_id=message_id, parts=[Part(text=text)],
            context_id=context_id or "", task_id=task_id or "",
        )  # fmt: skip
        req = SendMessageRequest(
            message=msg, configuration=SendMessageConfiguration(accepted_output_modes=[], return_immediately=True)
        )
        try:
            async with aclosing(_gen(client.send_message(req))) as stream:
                async for ev in stream:
                    yield self._event(ev)
        except SessionsError:
            raise
        except Exception as exc:
            raise self.translate(exc, "sending the message") from None

    async def subscribe(self, task_id: str) -> AsyncGenerator[Event, None]:
        """SubscribeToTask: the live events of a task that is still running."""
        client = await self._sdk()
        try:
            async with aclosing(_gen(client.subscribe(SubscribeToTaskRequest(id=task_id)))) as stream:
                async for ev in stream:
                    yield self._event(ev)
        except SessionsError:
            raise
        except Exception as exc:
            raise self.translate(exc, f"following task {task_id}") from None

    async def get_task(self, task_id: str, *, doing: str = "") -> TaskView:
        """GetTask."""
        client = await self._sdk()
        try:
            return task_view(await client.get_task(GetTaskRequest(id=task_id)))
        except Exception as exc:
            raise self.translate(exc, doing or f"reading task {task_id}") from None

    async def cancel(self, task_id: str) -> bool:
        """CancelTask; False when the task had already ended (not cancelable)."""
        client = await self._sdk()
        try:
            await client.cancel_task(CancelTaskRequest(id=task_id))
        except TaskNotCancelableError:
            return False
        except Exception as exc:
            raise self.translate(exc, f"cancelling task {task_id}") from None
        return True

    def _event(self, ev: object) -> Event:
        try:
            return event_view(ev)  # type: ignore[arg-type]
        except Exception as exc:
            raise ProtocolError(
                f"A2A agent {self.agent.name!r} sent an event this server cannot read ({exc}); "
                "the agent may not follow A2A 1.0/0.3"
            ) from None

    # --- errors ---------------------------------------------------------------------------

    def translate(self, exc: BaseException, doing: str) -> SessionsError:
        """One place that turns SDK and HTTP failures into clear errors naming the setting."""
        if isinstance(exc, SessionsError):
            return exc
        name, url = self.agent.name, self.agent.url
        where = f"A2A agent {name!r} ({url})"
        status = _http_status(exc)
        if status in (401, 403):
            fix = (
                f"check the token for {name!r} in {TOKENS}"
                if self.agent.token is not None
                else f"set {TOKENS}={name}=<token>"
            )
            return AuthError(f"{where} refused our credentials (HTTP {status}) while {doing}; {fix}", status=status)
        if isinstance(exc, A2AClientTimeoutError) or _caused_by(exc, httpx.TimeoutException):
            return Unavailable(
                f"{where} did not answer within SESSIONS_MCP_A2A__TIMEOUT_S ({self.timeout_s:g}s) while {doing}"
            )
        if status is not None and status >= 500:
            return Unavailable(
                f"{where} failed on its side (HTTP {status}) while {doing}; try again later", status=status
            )
        if _caused_by(exc, httpx.RequestError):
            return Unavailable(f"cannot reach {where} while {doing}; check {AGENTS} and that the agent is running")
        if status is not None:
            return BackendError(f"{where} answered HTTP {status} while {doing}; check {AGENTS}", status=status)
        if isinstance(exc, AgentCardResolutionError):
            return ProtocolError(
                f"{where} serves no readable agent card at /.well-known/agent-card.json ({_short(exc)}); "
                f"check that {AGENTS} names the agent's base URL"
            )
        if isinstance(exc, ValueError) and "transport" in str(exc):
            return ProtocolError(f"the card of {where} offers no JSON-RPC or HTTP+JSON interface this server speaks")
        if isinstance(exc, TaskNotFoundError):
            return BackendError(
                f"{where} no longer knows the task while {doing} (it may have restarted); send the message again"
            )
        if isinstance(exc, A2AError | A2AClientError):
            return BackendError(f"{where} answered an error while {doing}: {_short(exc)}")
        log.debug("unexpected A2A failure", exc_info=exc)
        return ProtocolError(f"{where} answered something this server cannot read while {doing}: {_short(exc)}")


def _gen(stream: AsyncIterator[StreamResponse]) -> AsyncGenerator[StreamResponse, None]:
    # the SDK's streams are async generators typed as iterators; closing them ourselves ends the HTTP
    # stream in the task that opened it (left to the garbage collector, it ends in another context)
    return cast("AsyncGenerator[StreamResponse, None]", stream)


def new_message_id() -> str:
    """A fresh A2A messageId."""
    return str(uuid.uuid4())


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _http_status(exc: BaseException) -> int | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.HTTPStatusError):
            return seen.response.status_code
        code = getattr(seen, "status_code", None)
        if isinstance(code, int):
            return code
        seen = seen.__cause__ or seen.__context__
    return None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _facts(card: AgentCard) -> CardFacts:
    # the SDK's factory picks the first binding of the card we speak, then A2A 1.0 over older versions
    ifaces = [i for i in card.supported_interfaces if i.protocol_binding in BINDINGS]
    binding = ifaces[0].protocol_binding if ifaces else "JSONRPC"
    same = [i for i in ifaces if i.protocol_binding == binding]
    best = next((i for i in same if i.protocol_version.startswith("1.0")), same[0] if same else None)
    version = (best.protocol_version or "1.0") if best is not None else "1.0"
    schemes: list[str] = []
    for req in card.security_requirements:
        for scheme_name in req.schemes:
            scheme = card.security_schemes.get(scheme_name)
            kind = scheme.WhichOneof("scheme") if scheme is not None else None
            if kind == "http_auth_security_scheme" and scheme is not None:
                schemes.append(f"{scheme_name}: HTTP {scheme.http_auth_security_scheme.scheme or 'bearer'}")
            else:
                schemes.append(f"{scheme_name}: {kind or 'unknown'}")
    return CardFacts(
        name=card.name, streaming=card.capabilities.streaming, binding=binding, version=version,
        url=best.url if best is not None else "", needs_auth=bool(card.security_requirements), schemes=schemes,
    )  # fmt: skip
