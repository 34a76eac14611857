"""The console and the review API over a real SQLite review database and real accounts, in
process (Starlette's TestClient): no Ray, no browser."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serve.config import parse_app_args
from serve.console.state import build_console
from serve.http.asgi import build_http_app
from serve.review.store import SqlReviewStore
from serve.services.admin import AdminAuth
from serve.services.review import ReviewService
from serve.users.accounts import hash_password
from serve.users.store import UserStore

TOKEN = "unit-admin-token-0123456789"
PASSWORDS = {"rita": "rita-password-1", "ravi": "ravi-password-2", "ada": "ada-password-3"}
LABELS = ("abuse", "spam")


@dataclass
class Env:
    app: Any
    store: SqlReviewStore
    users: UserStore
    services: Any

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="http://testserver", follow_redirects=False)

    def queue(self, cid: str, text: str | None = "a post", *, flagged: tuple[str, ...] = ("abuse",),
              policy: str = "p1") -> int:
        item = self.store.record_model_decision(
            content_id=cid, decision="review", model="moderation_text", policy_version=policy,
            request_id=f"r-{cid}", text=text, has_image=False, author_id=3,
            scores={"abuse": 0.6, "spam": 0.1}, flagged_labels=flagged,
            reasons=["abuse >= review_at 0.5"], model_versions={"moderation_text": "b1"})
        assert item is not None
        return item


class Controller:
    """The rollout controller's handle, as the routes call it (`.method.remote(...)`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.status = _Remote(self, "status", {"revision": 1, "stages": {}, "decisions": []})
        self.rollback = _Remote(self, "rollback", {"ok": True})
        self.promote = _Remote(self, "promote", {"ok": True})


class _Remote:
    def __init__(self, owner: Controller, name: str, answer: Any) -> None:
        self.owner, self.name, self.answer = owner, name, answer

    async def remote(self, *args: Any) -> Any:
        self.owner.calls.append((self.name, args))
        return self.answer


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("FUNNEL_CONSOLE_SECRET", "unit-console-secret-0123456789")
    store = SqlReviewStore(f"sqlite:///{tmp_path / 'review.sqlite3'}")
    users = UserStore(engine=store.engine, migrate=False)
    users.add("rita", role="reviewer", password_hash=hash_password(PASSWORDS["rita"]))
    users.add("ravi", role="reviewer", password_hash=hash_password(PASSWORDS["ravi"]))
    users.add("ada", role="admin", password_hash=hash_password(PASSWORDS["ada"]))
    args = parse_app_args({"bundle": "unused", "console": {
        "drift_reports_url": str(tmp_path / "drift")}})
    admin = AdminAuth(TOKEN, "FUNNEL_ADMIN_TOKEN", users=users)

    async def refresh() -> None:
        return None

    services = SimpleNamespace(
        args=args, admin=admin, review=ReviewService(store, refresh_verdicts=refresh),
        rollout_controller=Controller(), rollout=None,
        background=SimpleNamespace(ensure=lambda: None),
        console=build_console(args.console, auth=admin, labels=LABELS,
                              thresholds={"abuse": (0.5, 0.9), "spam": (0.4, 0.95)}))
    yield Env(build_http_app(services), store, users, services)
    store.close()


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def sign_in(client: TestClient, name: str, password: str | None = None) -> TestClient:
    page = client.get("/console/login")
    r = client.post("/console/login", data={
        "name": name, "password": password or PASSWORDS[name],
        "csrf_token": csrf_of(page.text), "next": "/console/review"})
    assert r.status_code == 303, r.text
    return client


def basic(name: str, password: str | None = None) -> dict[str, str]:
    raw = f"{name}:{password or PASSWORDS[name]}".encode()
    return {"authorization": "Basic " + base64.b64encode(raw).decode()}
