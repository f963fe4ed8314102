"""HTTP security: DNS rebinding (Host/Origin), binding, bearer tokens, JWTs, 401/403, limits, session binding."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mcp.server import transport_security as ts_module
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from sessions_mcp.auth import StaticTokenVerifier, build_auth, normalize_resource, parse_token_pairs
from sessions_mcp.errors import ConfigError
from sessions_mcp.http_app import create_app, is_loopback
from sessions_mcp.settings import Settings

from .conftest import server_command, server_env
from .emulators.factory import Served
from .http_support import ALICE, BOB, INIT, JSON_HEADERS, TOKENS, auth_headers, mcp_client, ok, serve

pytestmark = pytest.mark.anyio

PUBLIC_URL = "http://127.0.0.1:8765/mcp"
ISSUER = "https://idp.example.com"
EVIL = "evil.example.com"


# ---------------------------------------------------------------- DNS rebinding, every way the app is built

BUILDS: dict[str, dict[str, Any]] = {
    "default-loopback": {},
    "localhost-name": {"host": "localhost"},
    "stateless": {"stateless": True},
    "all-interfaces-with-auth": {
        "host": "0.0.0.0",
        "tokens": TOKENS,
        "allowed_hosts": "mcp.example.com,mcp.example.com:*",
        "allowed_origins": "https://app.example.com",
        "public_url": "https://mcp.example.com/mcp",
    },
    "public-url-names-the-host": {
        "host": "0.0.0.0",
        "tokens": TOKENS,
        "public_url": "https://sessions.example.org/mcp",
    },
}
EXTRA_ACCEPTED: dict[str, list[dict[str, str]]] = {
    "all-interfaces-with-auth": [{"host": "mcp.example.com"}, {"origin": "https://app.example.com"}],
    "public-url-names-the-host": [{"host": "sessions.example.org"}, {"origin": "https://sessions.example.org"}],
}


def _headers(build: str, host: str | None = None, origin: str | None = None) -> dict[str, str]:
    h = dict(JSON_HEADERS)
    if "tokens" in BUILDS[build]:
        h |= auth_headers(ALICE)
    if host is not None:
        h["Host"] = host
    if origin is not None:
        h["Origin"] = origin
    return h


@pytest.mark.parametrize("build", list(BUILDS))
async def test_bad_host_and_origin_matrix(make_settings: Callable[..., Settings], build: str) -> None:
    async with serve(make_settings(http=dict(BUILDS[build]))) as served, httpx2.AsyncClient() as http:
        port = served.port
        rejected = [
            ("POST", "/mcp", {"host": EVIL}, 421),
            ("POST", "/mcp", {"host": f"{EVIL}:{port}"}, 421),
            ("POST", "/mcp", {"host": f"127.0.0.1.{EVIL}:{port}"}, 421),
            ("POST", "/mcp", {"origin": f"http://{EVIL}"}, 403),
            ("POST", "/mcp", {"origin": f"http://{EVIL}:{port}"}, 403),
            ("POST", "/mcp", {"origin": "null"}, 403),
            ("POST", "/mcp", {"origin": f"http://localhost.{EVIL}:{port}"}, 403),
            ("POST", "/mcp", {"host": EVIL, "origin": f"http://{EVIL}"}, 421),
            ("GET", "/mcp", {"host": EVIL}, 421),
            ("DELETE", "/mcp", {"origin": f"http://{EVIL}"}, 403),
            ("GET", "/sse", {"host": EVIL}, 421),
            ("GET", "/sse", {"origin": f"https://{EVIL}"}, 403),
            ("POST", "/messages/?session_id=0123456789abcdef0123456789abcdef", {"host": EVIL}, 421),
            ("GET", "/.well-known/oauth-protected-resource/mcp", {"host": EVIL}, 421),
        ]
        for method, path, bad, status in rejected:
            r = await http.request(
                method,
                f"{served.url}{path}",
                headers=_headers(build, bad.get("host"), bad.get("origin")),
                content=json.dumps(INIT),
            )
            assert r.status_code == status, (method, path, bad, r.status_code, r.text)
        accepted = [
            {"host": f"127.0.0.1:{port}"},
            {"host": f"localhost:{port}"},
            {"host": "localhost"},  # a proxy on port 80 sends no port
            {"host": "127.0.0.1"},
            {"host": f"[::1]:{port}"},
            {"origin": f"http://localhost:{port}"},
            {"origin": f"http://127.0.0.1:{port}"},
        ]
        accepted += EXTRA_ACCEPTED.get(build, [])
        for good in accepted:
            r = await http.post(
                f"{served.url}/mcp", headers=_headers(build, good.get("host"), good.get("origin")), json=INIT
            )
            assert r.status_code == 200, (good, r.status_code, r.text)
        if build not in EXTRA_ACCEPTED:  # a host allowed elsewhere is not allowed here
            r = await http.post(f"{served.url}/mcp", headers=_headers(build, "mcp.example.com"), json=INIT)
            assert r.status_code == 421


async def test_a_remembered_good_host_still_gets_every_other_check(make_settings: Callable[..., Settings]) -> None:
    """The guard remembers accepted (Host, Origin) pairs; the same pair with a token in the URL, a
    body over the limit or another Origin is still refused, every time."""
    async with serve(make_settings(http={"max_body_bytes": 4096})) as served, httpx2.AsyncClient() as http:
        port = served.url.rsplit(":", 1)[1]
        good = {"host": f"127.0.0.1:{port}", "origin": f"http://127.0.0.1:{port}"}
        for _ in range(3):
            r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS | good, json=INIT)
            assert r.status_code == 200, r.text
            r = await http.post(f"{served.url}/mcp?access_token=abc", headers=JSON_HEADERS | good, json=INIT)
            assert r.status_code == 401, r.text
            big = json.dumps(INIT | {"pad": "x" * 5000})
            r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS | good, content=big)
            assert r.status_code == 413, r.text
            r = await http.post(
                f"{served.url}/mcp", headers=JSON_HEADERS | good | {"origin": f"http://{EVIL}"}, json=INIT
            )
            assert r.status_code == 403, r.text
            r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS | good | {"host": EVIL}, json=INIT)
            assert r.status_code == 421, r.text


async def test_no_transport_security_is_ever_built_without_settings(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's TransportSecurityMiddleware(settings=None) means protection OFF; no code path may do that."""
    built_with: list[Any] = []
    original = ts_module.TransportSecurityMiddleware.__init__

    def recording_init(self: Any, settings: Any = None) -> None:
        built_with.append(settings)
        original(self, settings)

    monkeypatch.setattr(ts_module.TransportSecurityMiddleware, "__init__", recording_init)
    for build in BUILDS.values():
        async with serve(make_settings(http=dict(build))) as served, httpx2.AsyncClient() as http:
            headers = JSON_HEADERS | (auth_headers(ALICE) if "tokens" in build else {})
            r = await http.post(f"{served.url}/mcp", headers=headers, json=INIT)
            assert r.status_code == 200
            async with mcp_client(served.url, "sse", "legacy", token=ALICE if "tokens" in build else None) as c:
                await c.list_tools()
    assert len(built_with) >= 3 * len(BUILDS)
    assert all(s is not None and s.enable_dns_rebinding_protection for s in built_with), built_with


