"""Who may call the admin routes: a bearer token from the server's environment."""

from __future__ import annotations

import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    detail: str


class AdminAuth:
    """Admin routes need `Authorization: Bearer <token>` equal to the token the server was
    started with (compared in constant time); with no token set they are off."""

    def __init__(self, token: str, token_env: str) -> None:
        self._token = token
        self.token_env = token_env

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def check(self, authorization: str) -> Refusal | None:
        """None when `authorization` (the header's value) carries the token."""
        if not self._token:
            return Refusal(403, "admin_disabled",
                           f"admin routes are disabled: set {self.token_env} on the server")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Refusal(401, "unauthorized",
                           "this route needs 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(token.strip().encode(), self._token.encode()):
            return Refusal(403, "forbidden", "the bearer token is not valid")
        return None
