"""Authentication for the HTTP transports: static bearer tokens and JWTs.

Both verifiers implement the SDK's ``TokenVerifier`` protocol, so the SDK's bearer middleware
answers 401 (no or bad token, with ``WWW-Authenticate: Bearer … resource_metadata=…``) and 403
(``insufficient_scope``), serves the RFC 9728 protected-resource metadata and binds protocol
sessions to the principal that opened them. The principal is the name a static token is mapped
to, or a JWT's ``sub``; :func:`sessions_mcp.principal.current_principal` reads it back.

The ``AccessToken`` handed to the SDK never carries the bearer token itself (``token`` is a
placeholder), so nothing downstream (tools, backends, logs) can forward or print it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings

from .errors import ConfigError
from .settings import HttpSettings

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
"""What the SDK's ``AccessToken.token`` holds instead of the bearer token."""

MIN_TOKEN_LENGTH = 16
STATIC_ISSUER = "sessions-mcp:static-token"
_PRINCIPAL = re.compile(r"^[A-Za-z0-9._@:+/-]{1,200}$")
JWKS_TTL_S = 600.0
JWKS_MIN_REFRESH_S = 30.0
JWT_LEEWAY_S = 30


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class StaticToken:
    """One configured ``principal=token`` pair (the token kept only as a digest)."""

    principal: str
    digest: bytes


def parse_token_pairs(text: str, *, source: str) -> list[tuple[str, str]]:
    """Parse ``principal=token`` entries separated by commas or newlines; ``#`` starts a comment line.

    ``source`` names the setting in error messages, which never contain a token.
    """
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        principal, sep, token = entry.partition("=")
        principal, token = principal.strip(), token.strip()
        if not sep or not principal or not token:
            raise ConfigError(
                f"{source}: entry {number} is not 'principal=token'; write one principal=token pair per entry"
            )
        if not _PRINCIPAL.match(principal):
            raise ConfigError(f"{source}: principal {principal[:40]!r} may only use letters, digits and . _ @ : + / -")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"{source}: the token of principal {principal!r} is shorter than {MIN_TOKEN_LENGTH} characters; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        pairs.append((principal, token))
    return pairs


class StaticTokenVerifier:
    """Bearer tokens from configuration, each mapped to a principal.

    Every configured token is compared (as a SHA-256 digest, with :func:`hmac.compare_digest`)
    on every request, so timing reveals neither which token matched nor how much of it.
    """

    def __init__(self, pairs: list[tuple[str, str]], *, scopes: list[str] | None = None) -> None:
        seen: dict[bytes, str] = {}
        for principal, token in pairs:
            digest = _digest(token)
            if digest in seen and seen[digest] != principal:
                raise ConfigError(
                    f"the same token is configured for principals {seen[digest]!r} and {principal!r}; "
                    "give every principal its own token (SESSIONS_MCP_HTTP__TOKENS / __TOKENS_FILE)"
                )
            seen[digest] = principal
        self.tokens = [StaticToken(p, d) for d, p in seen.items()]
        self.scopes = list(scopes or [])

    @property
    def principals(self) -> list[str]:
        """The configured principal names."""
        return sorted({t.principal for t in self.tokens})

    async def verify_token(self, token: str) -> AccessToken | None:
        """The principal's access token, or ``None`` for an unknown token."""
        digest = _digest(token)
        found: str | None = None
        for entry in self.tokens:  # no early exit: constant work whatever matches
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry.principal
        if found is None:
            return None
        return AccessToken(
            token=REDACTED,
            client_id=found,
            scopes=list(self.scopes),
            subject=found,
            claims={"iss": STATIC_ISSUER},
        )


