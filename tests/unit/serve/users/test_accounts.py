"""Accounts, password hashes, the login limiter, and who a request runs as."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from serve.services.admin import AdminAuth, Refusal
from serve.users.accounts import (
    AccountError,
    LoginLimiter,
    Principal,
    check_name,
    check_password,
    generate_password,
    hash_password,
    needs_rehash,
    verify_password,
)
from serve.users.store import UnknownUser, UserExists, UserStore


def test_a_password_is_stored_as_an_argon2id_hash_and_verified() -> None:
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$") and "correct" not in h
    assert verify_password(h, "correct horse battery")
    assert not verify_password(h, "wrong horse battery")
    assert not verify_password("not-a-hash", "correct horse battery")
    assert not needs_rehash(h) and needs_rehash("not-a-hash")
    assert len(generate_password()) >= 20


@pytest.mark.parametrize("name", ["", "a b", "x:y", "-lead", "é", "a" * 65])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(AccountError):
        check_name(name)


def test_names_and_passwords_that_are_fine() -> None:
    assert check_name("rita.k@example.org") == "rita.k@example.org"
    with pytest.raises(AccountError, match="12 to 1024"):
        check_password("short")


def test_the_limiter_counts_failures_per_key_in_a_sliding_window() -> None:
    now = [0.0]
    lim = LoginLimiter(max_failures=3, window_s=60, clock=lambda: now[0])
    keys = ["user:rita", "ip:10.0.0.1"]
    for _ in range(3):
        assert lim.retry_after(keys) is None
        lim.failed(keys)
        now[0] += 1
    wait = lim.retry_after(keys)
    assert wait == pytest.approx(57.0)
    assert lim.retry_after(["user:ravi", "ip:10.0.0.2"]) is None  # others unaffected
    assert lim.retry_after(["user:ravi", "ip:10.0.0.1"]) is not None  # the same address
    now[0] += 58
    assert lim.retry_after(keys) is None  # the window slid past them
    lim.failed(keys)
    lim.succeeded("user:rita")
    assert lim.retry_after(["user:rita"]) is None


@pytest.fixture
def users(tmp_path: Path) -> UserStore:
    s = UserStore(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    s.add("rita", role="reviewer", password_hash=hash_password("rita-password-1"))
    s.add("ada", role="admin", password_hash=hash_password("ada-password-12"))
    return s


def test_the_store_adds_rotates_disables_and_refuses_duplicates(users: UserStore) -> None:
    with pytest.raises(UserExists):
        users.add("rita", role="admin", password_hash="x")
    with pytest.raises(UnknownUser):
        users.set_disabled("nobody", True)
    v = users.require("rita").credential_version
    users.set_password("rita", hash_password("rita-password-2"))
    users.set_disabled("rita", True)
    r = users.require("rita")
    assert r.disabled and r.credential_version == v + 2
    users.upgrade_hash("ada", hash_password("ada-password-12"))
    assert users.require("ada").credential_version == 1  # a rehash keeps sessions
    assert [u.name for u in users.list()] == ["ada", "rita"]


def _basic(name: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_who_a_request_runs_as(users: UserStore) -> None:
    auth = AdminAuth("tok-0123456789", "FUNNEL_ADMIN_TOKEN", users=users)
    assert auth.identify({"authorization": "Bearer tok-0123456789"}) == Principal(
        "token:admin", "admin", "token")
    assert auth.identify(_basic("rita", "rita-password-1")) == Principal(
        "rita", "reviewer", "password")
    assert auth.identify(_basic("rita", "rita-password-1")) == Principal(  # cached
        "rita", "reviewer", "password")
    bad = auth.identify(_basic("rita", "nope-nope-nope"))
    assert isinstance(bad, Refusal) and bad.status == 403
    assert isinstance(auth.identify({"authorization": "Basic !!"}), Refusal)
    assert isinstance(auth.identify({}), Refusal) and auth.identify({}).status == 401  # type: ignore[union-attr]
    refused = auth.require(_basic("rita", "rita-password-1"), "admin")
    assert isinstance(refused, Refusal) and "admin role" in refused.detail
    users.set_disabled("rita", True)
    assert isinstance(auth.identify(_basic("rita", "rita-password-1")), Refusal)


def test_an_identity_header_is_trusted_only_when_configured(users: UserStore) -> None:
    plain = AdminAuth("", "FUNNEL_ADMIN_TOKEN", users=users)
    assert isinstance(plain.identify({"x-auth-request-user": "ada"}), Refusal)
    proxied = AdminAuth("", "FUNNEL_ADMIN_TOKEN", users=users,
                        identity_header="X-Auth-Request-User")
    assert proxied.identify({"x-auth-request-user": "ada"}) == Principal("ada", "admin", "proxy")
    unknown = proxied.identify({"x-auth-request-user": "mallory"})
    assert isinstance(unknown, Refusal) and unknown.status == 403
    assert proxied.blocking({"x-auth-request-user": "ada"})
    assert not proxied.blocking({"authorization": "Bearer x"})


def test_password_guesses_over_the_api_are_limited_per_account(users: UserStore) -> None:
    now = [0.0]
    limiter = LoginLimiter(max_failures=3, window_s=60, clock=lambda: now[0])
    auth = AdminAuth("", "FUNNEL_ADMIN_TOKEN", users=users, limiter=limiter)
    for _ in range(3):
        assert auth.identify(_basic("rita", "guess-guess-guess")).status == 403  # type: ignore[union-attr]
    limited = auth.identify(_basic("rita", "rita-password-1"))
    assert isinstance(limited, Refusal) and limited.status == 429
    for _ in range(3):  # a name with no account counts the same, and answers the same
        assert auth.identify(_basic("nobody", "guess-guess-guess")).status == 403  # type: ignore[union-attr]
    assert auth.identify(_basic("nobody", "guess-guess-guess")).status == 429  # type: ignore[union-attr]
    now[0] += 61
    assert auth.identify(_basic("rita", "rita-password-1")) == Principal(
        "rita", "reviewer", "password")
