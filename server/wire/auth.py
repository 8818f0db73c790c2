"""API-key authentication: the configured keys and the route rules (http/auth.py's middleware applies them)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from ..errors import AuthenticationError, ConfigError, NomoatError, PermissionDeniedError
from ..settings import Settings
from .routes import Access, match

log = logging.getLogger(__name__)

_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# An admin route whose answer tells whether the caller's key is an admin key (nothing is changed:
# the check is made, the route is not called).
_ADMIN_PROBE = ("POST", "/v1/adapters")


@dataclass(frozen=True)
class KeyRing:
    """The accepted keys, as bytes. No user keys means the API is open; no admin key closes admin routes
    unless no key at all is configured (a loopback-only home setup)."""

    user_keys: tuple[bytes, ...] = ()
    admin_keys: tuple[bytes, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        users = _split(settings.api_key.get_secret_value() if settings.api_key else "")
        if settings.api_key_file is not None:
            users += read_key_file(settings.api_key_file)
        admin = _split(settings.admin_key.get_secret_value() if settings.admin_key else "")
        ring = cls(tuple(k.encode() for k in users), tuple(k.encode() for k in admin))
        if settings.require_api_key and not ring.user_keys:
            raise ConfigError(
                "require_api_key is set but no API key is configured: set NOMOAT_API_KEY "
                "(one key or a comma-separated list) or NOMOAT_API_KEY_FILE"
            )
        return ring

    @property
    def enabled(self) -> bool:
        return bool(self.user_keys or self.admin_keys)

    def role(self, token: bytes) -> str | None:
        """`admin`, `user` or None. Every key is compared, in constant time, whichever matches."""
        admin = user = False
        for key in self.admin_keys:
            admin |= hmac.compare_digest(token, key)
        for key in self.user_keys:
            user |= hmac.compare_digest(token, key)
        return "admin" if admin else "user" if user else None


class Authenticator:
    """Decides, per request, whether its bearer token may use its route. `keys` is swapped on reload."""

    def __init__(self, keys: KeyRing, *, metrics_require_key: bool = False) -> None:
        self.keys = keys
        self.metrics_require_key = metrics_require_key

    def check(self, method: str, path: str, authorization: str | None, api_key: str | None = None) -> str | None:
        """The caller's key id (a hash prefix, safe to log), or None when no key was needed; raises 401/403.

        The key comes as `Authorization: Bearer KEY` (OpenAI's clients) or `x-api-key: KEY` (Anthropic's).
        """
        keys = self.keys
        access = required_access(method, path)
        admin_route = access is Access.ADMIN
        if access is Access.PUBLIC or not keys.enabled:
            return None
        if access is Access.METRICS and not self.metrics_require_key:
            return None
        if not admin_route and not keys.user_keys:
            return None  # only an admin key is set: the API itself stays open
        token = _bearer(authorization) or (api_key.strip() if api_key else None)
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' or 'x-api-key: YOUR_KEY'."
            )
        role = keys.role(token.encode())
        if role is None:
            raise AuthenticationError("Incorrect API key provided.")
        if admin_route and role != "admin":
            hint = "" if keys.admin_keys else " (no admin key is configured: set NOMOAT_ADMIN_KEY)"
            raise PermissionDeniedError(f"{method} {path} changes server state and needs the admin key{hint}.")
        return key_id(token)

    def is_admin_key(self, authorization: str | None, api_key: str | None = None) -> bool:
        """Whether the request's key is an admin key (never true where no key is sent)."""
        token = _bearer(authorization) or (api_key.strip() if api_key else None)
        return token is not None and self.keys.role(token.encode()) == "admin"


def required_access(method: str, path: str) -> Access:
    """The route table's word; a write to an admin path with another method (a 405) stays admin."""
    found = match(method, path)
    if found.endpoint is not None:
        return found.endpoint.access
    return Access.ADMIN if found.admin_path and method in _WRITE_METHODS else Access.USER


def is_admin_route(method: str, path: str) -> bool:
    return required_access(method, path) is Access.ADMIN


def is_admin(auth: Authenticator, request: Request) -> bool:
    """Whether the request's key (or no key, where none is configured) may use the admin routes."""
    try:
        auth.check(*_ADMIN_PROBE, request.headers.get("authorization"), request.headers.get("x-api-key"))
    except NomoatError:
        return False
    return True


def key_id(token: str) -> str:
    """Names a key in logs and limits without revealing it."""
    return "key-" + hashlib.sha256(token.encode()).hexdigest()[:10]


def read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"api_key_file {path}: cannot read: {exc.strerror or exc}") from None
    keys = [line.strip() for line in text.splitlines()]
    return [k for k in keys if k and not k.startswith("#")]


def exposure_warning(settings: Settings, keys: KeyRing) -> str | None:
    """A warning when the API is reachable from other machines with no key required."""
    if keys.user_keys or _is_loopback(settings.host):
        return None
    return (
        f"listening on {settings.host} without an API key: anyone who can reach this port can use "
        "the API. Set NOMOAT_API_KEY (or NOMOAT_API_KEY_FILE), or listen on 127.0.0.1."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _split(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]
