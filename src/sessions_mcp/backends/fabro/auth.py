"""Credentials for the Fabro API: a static bearer token, or an EdDSA (Ed25519) JWT minted per request.

Fabro's server verifies ``Authorization: Bearer <JWT>`` with its ``FABRO_JWT_PUBLIC_KEY``: the token
must be EdDSA-signed, carry ``iss = "fabro-web"``, integer ``iat``/``exp`` (floats are rejected) and a
``sub`` URL whose last path segment is an allow-listed user name. fabro-web mints 30-second tokens;
there is no token endpoint, so we mint a fresh one for every request (also for every retry).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2

from ...errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ...settings import FabroSettings

CLOCK_SKEW_S = 5
"""``iat`` is set this far in the past so a server whose clock is slightly behind accepts the token."""


def load_private_key(value: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM text, base64 of PEM text (as fabro-web stores it) or a PEM file path.

    Raises :class:`ConfigError` naming ``SESSIONS_MCP_FABRO__JWT_PRIVATE_KEY`` (never its content).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    setting = "SESSIONS_MCP_FABRO__JWT_PRIVATE_KEY"
    text = value.strip()
    if "-----BEGIN" not in text:
        decoded = _base64_pem(text)
        if decoded is not None:
            return load_private_key(decoded)
        path = Path(text).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{setting} is neither PEM text nor a readable file ({path}: {exc.strerror}); "
                "give the Ed25519 private key as PEM text or the path of a PEM file"
            ) from None
    try:
        key = load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{setting} could not be loaded as an unencrypted PEM private key ({reason}); "
            "generate one with `openssl genpkey -algorithm ed25519`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{setting} is a {type(key).__name__.lstrip('_')}, but Fabro verifies EdDSA tokens: "
            "use an Ed25519 key (`openssl genpkey -algorithm ed25519`)"
        )
    return key


def _base64_pem(text: str) -> str | None:
    """fabro-web's ``FABRO_JWT_PRIVATE_KEY`` may hold base64 of the PEM; accept it as is."""
    import base64
    import binascii

    if not text.startswith("LS0t"):  # base64 of "-----"
        return None
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded if "-----BEGIN" in decoded else None


class JwtMinter:
    """Mints the short-lived EdDSA tokens Fabro's ``jwt_auth`` accepts."""

    def __init__(self, key: Ed25519PrivateKey, *, subject: str, issuer: str = "fabro-web", ttl_s: int = 30) -> None:
        self.key = key
        self.subject = subject
        self.issuer = issuer
        self.ttl_s = ttl_s

    def mint(self, now: float | None = None) -> str:
        """A fresh token: integer ``iat`` (a little in the past) and ``exp`` = now + ttl."""
        import jwt

        t = int(now if now is not None else time.time())
        claims = {"iss": self.issuer, "sub": self.subject, "iat": t - CLOCK_SKEW_S, "exp": t + self.ttl_s}
        return jwt.encode(claims, self.key, algorithm="EdDSA")


class BearerAuth(httpx2.Auth):
    """Sets ``Authorization`` on every request (and every retry): a fixed token or a fresh JWT."""

    def __init__(self, *, token: str | None = None, minter: JwtMinter | None = None) -> None:
        if (token is None) == (minter is None):
            raise ValueError("exactly one of token and minter")
        self.token = token
        self.minter = minter

    def header(self) -> str:
        """The header value for a request sent now."""
        if self.minter is not None:
            return f"Bearer {self.minter.mint()}"
        return f"Bearer {self.token}"

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = self.header()
        yield request


def build_auth(settings: FabroSettings) -> BearerAuth | None:
    """The configured credential; None when only mTLS (or nothing) is configured.

    Raises :class:`ConfigError` when the settings contradict each other or the key cannot be used.
    """
    token = settings.token.get_secret_value() if settings.token is not None else ""
    key_value = settings.jwt_private_key.get_secret_value() if settings.jwt_private_key is not None else ""
    if token and key_value:
        raise ConfigError(
            "both SESSIONS_MCP_FABRO__TOKEN and SESSIONS_MCP_FABRO__JWT_PRIVATE_KEY are set; keep only one"
        )
    if token:
        return BearerAuth(token=token)
    if key_value:
        if not settings.jwt_subject:
            raise ConfigError(
                "SESSIONS_MCP_FABRO__JWT_SUBJECT is empty; set it to the URL of an allowed user, "
                "e.g. https://github.com/<username> (Fabro checks its last path segment)"
            )
        key = load_private_key(key_value)
        return BearerAuth(
            minter=JwtMinter(key, subject=settings.jwt_subject, issuer=settings.jwt_issuer, ttl_s=settings.jwt_ttl_s)
        )
    return None