def normalize_resource(url: str) -> str:
    """Canonical form of a resource URI for audience comparison: scheme and host lower-cased,
    default port dropped, trailing slash ignored (the spec says servers SHOULD accept those variants)."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return url.strip().rstrip("/")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and not ((scheme == "https" and port == 443) or (scheme == "http" and port == 80)):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}{path}{query}"


def _read_text_or_path(value: str, *, setting: str) -> str:
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text
    path = Path(text).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{setting}: not PEM text and not a readable file ({exc.strerror or exc}); "
            "give the PEM public key itself or the path of a .pem file"
        ) from None


_KEY_ALGORITHMS = {
    "RSA": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
    "EC": ["ES256", "ES384", "ES512"],
    "OKP": ["EdDSA"],
}


def _algorithms_for_key(key: Any) -> list[str]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return _KEY_ALGORITHMS["RSA"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _KEY_ALGORITHMS["EC"]
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return _KEY_ALGORITHMS["OKP"]
    raise ConfigError("SESSIONS_MCP_HTTP__JWT_PUBLIC_KEY: unsupported key type; use an RSA, EC or Ed25519 public key")


class JwtTokenVerifier:
    """JWTs signed with asymmetric keys: a configured public key, or keys from a JWKS URL.

    Checks signature, ``exp`` (required), ``nbf``, ``iss`` (when configured) and ``aud``
    (required; compared as resource URIs) and requires ``sub``, which becomes the principal.
    Symmetric algorithms and ``none`` are never accepted.
    """

    def __init__(
        self,
        *,
        public_key_pem: str = "",
        jwks_url: str = "",
        issuer: str = "",
        audience: str,
        fetch_timeout_s: float = 10.0,
    ) -> None:
        import jwt

        if not audience:
            raise ConfigError(
                "JWT verification needs the audience this server accepts: set SESSIONS_MCP_HTTP__JWT_AUDIENCE "
                "(or SESSIONS_MCP_HTTP__PUBLIC_URL, the canonical URL of /mcp)"
            )
        if bool(public_key_pem) == bool(jwks_url):
            raise ConfigError("set exactly one of SESSIONS_MCP_HTTP__JWT_PUBLIC_KEY and SESSIONS_MCP_HTTP__JWKS_URL")
        self.issuer = issuer
        self.audience = normalize_resource(audience)
        self.jwks_url = jwks_url
        self._fetch_timeout_s = fetch_timeout_s
        self._static_key: Any = None
        self._static_algorithms: list[str] = []
        self._jwks: dict[str, Any] = {}
        self._jwks_fetched = float("-inf")
        self._jwks_lock = anyio.Lock()
        if public_key_pem:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                key = load_pem_public_key(public_key_pem.encode())
            except ValueError:
                raise ConfigError(
                    "SESSIONS_MCP_HTTP__JWT_PUBLIC_KEY is not a PEM public key "
                    "('-----BEGIN PUBLIC KEY-----' …); a certificate or private key does not work"
                ) from None
            self._static_key = key
            self._static_algorithms = _algorithms_for_key(key)
        if jwks_url:
            parts = urlsplit(jwks_url)
            loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
            if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
                raise ConfigError("SESSIONS_MCP_HTTP__JWKS_URL must be an https:// URL")
        self._jwt = jwt

    def _jwks_due(self, kid: str | None) -> bool:
        age = time.monotonic() - self._jwks_fetched
        if age > JWKS_TTL_S:
            return True
        known = (kid in self._jwks) if kid is not None else len(self._jwks) == 1
        # an unknown kid may mean the keys rotated; refetch, but not more often than this
        return not known and age > JWKS_MIN_REFRESH_S

    async def _jwks_key(self, kid: str | None) -> tuple[Any, list[str]] | None:
        if self._jwks_due(kid):
            async with self._jwks_lock:
                if self._jwks_due(kid):
                    await self._fetch_jwks()
        if kid is None:
            return next(iter(self._jwks.values())) if len(self._jwks) == 1 else None
        return self._jwks.get(kid)

    async def _fetch_jwks(self) -> None:
        import httpx2

        self._jwks_fetched = time.monotonic()
        try:
            async with httpx2.AsyncClient(timeout=self._fetch_timeout_s, follow_redirects=False) as http:
                response = await http.get(self.jwks_url, headers={"Accept": "application/json"})
                response.raise_for_status()
                data: Any = response.json()
        except Exception as exc:
            log.warning("cannot fetch JWKS from SESSIONS_MCP_HTTP__JWKS_URL (%s); keeping %d cached key(s)",
                        type(exc).__name__, len(self._jwks))  # fmt: skip
            return
        keys: dict[str, Any] = {}
        raw: Any = cast(dict[str, Any], data).get("keys", []) if isinstance(data, dict) else []
        raw_keys = (
            [cast(dict[str, Any], k) for k in cast(list[Any], raw) if isinstance(k, dict)]
            if isinstance(raw, list)
            else []
        )
        for index, jwk in enumerate(raw_keys):
            if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in _KEY_ALGORITHMS:
                continue
            try:
                parsed = self._jwt.PyJWK.from_dict(jwk)
            except Exception:
                log.warning("JWKS key %s cannot be used; skipped", jwk.get("kid", index))
                continue
            algorithms = [str(jwk["alg"])] if jwk.get("alg") else _KEY_ALGORITHMS[str(jwk["kty"])]
            keys[str(jwk.get("kid", f"#{index}"))] = (parsed.key, algorithms)
        self._jwks = keys

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's principal and scopes, or ``None`` when anything does not check out."""
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
            alg = str(header.get("alg", ""))
            if self._static_key is not None:
                key, algorithms = self._static_key, self._static_algorithms
            else:
                found = await self._jwks_key(cast(str | None, header.get("kid")))
                if found is None:
                    return None
                key, algorithms = found
            if alg not in algorithms:
                return None
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self.issuer or None,
                leeway=JWT_LEEWAY_S,
                options={"require": ["exp", "sub"] + (["iss"] if self.issuer else []), "verify_aud": False},
            )
        except jwt.PyJWTError:
            return None
        except ValueError:
            return None
        resource = self._matching_audience(claims.get("aud"))
        if resource is None:
            return None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            return None
        exp = claims.get("exp")
        return AccessToken(
            token=REDACTED,
            client_id=str(claims.get("azp") or claims.get("client_id") or subject),
            scopes=_scopes(claims),
            expires_at=int(exp) if isinstance(exp, (int, float)) else None,
            resource=resource,
            subject=subject,
            claims={"iss": claims["iss"]} if "iss" in claims else None,
        )

    def _matching_audience(self, aud: Any) -> str | None:
        values: list[Any] = cast(list[Any], aud) if isinstance(aud, list) else [aud]
        for value in values:
            if isinstance(value, str) and normalize_resource(value) == self.audience:
                return value
        return None