# ---------------------------------------------------------------- binding beyond loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_non_loopback_bind_refused_without_auth(make_settings: Callable[..., Settings], host: str) -> None:
    with pytest.raises(ConfigError) as err:
        create_app(make_settings(http={"host": host}))
    assert "SESSIONS_MCP_HTTP__TOKENS" in str(err.value) and "JWKS_URL" in str(err.value)
    create_app(make_settings(http={"host": host, "tokens": TOKENS}))  # with auth it builds


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_auth(host: str) -> None:
    assert is_loopback(host)


def test_cli_refuses_all_interfaces_without_auth(tmp_path: Path) -> None:
    r = subprocess.run(
        [*server_command(), "--transport", "http", "--host", "0.0.0.0", "--port", "0"],
        env=server_env(tmp_path / "s.db"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "refusing to serve on '0.0.0.0' without authentication" in r.stderr
    assert "SESSIONS_MCP_HTTP__TOKENS" in r.stderr
    assert "serving streamable HTTP" not in r.stderr and r.stdout == ""


# ---------------------------------------------------------------- static tokens, 401, metadata


async def test_static_tokens_401_and_protected_resource_metadata(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(http={"tokens": TOKENS, "public_url": PUBLIC_URL})
    async with serve(settings) as served, httpx2.AsyncClient() as http:
        metadata_url = "http://127.0.0.1:8765/.well-known/oauth-protected-resource/mcp"
        for headers in ({}, auth_headers("wrong-token-0123456789abcdef"), {"Authorization": f"Basic {ALICE}"}):
            r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS | headers, json=INIT)
            assert r.status_code == 401
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith("Bearer ") and f'resource_metadata="{metadata_url}"' in challenge
            assert 'error="invalid_token"' in challenge
        for path in ("/sse", "/messages/?session_id=0123456789abcdef0123456789abcdef"):
            r = await http.request("GET" if path == "/sse" else "POST", f"{served.url}{path}", json=INIT)
            assert r.status_code == 401, path
        r = await http.get(f"{served.url}/.well-known/oauth-protected-resource/mcp")
        assert r.status_code == 200
        prm = r.json()
        assert prm["resource"] == PUBLIC_URL and prm["authorization_servers"]
        for token in (ALICE, BOB):
            r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS | auth_headers(token), json=INIT)
            assert r.status_code == 200


async def test_token_in_query_string_is_refused(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(http={"tokens": TOKENS})) as served, httpx2.AsyncClient() as http:
        for query in (f"access_token={ALICE}", f"token={ALICE}"):
            r = await http.post(f"{served.url}/mcp?{query}", headers=JSON_HEADERS | auth_headers(ALICE), json=INIT)
            assert r.status_code == 401 and ALICE not in r.text


def test_token_configuration_errors_never_echo_tokens(tmp_path: Path) -> None:
    short = "alice=short"
    with pytest.raises(ConfigError) as err:
        parse_token_pairs(short, source="SESSIONS_MCP_HTTP__TOKENS")
    assert "short" not in str(err.value).replace("shorter", "") and "alice" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_token_pairs("just-a-token-without-principal", source="SESSIONS_MCP_HTTP__TOKENS")
    assert "without-principal" not in str(err.value)
    same = "x" * 20
    with pytest.raises(ConfigError, match="same token"):
        StaticTokenVerifier([("a", same), ("b", same)])
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# who=token\nalice={ALICE}\n\nbob = {BOB}\n")
    from sessions_mcp.settings import HttpSettings

    auth = build_auth(HttpSettings(tokens_file=str(tokens_file)))
    assert auth is not None and sorted(auth.static_tokens) == sorted([ALICE, BOB])


async def test_static_verifier_maps_tokens_and_hides_them() -> None:
    verifier = StaticTokenVerifier(parse_token_pairs(TOKENS, source="t"))
    alice = await verifier.verify_token(ALICE)
    assert alice is not None and alice.subject == "alice" and alice.token != ALICE
    assert await verifier.verify_token(ALICE[:-1]) is None
    assert await verifier.verify_token(ALICE + "x") is None
    assert await verifier.verify_token("") is None


# ---------------------------------------------------------------- JWT


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = ed25519.Ed25519PrivateKey.generate()

    @staticmethod
    def pem(private: Any) -> str:
        return (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def token(self, key: Any = None, alg: str = "RS256", kid: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": ISSUER, "aud": PUBLIC_URL, "sub": "carol", "iat": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.rsa, algorithm=alg, headers={"kid": kid} if kid else None)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


async def _status(http: httpx2.AsyncClient, url: str, token: str) -> int:
    r = await http.post(f"{url}/mcp", headers=JSON_HEADERS | auth_headers(token), json=INIT)
    return r.status_code


async def test_jwt_with_public_key_pem(make_settings: Callable[..., Settings], keys: Keys, tmp_path: Path) -> None:
    key_file = tmp_path / "jwt.pem"
    key_file.write_text(Keys.pem(keys.rsa))
    settings = make_settings(
        http={
            "jwt_public_key": str(key_file),
            "jwt_issuer": ISSUER,
            "jwt_audience": PUBLIC_URL,
            "required_scopes": "sessions",
            "tokens": TOKENS,
        }
    )
    now = int(time.time())
    public_pem = Keys.pem(keys.rsa)
    async with serve(settings) as served, httpx2.AsyncClient() as http:
        url = served.url
        assert await _status(http, url, keys.token(scope="sessions other")) == 200
        assert await _status(http, url, keys.token(scope="sessions", aud="HTTP://127.0.0.1:8765/mcp/")) == 200
        assert await _status(http, url, keys.token(scope="sessions", aud=["https://x.example", PUBLIC_URL])) == 200
        assert await _status(http, url, keys.token(scp=["sessions"])) == 200
        assert await _status(http, url, ALICE) == 200  # static tokens are granted the required scopes
        # 403, not 401, for a valid token without the scope
        r = await http.post(f"{url}/mcp", headers=JSON_HEADERS | auth_headers(keys.token(scope="read")), json=INIT)
        assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["www-authenticate"]
        bad = {
            "expired": keys.token(scope="sessions", exp=now - 120, iat=now - 600),
            "no exp": keys.token(scope="sessions", exp=None),
            "not yet valid": keys.token(scope="sessions", nbf=now + 600),
            "other audience": keys.token(scope="sessions", aud="https://other.example/mcp"),
            "no audience": keys.token(scope="sessions", aud=None),
            "other issuer": keys.token(scope="sessions", iss="https://evil.example"),
            "no subject": keys.token(scope="sessions", sub=None),
            "other key": keys.token(keys.other, scope="sessions"),
            "ed25519 key": keys.token(keys.ed, alg="EdDSA", scope="sessions"),
            "hs256 with the public key as secret": jwt.encode(
                {"iss": ISSUER, "aud": PUBLIC_URL, "sub": "carol", "exp": now + 300, "scope": "sessions"},
                public_pem.encode()[:64],
                algorithm="HS256",
            ),
            "alg none": jwt.encode(
                {"iss": ISSUER, "aud": PUBLIC_URL, "sub": "carol", "exp": now + 300}, None, algorithm="none"
            ),
            "garbage": "a.b.c",
        }
        for why, token in bad.items():
            assert await _status(http, url, token) == 401, why
        # the principal is the JWT's sub
        async with mcp_client(url, "http", "auto", token=keys.token(scope="sessions")) as c:
            sid = (await ok(c, "create_session", title="jwt"))["session"]["id"]
        page = await served.built.runtime.service.list_sessions(
            "carol", backend=None, status=None, query=None, cursor=None, limit=5
        )
        assert [s.id for s in page.sessions] == [sid]


@pytest.fixture
def jwks(keys: Keys) -> Iterator[tuple[str, list[int]]]:
    from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(keys.rsa.public_key())) | {"kid": "k-rsa", "alg": "RS256", "use": "sig"}
    ed_jwk = json.loads(OKPAlgorithm.to_jwk(keys.ed.public_key())) | {"kid": "k-ed", "use": "sig"}
    fetches: list[int] = []

    async def serve_jwks(_: Any) -> JSONResponse:
        fetches.append(1)
        return JSONResponse({"keys": [rsa_jwk, ed_jwk]})

    with Served(Starlette(routes=[Route("/jwks.json", serve_jwks)])) as served:
        yield f"{served.url}/jwks.json", fetches


async def test_jwt_with_jwks_url(
    make_settings: Callable[..., Settings], keys: Keys, jwks: tuple[str, list[int]]
) -> None:
    url_jwks, fetches = jwks
    settings = make_settings(http={"jwks_url": url_jwks, "jwt_issuer": ISSUER, "public_url": PUBLIC_URL})
    async with serve(settings) as served, httpx2.AsyncClient() as http:
        url = served.url
        assert await _status(http, url, keys.token(kid="k-rsa")) == 200
        assert await _status(http, url, keys.token(keys.ed, alg="EdDSA", kid="k-ed")) == 200
        assert await _status(http, url, keys.token(keys.ed, alg="EdDSA", kid="k-rsa")) == 401  # key/alg mismatch
        assert await _status(http, url, keys.token(keys.other, kid="k-rsa")) == 401
        assert await _status(http, url, keys.token(kid="unknown")) == 401
        assert await _status(http, url, keys.token(kid="unknown")) == 401
        assert len(fetches) == 1  # cached; an unknown kid does not refetch more than every 30 s


def test_jwt_configuration_errors() -> None:
    from sessions_mcp.settings import HttpSettings

    with pytest.raises(ConfigError, match="JWT_AUDIENCE"):
        build_auth(HttpSettings(jwks_url="https://idp.example.com/jwks"))
    with pytest.raises(ConfigError, match="https"):
        build_auth(HttpSettings(jwks_url="http://idp.example.com/jwks", jwt_audience=PUBLIC_URL))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        build_auth(HttpSettings(jwt_public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----",
                                jwt_audience=PUBLIC_URL))  # fmt: skip
    with pytest.raises(ConfigError, match="no key"):
        build_auth(HttpSettings(jwt_issuer=ISSUER))
    assert normalize_resource("HTTPS://MCP.Example.com:443/mcp/") == "https://mcp.example.com/mcp"


# ---------------------------------------------------------------- limits


async def test_request_size_and_content_type_limits(make_settings: Callable[..., Settings]) -> None:
    limit = 20_000
    async with serve(make_settings(http={"max_body_bytes": limit})) as served, httpx2.AsyncClient() as http:
        big = {**INIT, "params": {**INIT["params"], "padding": "x" * (limit * 2)}}
        body = json.dumps(big).encode()
        r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS, content=body)
        assert r.status_code == 413

        async def chunks() -> Any:  # no Content-Length: the transports' own limit applies
            for i in range(0, len(body), 4096):
                yield body[i : i + 4096]

        r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS, content=chunks())
        assert r.status_code == 413
        r = await http.post(
            f"{served.url}/messages/?session_id=0123456789abcdef0123456789abcdef", headers=JSON_HEADERS, content=body
        )
        assert r.status_code == 413
        r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS | {"Content-Type": "text/plain"}, json=INIT)
        assert r.status_code == 400
        # still healthy and serving
        assert (await http.get(f"{served.url}/healthz")).status_code == 200
        async with mcp_client(served.url, "http", "legacy") as c:
            await ok(c, "list_sessions")


