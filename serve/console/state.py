"""One replica's console state (framework-free, so the services can build it): the session
signer, who is calling, the login limiter, and what the pages show of the policy and the
drift reports. serve.services.replica builds it when `console.enabled`; the routes
(serve/console/app.py) read it."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

from serve.console.sessions import Sessions
from serve.services.admin import AdminAuth

log = logging.getLogger("funnel.console")


@dataclass
class Console:
    """One replica's console: built by serve.services.replica when `console.enabled`. Failed
    sign-ins are counted by `auth.limiter`, which the API's Basic credentials share."""

    sessions: Sessions
    auth: AdminAuth
    labels: tuple[str, ...]
    thresholds: dict[str, tuple[float, float]]   # label -> (review_at, block_at)
    page_size: int
    secure_cookie: str
    drift_reports_url: str | None
    secret_generated: bool = False


def build_console(settings: Any, *, auth: AdminAuth, labels: tuple[str, ...],
                  thresholds: dict[str, tuple[float, float]]) -> Console:
    secret = os.environ.get(settings.session_secret_env, "")
    generated = not secret
    if generated:
        # sessions then work on this replica only, until it restarts
        secret = secrets.token_urlsafe(32)
        log.warning("console: %s is not set; sessions are signed with a key of this replica "
                    "only (set it, the same on every replica: the chart keeps it in a Secret)",
                    settings.session_secret_env)
    reports = os.environ.get(settings.drift_reports_url_env) or settings.drift_reports_url
    return Console(
        sessions=Sessions(secret, max_age_s=settings.session_max_age_s), auth=auth,
        labels=labels, thresholds=thresholds, page_size=settings.page_size,
        secure_cookie=settings.secure_cookie, drift_reports_url=reports,
        secret_generated=generated)


