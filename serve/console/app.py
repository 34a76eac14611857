"""The console's routes under /console: thin glue between the pages (templates/), the pure
view logic (views.py), the session cookie (sessions.py) and the replica's services (the
review queue, the accounts, the rollout controller, the drift reports).

Every page answers with a strict Content-Security-Policy (scripts and styles from this
console only, no inline script), no caching, and no framing. Every POST checks the
session's CSRF token. A page needing a sign-in redirects to /console/login; a role a person
lacks is a 403 page; the API's JSON errors are not used here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from serve.console import views
from serve.console.sessions import (
    LOGIN_COOKIE,
    LOGIN_MAX_AGE_S,
    SESSION_COOKIE,
    Session,
    same_token,
)
from serve.console.state import Console
from serve.errors import AlreadyDecided, RequestTooLarge, ReviewItemNotFound, ReviewStoreError
from serve.services.admin import Refusal
from serve.users.accounts import Principal, needs_rehash, verify_nobody, verify_password

log = logging.getLogger("funnel.console")
HERE = Path(__file__).parent
MAX_FORM_BYTES = 16 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'")
# an Evidently report runs its own inline scripts: it is served sandboxed (an opaque origin:
# no cookies, no calls to the console as the signed-in person)
REPORT_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; "
              "style-src 'unsafe-inline'; img-src data:; font-src data:")
NOTICES = {"promote": "promoted", "rollback": "rolled back"}
templates = Jinja2Templates(directory=str(HERE / "templates"))


router = APIRouter(prefix="/console", include_in_schema=False)


# ---- plumbing ----------------------------------------------------------------------------
def _services(request: Request) -> Any:
    return request.app.state.services


def _console(request: Request) -> Console | None:
    s = _services(request)
    return getattr(s, "console", None) if s is not None else None


def _secure(request: Request, c: Console) -> bool:
    if c.secure_cookie != "auto":
        return c.secure_cookie == "always"
    return request.url.scheme == "https" or \
        request.headers.get("x-forwarded-proto", "").lower() == "https"


def _headers(resp: Response, *, csp: str = CSP) -> Response:
    resp.headers["content-security-policy"] = csp
    resp.headers["x-frame-options"] = "DENY"
    resp.headers["x-content-type-options"] = "nosniff"
    resp.headers["referrer-policy"] = "same-origin"
    resp.headers["cache-control"] = "no-store"
    return resp


def _set_cookie(resp: Response, request: Request, c: Console, name: str, value: str,
                max_age: int) -> None:
    resp.set_cookie(name, value, max_age=max_age, path="/console", httponly=True,
                    samesite="strict", secure=_secure(request, c))


@dataclass
class Caller:
    who: Principal
    session: Session
    new_cookie: str | None = None     # a session to set (a proxy-asserted identity's first page)


async def _caller(request: Request, c: Console) -> Caller | None:
    """The signed-in person (session cookie, or the trusted proxy's header), or None."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    if c.auth.identity_header and headers.get(c.auth.identity_header, "").strip():
        who = await asyncio.to_thread(c.auth.identify, headers)
        if isinstance(who, Refusal):
            return None
        session = c.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is not None and session.name == who.name:
            return Caller(who, session)
        user = await asyncio.to_thread(c.auth.users.get, who.name) if c.auth.users else None
        cookie, session = c.sessions.issue(who.name, user.credential_version if user else 0)
        return Caller(who, session, cookie)
    session = c.sessions.read(request.cookies.get(SESSION_COOKIE))
    if session is None or c.auth.users is None:
        return None
    user = await asyncio.to_thread(c.auth.users.get, session.name)
    if user is None or user.disabled or user.credential_version != session.credential_version:
        return None
    return Caller(Principal(user.name, user.role, "password"), session)


def _page(request: Request, c: Console, template: str, ctx: dict[str, Any], *,
          caller: Caller | None = None, status: int = 200) -> Response:
    resp = templates.TemplateResponse(request, template, {
        "who": caller.who if caller else None,
        "csrf": caller.session.csrf if caller else "", **ctx}, status_code=status)
    if caller is not None and caller.new_cookie:
        _set_cookie(resp, request, c, SESSION_COOKIE, caller.new_cookie,
                    c.sessions.max_age_s)
    return _headers(resp)


def _problem(request: Request, c: Console, status: int, title: str, message: str,
             caller: Caller | None = None) -> Response:
    return _page(request, c, "problem.html", {"title": title, "message": message},
                 caller=caller, status=status)


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _headers(RedirectResponse(f"/console/login?next={quote(target, safe='')}", 303))


async def _form(request: Request) -> dict[str, str]:
    from serve.http.common import read_body

    raw = await read_body(request, MAX_FORM_BYTES)
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"),
                                         keep_blank_values=True).items()}