# ---------------------------------------------------------------- protocol sessions bound to the principal


async def test_protocol_session_of_one_principal_is_404_for_another(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(http={"tokens": TOKENS})) as served, httpx2.AsyncClient() as http:
        r = await http.post(f"{served.url}/mcp", headers=JSON_HEADERS | auth_headers(ALICE), json=INIT)
        session = r.headers["mcp-session-id"]
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        common = JSON_HEADERS | {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        r = await http.post(f"{served.url}/mcp", headers=common | auth_headers(BOB), json=ping)
        assert r.status_code == 404
        r = await http.post(f"{served.url}/mcp", headers=common | auth_headers(ALICE), json=ping)
        assert r.status_code == 200


async def test_sse_session_of_one_principal_refused_for_another(make_settings: Callable[..., Settings]) -> None:
    async with (
        serve(make_settings(http={"tokens": TOKENS})) as served,
        httpx2.AsyncClient(timeout=10) as http,
        http.stream("GET", f"{served.url}/sse", headers=auth_headers(ALICE)) as stream,
    ):
        endpoint = ""
        with anyio.fail_after(10):
            async for line in stream.aiter_lines():
                if line.startswith("data:") and "session_id=" in line:
                    endpoint = line.removeprefix("data:").strip()
                    break
        assert endpoint.startswith("/messages/")
        r = await http.post(f"{served.url}{endpoint}", headers=JSON_HEADERS | auth_headers(BOB), json=INIT)
        assert r.status_code == 404  # exactly like an unknown session
        r = await http.post(f"{served.url}{endpoint}", headers=JSON_HEADERS | auth_headers(ALICE), json=INIT)
        assert r.status_code == 202
