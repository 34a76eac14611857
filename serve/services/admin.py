"""Who is calling: the admin bearer token (automation), a person's credentials (HTTP Basic
with a `funnel users` account), or a name asserted by a trusted authenticating proxy (only
when `console.identity_header` names its header). Decisions are attributed to the
`Principal` this returns, never to a name in a request body."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serve.users.accounts import (
    TOKEN_IDENTITY,
    LoginLimiter,
    Principal,
    Role,
    verify_nobody,
    verify_password,
)

if TYPE_CHECKING:
    from serve.users.store import UserStore

# a person's verified Basic credentials are remembered this long (argon2 costs ~50 ms of CPU
# and 64 MiB each time); a rotate or disable takes effect at once (the account is read anew
# on every call, and the cache key includes the stored hash)
VERIFIED_TTL_S = 60.0


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    detail: str


class AdminAuth:
    """`Authorization: Bearer <token>`: the token the server was started with (compared in
    constant time), acting as `token:admin` with the admin role; with no token set, bearer
    calls are refused. `Authorization: Basic` name:password: a console account, acting as
    itself with its role. `identity_header`: trusted only when configured."""

    def __init__(self, token: str, token_env: str, *, users: UserStore | None = None,
                 identity_header: str | None = None, limiter: LoginLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._token = token
        # failed password checks per account, the console's sign-ins and the API's Basic
        # credentials together (the console adds a count per client address)
        self.limiter = limiter or LoginLimiter(max_failures=5, window_s=300.0, clock=clock)
        self.token_env = token_env
        self.users = users
        self.identity_header = identity_header.lower() if identity_header else None
        self._clock = clock
        self._verified: dict[bytes, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def check(self, authorization: str) -> Refusal | None:
        """None when `authorization` (the header's value) carries the admin token."""
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

    def blocking(self, headers: Mapping[str, str]) -> bool:
        """Whether `identify` reads the database or verifies a password (run it in a
        thread), or only compares the token."""
        if self.identity_header and headers.get(self.identity_header):
            return True
        return headers.get("authorization", "").partition(" ")[0].lower() == "basic"

    def identify(self, headers: Mapping[str, str]) -> Principal | Refusal:
        """Who the request runs as, or why it is refused (401: no usable credentials, 403:
        credentials that do not admit). `headers`: lower-case names."""
        if self.identity_header:
            asserted = headers.get(self.identity_header, "").strip()
            if asserted:
                return self._account(asserted, via="proxy")
        authorization = headers.get("authorization", "")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            refusal = self.check(authorization)
            return refusal or Principal(TOKEN_IDENTITY, "admin", "token")
        if scheme.lower() == "basic" and value:
            try:
                name, sep, password = base64.b64decode(value.strip(), validate=True).decode(
                    "utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                sep = ""
            if not sep:
                return Refusal(401, "unauthorized",
                               "Basic credentials are base64 of 'name:password'")
            return self._account(name, via="password", password=password)
        return Refusal(401, "unauthorized",
                       "this route needs 'Authorization: Bearer <admin token>' or Basic "
                       "credentials of a console account (`funnel users add`)")

    def _account(self, name: str, *, via: str, password: str | None = None
                 ) -> Principal | Refusal:
        denied = Refusal(403, "forbidden", "these credentials are not valid")
        if password is not None:
            wait = self.limiter.retry_after([f"user:{name.lower()}"])
            if wait is not None:
                return Refusal(429, "too_many_attempts", f"too many failed sign-ins for this "
                               f"account; try again in {int(wait) + 1} s")
        user = self.users.get(name) if self.users is not None else None
        if user is None or user.disabled:
            if via == "proxy":
                return Refusal(403, "forbidden", f"{name!r} (from the identity proxy) is not an "
                               "enabled console account")
            if password is not None:
                verify_nobody(password)  # as long as a real check: names are not revealed
                self.limiter.failed([f"user:{name.lower()}"])
            return denied
        if password is not None:
            key = hashlib.sha256(f"{name}\0{password}\0{user.password_hash}".encode()).digest()
            now = self._clock()
            with self._lock:
                fresh = self._verified.get(key, 0.0) > now
            if not fresh:
                if not verify_password(user.password_hash, password):
                    self.limiter.failed([f"user:{name.lower()}"])
                    return denied
                self.limiter.succeeded(f"user:{name.lower()}")
                with self._lock:
                    if len(self._verified) > 10_000:
                        self._verified.clear()
                    self._verified[key] = now + VERIFIED_TTL_S
        return Principal(user.name, user.role, via)  # type: ignore[arg-type]

    def require(self, headers: Mapping[str, str], role: Role) -> Principal | Refusal:
        """`identify`, then the role: an admin may do what a reviewer may."""
        who = self.identify(headers)
        if isinstance(who, Refusal):
            return who
        if role == "admin" and not who.is_admin:
            return Refusal(403, "forbidden", f"{who.name} is a {who.role}; this needs the "
                           "admin role")
        return who