class _Stop(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _enter(request: Request, *, admin: bool = False, post: bool = False
                 ) -> tuple[Console, Caller, dict[str, str]]:
    """The console, the signed-in caller and (POST) the checked form; else _Stop with the
    answer: 404 (console off), a redirect to sign in, 403 (role or CSRF), 413."""
    c = _console(request)
    if c is None:
        raise _Stop(Response("the console is disabled (console.enabled: false)", 404))
    caller = await _caller(request, c)
    if caller is None:
        if post:
            raise _Stop(_problem(request, c, 401, "Signed out",
                                 "Your session has ended. Sign in again, then repeat this."))
        raise _Stop(_to_login(request))
    form: dict[str, str] = {}
    if post:
        try:
            form = await _form(request)
        except RequestTooLarge:
            raise _Stop(_problem(request, c, 413, "Too large", "That form is too large.",
                                 caller)) from None
        if not same_token(caller.session.csrf, form.get("csrf_token")):
            raise _Stop(_problem(request, c, 403, "Form refused",
                                 "This form did not come from your current session (its CSRF "
                                 "token is missing or wrong). Reload the page and try again.",
                                 caller))
    if admin and not caller.who.is_admin:
        raise _Stop(_problem(request, c, 403, "Admins only",
                             f"{caller.who.name} is a {caller.who.role}; this page needs the "
                             "admin role.", caller))
    return c, caller, form


def _guard(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    async def run(request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(request, *args, **kwargs)
        except _Stop as s:
            return s.response
        except ReviewStoreError as e:
            c = _console(request)
            assert c is not None
            return _problem(request, c, 503, "Review database unavailable",
                            f"{e}. Try again in a moment.")
    return run


# ---- sign-in -----------------------------------------------------------------------------
@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return _headers(RedirectResponse("/console/review", 303))


@router.get("/login")
async def login_page(request: Request) -> Response:
    c = _console(request)
    if c is None:
        return Response("the console is disabled (console.enabled: false)", 404)
    nxt = views.safe_next(request.query_params.get("next"))
    if await _caller(request, c) is not None:
        return _headers(RedirectResponse(nxt, 303))
    return _login_form(request, c, nxt, error=None, status=200)


def _login_form(request: Request, c: Console, nxt: str, *, error: str | None, status: int,
                name: str = "", retry_after: float | None = None) -> Response:
    cookie, token = c.sessions.login_token()
    resp = _page(request, c, "login.html", {"next": nxt, "error": error, "name": name,
                                            "login_csrf": token,
                                            "no_secret": c.secret_generated}, status=status)
    _set_cookie(resp, request, c, LOGIN_COOKIE, cookie, LOGIN_MAX_AGE_S)
    if retry_after is not None:
        resp.headers["retry-after"] = str(int(retry_after) + 1)
    return resp


@router.post("/login")
async def login(request: Request) -> Response:
    c = _console(request)
    if c is None:
        return Response("the console is disabled (console.enabled: false)", 404)
    try:
        form = await _form(request)
    except RequestTooLarge:
        return _problem(request, c, 413, "Too large", "That form is too large.")
    nxt = views.safe_next(form.get("next"))
    name = form.get("name", "").strip()[:64]
    expected = c.sessions.read_login(request.cookies.get(LOGIN_COOKIE))
    if not same_token(expected, form.get("csrf_token")):
        return _login_form(request, c, nxt, name=name, status=403, error=(
            "This sign-in form expired or did not come from this console. Try again."))
    client = request.client.host if request.client else "unknown"
    keys = [f"user:{name.lower()}", f"ip:{client}"]
    wait = c.auth.limiter.retry_after(keys)
    if wait is not None:
        return _login_form(request, c, nxt, name=name, status=429, retry_after=wait, error=(
            f"Too many failed sign-ins. Try again in {views.age_seconds(wait)}."))
    user = await asyncio.to_thread(c.auth.users.get, name) if (
        c.auth.users is not None and name) else None
    if user is None or user.disabled:  # as costly as a real check: names are not revealed
        await asyncio.to_thread(verify_nobody, form.get("password", ""))
    ok = user is not None and not user.disabled and await asyncio.to_thread(
        verify_password, user.password_hash, form.get("password", ""))
    if not ok or user is None:
        c.auth.limiter.failed(keys)
        log.info("console: failed sign-in for %r from %s", name, client)
        return _login_form(request, c, nxt, name=name, status=401,
                           error="That name and password do not match an enabled account.")
    c.auth.limiter.succeeded(keys[0])
    if needs_rehash(user.password_hash):
        from serve.users.accounts import hash_password

        await asyncio.to_thread(c.auth.users.upgrade_hash, user.name,  # type: ignore[union-attr]
                                hash_password(form.get("password", "")))
    cookie, _ = c.sessions.issue(user.name, user.credential_version)
    log.info("console: %s (%s) signed in from %s", user.name, user.role, client)
    resp = _headers(RedirectResponse(nxt, 303))
    _set_cookie(resp, request, c, SESSION_COOKIE, cookie, c.sessions.max_age_s)
    resp.delete_cookie(LOGIN_COOKIE, path="/console")
    return resp


@router.post("/logout")
@_guard
async def logout(request: Request) -> Response:
    _, caller, _ = await _enter(request, post=True)
    resp = _headers(RedirectResponse("/console/login", 303))
    resp.delete_cookie(SESSION_COOKIE, path="/console")
    log.info("console: %s signed out", caller.who.name)
    return resp


# ---- the review queue --------------------------------------------------------------------
@router.get("/review")
@_guard
async def queue(request: Request) -> Response:
    c, caller, _ = await _enter(request)
    store = _services(request).review.store
    now = datetime.now(UTC)
    q = views.parse_queue(dict(request.query_params), labels=c.labels, now=now)
    items, total = await asyncio.gather(
        asyncio.to_thread(store.list_items, status="pending", limit=c.page_size,
                          after_id=q.after_id, where=q.where),
        asyncio.to_thread(store.count_items, status="pending", where=q.where))
    rows = [{"item": i, "age": views.age(now - i.created_at),
             "preview": (i.text or "")[:160]} for i in items]
    more = len(items) == c.page_size
    return _page(request, c, "queue.html", {
        "rows": rows, "total": total, "q": q, "labels": c.labels, "more": more,
        "next_after": items[-1].id if more else None, "qs": q.query_string()}, caller=caller)


def _item_id(text: str) -> int | None:
    from serve.api import parse_uint

    return parse_uint(text)


@router.get("/review/{item_id}")
@_guard
async def item_page(request: Request, item_id: str) -> Response:
    c, caller, _ = await _enter(request)
    return await _item_view(request, c, caller, item_id)


async def _item_view(request: Request, c: Console, caller: Caller, item_id: str, *,
                     status: int = 200, conflict: str | None = None) -> Response:
    store = _services(request).review.store
    rid = _item_id(item_id)
    if rid is None:
        return _problem(request, c, 404, "No such item", "Review item ids are integers.",
                        caller)
    try:
        item = await asyncio.to_thread(store.get, rid)
    except ReviewItemNotFound:
        return _problem(request, c, 404, "No such item", f"There is no review item {rid}.",
                        caller)
    history = await asyncio.to_thread(store.audit, content_id=item.content_id)
    thumb = item.has_image and await asyncio.to_thread(store.thumbnail, rid) is not None
    scores = [{"label": lb, "score": s, "review_at": c.thresholds.get(lb, (None, None))[0],
               "block_at": c.thresholds.get(lb, (None, None))[1],
               "flagged": lb in item.flagged_labels}
              for lb, s in sorted(item.scores.items(), key=lambda kv: -kv[1])]
    q = views.parse_queue(dict(request.query_params), labels=c.labels, now=datetime.now(UTC))
    return _page(request, c, "item.html", {
        "item": item, "scores": scores, "history": history, "conflict": conflict,
        "thumb": thumb,
        "qs": q.query_string(), "age": views.age(datetime.now(UTC) - item.created_at)},
        caller=caller, status=status)


@router.get("/review/{item_id}/thumbnail")
@_guard
async def thumbnail(request: Request, item_id: str) -> Response:
    await _enter(request)
    rid = _item_id(item_id)
    data = await asyncio.to_thread(_services(request).review.store.thumbnail, rid) \
        if rid is not None else None
    if data is None:
        return _headers(Response("no thumbnail", 404, media_type="text/plain"))
    return _headers(Response(data, media_type="image/webp"))


@router.post("/review/{item_id}")
@_guard
async def decide(request: Request, item_id: str) -> Response:
    c, caller, form = await _enter(request, post=True)
    s = _services(request)
    rid = _item_id(item_id)
    decision = form.get("decision")
    if rid is None or decision not in ("allow", "block"):
        return _problem(request, c, 422, "Not a decision",
                        "A decision is allow or block, on a review item id.", caller)
    note = form.get("note", "").strip()[:4000] or None
    try:
        await s.review.decide(rid, decision=decision, reviewer=caller.who.name, note=note)
    except ReviewItemNotFound:
        return _problem(request, c, 404, "No such item", f"There is no review item {rid}.",
                        caller)
    except AlreadyDecided:
        # someone decided first: show who and when; nothing is overwritten
        return await _item_view(request, c, caller, str(rid), status=409, conflict="taken")
    log.info("console: %s decided %s on review item %d", caller.who.name, decision, rid)
    qs = form.get("qs", "")
    q = views.parse_queue({k: v[0] for k, v in parse_qs(qs).items()}, labels=c.labels,
                          now=datetime.now(UTC))
    nxt = await asyncio.to_thread(s.review.store.list_items, status="pending", limit=1,
                                  after_id=rid, where=q.where)
    if not nxt:
        nxt = await asyncio.to_thread(s.review.store.list_items, status="pending", limit=1,
                                      where=q.where)
    suffix = f"?{q.query_string()}" if q.query_string() else ""
    target = f"/console/review/{nxt[0].id}{suffix}" if nxt else f"/console/review{suffix}"
    return _headers(RedirectResponse(target, 303))


@router.get("/audit")
@_guard
async def audit(request: Request) -> Response:
    c, caller, _ = await _enter(request, admin=True)
    store = _services(request).review.store
    content = request.query_params.get("content_id", "").strip()[:128] or None
    before = _item_id(request.query_params.get("before_id", "")) or None
    page = 100
    rows = await asyncio.to_thread(store.audit, content_id=content, before_id=before,
                                   limit=page, newest_first=True)
    return _page(request, c, "audit.html", {
        "rows": rows, "content_id": content or "",
        "next_before": rows[-1]["id"] if len(rows) == page else None}, caller=caller)


# ---- on-call: drift ------------------------------------------------------------------------
@router.get("/drift")
@_guard
async def drift(request: Request) -> Response:
    c, caller, _ = await _enter(request)
    summaries: list[dict[str, Any]] = []
    problem = None
    if c.drift_reports_url:
        from monitoring.drift import latest_summaries

        try:
            summaries = await asyncio.to_thread(latest_summaries, c.drift_reports_url,
                                                last=12)
        except (OSError, ValueError) as e:
            problem = f"the drift reports at the configured location cannot be read: {e}"
    return _page(request, c, "drift.html", {
        "configured": bool(c.drift_reports_url), "problem": problem,
        "monitors": views.drift_monitors(summaries, now=datetime.now(UTC)),
        "windows": len(summaries)},
        caller=caller)


@router.get("/drift/{stamp}/report")
@_guard
async def drift_report(request: Request, stamp: str) -> Response:
    c, caller, _ = await _enter(request)
    if not views.STAMP.match(stamp) or not c.drift_reports_url:
        return _problem(request, c, 404, "No such report",
                        "Reports are named by their window's end, e.g. 20261206T120000Z.",
                        caller)
    import fsspec

    def read() -> bytes | None:
        fs, root = fsspec.core.url_to_fs(c.drift_reports_url)
        try:
            with fs.open(f"{root.rstrip('/')}/{stamp}/report.html", "rb") as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None

    data = await asyncio.to_thread(read)
    if data is None:
        return _problem(request, c, 404, "No such report",
                        f"Window {stamp} has no HTML report (nothing was compared).", caller)
    return _headers(Response(data, media_type="text/html; charset=utf-8"), csp=REPORT_CSP)


# ---- on-call: rollout ----------------------------------------------------------------------
async def _controller(request: Request, method: str, *args: Any) -> dict[str, Any] | str:
    s = _services(request)
    if s.rollout_controller is None:
        return "this deployment has no rollout controller (args.rollout)"
    s.background.ensure()
    try:
        out = await getattr(s.rollout_controller, method).remote(*args)
    except Exception as e:  # the controller restarting: say so, do not fail the page
        log.warning("console: rollout controller %s failed: %r", method, e)
        return f"the rollout controller did not answer ({type(e).__name__})"
    return out if isinstance(out, dict) else {"result": out}


@router.get("/rollout")
@_guard
async def rollout(request: Request) -> Response:
    from funnel.contracts.rollout import STAGES

    c, caller, _ = await _enter(request)
    status = await _controller(request, "status")
    notice = None
    n = request.query_params.get("done", "")
    action, _, stage = n.partition(":")
    if action in NOTICES and stage in STAGES:
        notice = f"The {stage} stage was {NOTICES[action]}."
    return _page(request, c, "rollout.html", {
        "problem": status if isinstance(status, str) else None,
        "stages": views.rollout_stages(status) if isinstance(status, dict) else [],
        "decisions": list(reversed(status.get("decisions", [])))[:20]
        if isinstance(status, dict) else [],
        "revision": status.get("revision") if isinstance(status, dict) else None,
        "notice": notice}, caller=caller)


def _action(stage: str, action: str) -> str | None:
    from funnel.contracts.rollout import STAGES

    if stage not in STAGES or action not in NOTICES:
        return f"A rollout action is promote or rollback, on one of {', '.join(STAGES)}."
    return None


@router.get("/rollout/{stage}/{action}")
@_guard
async def rollout_confirm(request: Request, stage: str, action: str) -> Response:
    c, caller, _ = await _enter(request, admin=True)
    bad = _action(stage, action)
    if bad:
        return _problem(request, c, 404, "No such action", bad, caller)
    status = await _controller(request, "status")
    st = status.get("stages", {}).get(stage) if isinstance(status, dict) else None
    return _page(request, c, "confirm.html", {"stage": stage, "action": action, "state": st},
                 caller=caller)


@router.post("/rollout/{stage}/{action}")
@_guard
async def rollout_act(request: Request, stage: str, action: str) -> Response:
    c, caller, form = await _enter(request, admin=True, post=True)
    bad = _action(stage, action)
    if bad:
        return _problem(request, c, 404, "No such action", bad, caller)
    if form.get("confirm") != "yes":
        return _headers(RedirectResponse(f"/console/rollout/{stage}/{action}", 303))
    out = await _controller(request, action, stage)
    if isinstance(out, str):
        return _problem(request, c, 503, "Rollout unavailable", out, caller)
    if out.get("ok") is False:
        return _problem(request, c, int(out.get("status", 409)), "Refused",
                        str(out.get("error") or out.get("fields")), caller)
    s = _services(request)
    if s.rollout is not None:
        await s.rollout.report_once()  # this replica routes by the change at once
    log.info("console: %s did %s on the %s stage", caller.who.name, action, stage)
    return _headers(RedirectResponse(f"/console/rollout?done={action}:{stage}", 303))


def static_files() -> Any:
    from starlette.staticfiles import StaticFiles

    return StaticFiles(directory=str(HERE / "static"))

