"""Client keys: who may call, and which models each key may use.

Keys are looked up by their SHA-256 digest and confirmed with `hmac.compare_digest`,
so the time an answer takes says nothing about how much of a guess was right.
Missing, malformed and wrong keys get one and the same 401 body.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from typing import Iterable

from ..config import ApiKey
from ..errors import Forbidden, Unauthorized

UNAUTHORIZED_MESSAGE = "Missing or invalid API key. Send it as 'Authorization: Bearer <key>'."
# Anthropic clients send their key as x-api-key (or as a bearer token).
X_API_KEY_MESSAGE = ("Missing or invalid API key. Send it as 'x-api-key: <key>' or "
                     "'Authorization: Bearer <key>'.")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not header or header[:7].lower() != "bearer ":
        return None
    token = header[7:].strip()
    return token or None


def _digest(secret: str) -> bytes:
    # surrogateescape: aiohttp decodes raw header bytes that way, and they must not crash us.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality that leaks neither content nor length."""
    return hmac.compare_digest(_digest(given), _digest(expected))


class KeyRing:
    """The configured client keys; empty means client auth is off."""

    __slots__ = ("_by_digest",)

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_digest = {d: (d, k) for d, k in ((_digest(k.key), k) for k in keys)}

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def find(self, token: str) -> ApiKey | None:
        digest = _digest(token)
        # The dict hashes a digest the caller cannot steer; compare_digest confirms it.
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]

    def authenticate(self, authorization: str | None, x_api_key: str | None = None, *,
                     accepts_x_api_key: bool = False) -> ApiKey | None:
        """The caller's key; None when auth is off. Raises Unauthorized otherwise.

        `accepts_x_api_key`: an API whose clients may send `x-api-key` instead; when both
        headers come, x-api-key is the one its SDK sets."""
        if not self._by_digest:
            return None
        token = x_api_key.strip() if accepts_x_api_key and x_api_key else None
        token = token or bearer_token(authorization)
        key = self.find(token) if token is not None else None
        if key is None:
            raise Unauthorized(X_API_KEY_MESSAGE if accepts_x_api_key else UNAUTHORIZED_MESSAGE)
        return key


def model_allowed(key: ApiKey, model: str) -> bool:
    """Names or glob patterns (fnmatch, case-sensitive) from the key's `models`."""
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in key.models)


def check_model(key: ApiKey | None, model: str) -> None:
    if key is not None and not model_allowed(key, model):
        raise Forbidden(f"This API key may not use the model '{model}'.", param="model")


def visible_models(key: ApiKey | None, names: Iterable[str]) -> list[str]:
    return [n for n in names if key is None or model_allowed(key, n)]
