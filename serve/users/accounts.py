"""Accounts, roles and credentials, framework-free.

- A person has a name, a role (`reviewer`: the review queue; `admin`: also the audit log and
  rollout actions) and a password, kept only as an argon2id hash (argon2-cffi's defaults,
  RFC 9106's second recommended profile: 64 MiB, 3 passes). A hash made with older
  parameters is upgraded at the next sign-in (`needs_rehash`).
- `Principal` is who a request runs as: a person, the admin bearer token (automation), or a
  name a trusted proxy asserted. Decisions are attributed to `Principal.name`.
- `LoginLimiter` refuses further sign-ins for an account, or from a client address, after
  `max_failures` failures within `window_s` seconds.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from funnel.contracts.errors import InvalidInputError

Role = Literal["reviewer", "admin"]
ROLES: tuple[Role, ...] = ("reviewer", "admin")
# letters, digits and . _ @ - (an e-mail address from an identity proxy fits); never ':',
# which keeps people apart from the token's identity ("token:admin")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_IDENTITY = "token:admin"
MIN_PASSWORD = 12
MAX_PASSWORD = 1024

_hasher = PasswordHasher()


class AccountError(InvalidInputError):
    """A bad name, role or password (CLI exit 2, HTTP 422)."""


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise AccountError(f"user name {name!r}: 1 to 64 letters, digits or . _ @ -, "
                           "starting with a letter or digit")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters "
                           f"(this one is {len(password)})")
    return password


def generate_password() -> str:
    """A random password (24 URL-safe characters, 144 bits)."""
    return secrets.token_urlsafe(18)


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def verify_password(stored_hash: str, password: str) -> bool:
    """True when `password` matches; never raises on a wrong or malformed hash."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_NOBODY = _hasher.hash(secrets.token_urlsafe(18))


def verify_nobody(password: str) -> None:
    """A verification as costly as a real one, for a name with no account: the answer's
    timing does not tell which names exist."""
    verify_password(_NOBODY, password)


def needs_rehash(stored_hash: str) -> bool:
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str
    disabled: bool
    credential_version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Principal:
    """Who a request runs as. `via`: password (console session or HTTP Basic), token (the
    admin bearer token), proxy (a trusted identity header)."""

    name: str
    role: Role
    via: Literal["password", "token", "proxy"]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class LoginLimiter:
    """Failed sign-ins per key (an account's name, a client address) in a sliding window.
    One replica's memory: with N replicas an attacker gets up to N times the attempts, each
    costing an argon2 verification (docs/console.md)."""

    def __init__(self, *, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def retry_after(self, keys: Iterable[str]) -> float | None:
        """Seconds until a sign-in for these keys may be tried again; None: now."""
        now = self._clock()
        waits = [q[0] + self.window_s - now for k in keys
                 if len(q := self._recent(k, now)) >= self.max_failures]
        return max(waits) if waits else None

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        if len(self._failures) >= self._max_keys:  # bounded: forget the stalest keys
            for k in sorted(self._failures, key=lambda k: self._failures[k][-1])[
                    :self._max_keys // 10]:
                del self._failures[k]
        for k in keys:
            self._failures.setdefault(k, deque()).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