def _scopes(claims: dict[str, Any]) -> list[str]:
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return [str(s) for s in cast(list[Any], raw)]
    return []


class ChainedVerifier:
    """Static tokens first, then JWTs (only for tokens shaped like a JWT)."""

    def __init__(self, static: StaticTokenVerifier | None, jwt: JwtTokenVerifier | None) -> None:
        self.static = static
        self.jwt = jwt

    async def verify_token(self, token: str) -> AccessToken | None:
        """The first verifier's answer that is not ``None``."""
        if self.static is not None:
            found = await self.static.verify_token(token)
            if found is not None:
                return found
        if self.jwt is not None and token.count(".") == 2:
            return await self.jwt.verify_token(token)
        return None


@dataclass
class AuthConfig:
    """What :func:`build_auth` made of the HTTP settings."""

    verifier: TokenVerifier
    settings: AuthSettings
    static_tokens: list[str]
    """The raw static tokens, only so logs can redact them."""


def resource_url(http: HttpSettings) -> str:
    """The canonical URL of ``/mcp``: ``public_url``, else derived from host and port."""
    if http.public_url:
        return http.public_url
    host = http.host if ":" not in http.host else f"[{http.host}]"
    return f"http://{host}:{http.port}/mcp"


def build_auth(http: HttpSettings) -> AuthConfig | None:
    """The verifier and SDK auth settings for ``http``, or ``None`` when no authentication is configured.

    Raises :class:`ConfigError` naming the setting when the configuration is unusable.
    """
    pairs: list[tuple[str, str]] = []
    if http.tokens is not None and http.tokens.get_secret_value().strip():
        pairs += parse_token_pairs(http.tokens.get_secret_value(), source="SESSIONS_MCP_HTTP__TOKENS")
    if http.tokens_file:
        path = Path(http.tokens_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"SESSIONS_MCP_HTTP__TOKENS_FILE {str(path)!r} cannot be read ({exc.strerror or exc})"
            ) from None
        pairs += parse_token_pairs(text, source="SESSIONS_MCP_HTTP__TOKENS_FILE")
        if not pairs:
            raise ConfigError(f"SESSIONS_MCP_HTTP__TOKENS_FILE {str(path)!r} has no principal=token lines")
    scopes = list(http.required_scopes)
    static = StaticTokenVerifier(pairs, scopes=scopes) if pairs else None
    jwt_verifier: JwtTokenVerifier | None = None
    if http.jwt_public_key or http.jwks_url:
        pem = _read_text_or_path(http.jwt_public_key, setting="SESSIONS_MCP_HTTP__JWT_PUBLIC_KEY") if (
            http.jwt_public_key
        ) else ""  # fmt: skip
        jwt_verifier = JwtTokenVerifier(
            public_key_pem=pem,
            jwks_url=http.jwks_url,
            issuer=http.jwt_issuer,
            audience=http.jwt_audience or http.public_url,
        )
        if not http.jwt_issuer:
            log.warning("SESSIONS_MCP_HTTP__JWT_ISSUER is not set: JWTs from any issuer signed by the key are accepted")
    elif http.jwt_issuer or http.jwt_audience:
        raise ConfigError(
            "SESSIONS_MCP_HTTP__JWT_ISSUER/__JWT_AUDIENCE are set but no key: set SESSIONS_MCP_HTTP__JWT_PUBLIC_KEY "
            "or SESSIONS_MCP_HTTP__JWKS_URL"
        )
    if static is None and jwt_verifier is None:
        return None
    resource = resource_url(http)
    issuer = http.jwt_issuer if jwt_verifier and http.jwt_issuer.startswith(("https://", "http://")) else resource
    auth_settings = AuthSettings(
        issuer_url=cast(Any, issuer),
        resource_server_url=cast(Any, resource),
        required_scopes=scopes or None,
        validate_token_resource=False,  # the JWT verifier checks aud itself; static tokens have no audience
    )
    verifier: TokenVerifier = ChainedVerifier(static, jwt_verifier)
    return AuthConfig(verifier=verifier, settings=auth_settings, static_tokens=[t for _, t in pairs])
