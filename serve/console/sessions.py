"""The console's session cookie and CSRF tokens, signed with the shared session secret.

A session is a signed, timestamped cookie (itsdangerous) holding the account's name, its
credential version (bumped by `funnel users rotate|disable|role`: older sessions are then
refused) and the session's CSRF token. Nothing is kept on the server, so any replica can
check it. Before sign-in, a short-lived signed cookie holds the login form's CSRF token.

Every form carries the token in a hidden field; a POST whose field does not equal the
cookie's token (compared in constant time) is refused. With SameSite=Strict cookies this is
defence in depth against cross-site posts.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "funnel_session"
LOGIN_COOKIE = "funnel_login"
LOGIN_MAX_AGE_S = 3600


@dataclass(frozen=True)
class Session:
    name: str
    credential_version: int
    csrf: str


class Sessions:
    def __init__(self, secret: str, *, max_age_s: int) -> None:
        if len(secret) < 16:
            raise ValueError("the console's session secret is at least 16 characters")
        self.max_age_s = max_age_s
        self._session = URLSafeTimedSerializer(secret, salt="funnel-console-session")
        self._login = URLSafeTimedSerializer(secret, salt="funnel-console-login")

    def issue(self, name: str, credential_version: int) -> tuple[str, Session]:
        s = Session(name, credential_version, secrets.token_urlsafe(24))
        return self._session.dumps({"u": s.name, "v": s.credential_version, "c": s.csrf}), s

    def read(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            d = self._session.loads(cookie, max_age=self.max_age_s)
            return Session(str(d["u"]), int(d["v"]), str(d["c"]))
        except (BadSignature, KeyError, TypeError, ValueError):
            return None

    def login_token(self) -> tuple[str, str]:
        """(cookie value, the login form's CSRF token)."""
        token = secrets.token_urlsafe(24)
        return self._login.dumps(token), token

    def read_login(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            return str(self._login.loads(cookie, max_age=LOGIN_MAX_AGE_S))
        except (BadSignature, TypeError, ValueError):
            return None


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(
        str(expected).encode(), str(given).encode())
