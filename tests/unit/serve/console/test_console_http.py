"""The console's pages and the review API's identities, in process over a real SQLite
database: sign-in, CSRF, the login limit, roles, deciding and conflicts, escaping, the audit
log's identities, rollout actions."""

from __future__ import annotations

from tests.unit.serve.console.conftest import TOKEN, Env, basic, csrf_of, sign_in


def test_pages_need_a_sign_in_and_the_login_cookie_is_strict(env: Env) -> None:
    c = env.client()
    r = c.get("/console/review?label=abuse")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?next=%2Fconsole%2Freview%3Flabel%3Dabuse"
    sign_in(c, "rita")
    cookie = next(h for h in c.cookies.jar if h.name == "funnel_session")
    assert cookie.path == "/console" and cookie.has_nonstandard_attr("HttpOnly")
    r = c.get("/console/review")
    assert r.status_code == 200 and "rita" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


def test_the_session_cookie_is_samesite_strict_and_secure_behind_tls(env: Env) -> None:
    c = env.client()
    page = c.get("/console/login")
    r = c.post("/console/login", headers={"x-forwarded-proto": "https"}, data={
        "name": "rita", "password": "rita-password-1", "csrf_token": csrf_of(page.text)})
    set_cookie = r.headers["set-cookie"].lower()
    assert "samesite=strict" in set_cookie and "httponly" in set_cookie
    assert "secure" in set_cookie


def test_a_wrong_password_is_refused_and_the_limit_stops_guessing(env: Env) -> None:
    c = env.client()
    for _ in range(5):
        page = c.get("/console/login")
        r = c.post("/console/login", data={"name": "rita", "password": "wrong-password-x",
                                           "csrf_token": csrf_of(page.text)})
        assert r.status_code == 401
        assert "do not match" in r.text
    page = c.get("/console/login")
    r = c.post("/console/login", data={"name": "rita", "password": "rita-password-1",
                                       "csrf_token": csrf_of(page.text)})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "funnel_session" not in r.headers.get("set-cookie", "")


def test_login_without_its_csrf_token_is_refused(env: Env) -> None:
    c = env.client()
    c.get("/console/login")
    r = c.post("/console/login", data={"name": "rita", "password": "rita-password-1",
                                       "csrf_token": "forged"})
    assert r.status_code == 403 and "funnel_session" not in r.headers.get("set-cookie", "")


def test_a_decision_without_or_with_a_wrong_csrf_token_is_refused(env: Env) -> None:
    item = env.queue("c1")
    c = sign_in(env.client(), "rita")
    for data in ({"decision": "block"}, {"decision": "block", "csrf_token": "wrong"}):
        r = c.post(f"/console/review/{item}", data=data)
        assert r.status_code == 403 and "CSRF" in r.text
    assert env.store.get(item).status == "pending"


def test_deciding_moves_to_the_next_item_and_records_the_person(env: Env) -> None:
    first, second = env.queue("c1"), env.queue("c2")
    c = sign_in(env.client(), "rita")
    page = c.get(f"/console/review/{first}")
    r = c.post(f"/console/review/{first}", data={"decision": "block", "note": "threat",
                                                 "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == f"/console/review/{second}"
    row = env.store.audit(content_id="c1")[-1]
    assert (row["actor"], row["decision"], row["note"]) == ("rita", "block", "threat")


def test_the_second_reviewer_sees_who_decided_and_nothing_is_overwritten(env: Env) -> None:
    item = env.queue("c1")
    rita, ravi = sign_in(env.client(), "rita"), sign_in(env.client(), "ravi")
    token_rita = csrf_of(rita.get(f"/console/review/{item}").text)
    token_ravi = csrf_of(ravi.get(f"/console/review/{item}").text)
    assert rita.post(f"/console/review/{item}", data={
        "decision": "allow", "csrf_token": token_rita}).status_code == 303
    r = ravi.post(f"/console/review/{item}", data={"decision": "block",
                                                   "csrf_token": token_ravi})
    assert r.status_code == 409
    assert "Someone decided first" in r.text and "<strong>rita</strong>" in r.text
    assert env.store.get(item).status == "allow"
    assert [a["actor"] for a in env.store.audit(content_id="c1")] == ["moderation_text", "rita"]


def test_content_is_escaped(env: Env) -> None:
    payload = ('<script>alert(1)</script><img src=x onerror="alert(2)">'
               '<a href="javascript:alert(3)">x</a>')
    item = env.queue("xss", payload)
    c = sign_in(env.client(), "rita")
    for path in ("/console/review", f"/console/review/{item}"):
        html = c.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html
        assert '<a href="javascript:' not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_reviewer_cannot_reach_the_admin_pages_or_rollout_actions(env: Env) -> None:
    c = sign_in(env.client(), "rita")
    assert c.get("/console/audit").status_code == 403
    assert c.get("/console/rollout/ranker/rollback").status_code == 403
    page = c.get("/console/review")
    r = c.post("/console/rollout/ranker/rollback", data={"confirm": "yes",
                                                        "csrf_token": csrf_of(page.text)})
    assert r.status_code == 403
    assert env.services.rollout_controller.calls == [] or all(
        n == "status" for n, _ in env.services.rollout_controller.calls)
    assert "Audit log" not in c.get("/console/review").text


def test_an_admin_rolls_back_after_confirming(env: Env) -> None:
    c = sign_in(env.client(), "ada")
    page = c.get("/console/rollout/ranker/rollback")
    assert page.status_code == 200 and "Roll back the ranker stage?" in page.text
    r = c.post("/console/rollout/ranker/rollback", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303  # not confirmed: back to the confirmation
    assert ("rollback", ("ranker",)) not in env.services.rollout_controller.calls
    r = c.post("/console/rollout/ranker/rollback", data={"confirm": "yes",
                                                        "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/console/rollout?done=rollback:ranker"
    assert ("rollback", ("ranker",)) in env.services.rollout_controller.calls
    assert "The ranker stage was rolled back." in c.get(r.headers["location"]).text
    assert c.get("/console/audit").status_code == 200


def test_disable_and_rotate_end_sessions_at_once(env: Env) -> None:
    c = sign_in(env.client(), "rita")
    assert c.get("/console/review").status_code == 200
    env.users.set_password("rita", env.users.require("rita").password_hash)  # a rotation
    assert c.get("/console/review").status_code == 303
    sign_in(c, "rita")
    env.users.set_disabled("rita", True)
    assert c.get("/console/review").status_code == 303
    page = c.get("/console/login")
    r = c.post("/console/login", data={"name": "rita", "password": "rita-password-1",
                                       "csrf_token": csrf_of(page.text)})
    assert r.status_code == 401


def test_logout_needs_its_token_and_ends_the_session(env: Env) -> None:
    c = sign_in(env.client(), "rita")
    assert c.post("/console/logout", data={}).status_code == 403
    page = c.get("/console/review")
    r = c.post("/console/logout", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    assert c.get("/console/review").status_code == 303


def test_the_api_records_the_authenticated_caller_never_the_body_name(env: Env) -> None:
    a, b = env.queue("c1"), env.queue("c2")
    c = env.client()
    r = c.post(f"/v1/review/{a}", headers=basic("rita"),
               json={"decision": "block", "reviewer": "somebody-else"})
    assert r.status_code == 200, r.text
    assert r.json()["decided_by"] == "rita"
    assert r.headers["deprecation"] == "true" and "ignored" in r.headers["warning"]
    r = c.post(f"/v1/review/{b}", headers={"authorization": f"Bearer {TOKEN}"},
               json={"decision": "allow", "reviewer": "rita"})
    assert r.status_code == 200 and r.json()["decided_by"] == "token:admin"
    actors = [row["actor"] for row in env.store.audit() if row["source"] == "reviewer"]
    assert actors == ["rita", "token:admin"]


def test_the_api_refuses_bad_credentials_and_reviewers_on_admin_routes(env: Env) -> None:
    item = env.queue("c1")
    c = env.client()
    assert c.get("/v1/review").status_code == 401
    assert c.get("/v1/review", headers=basic("rita", "wrong-password")).status_code == 403
    assert c.get("/v1/review", headers=basic("rita")).status_code == 200
    assert c.get("/v1/admin/rollout", headers=basic("rita")).status_code == 403
    env.users.set_disabled("rita", True)
    assert c.post(f"/v1/review/{item}", headers=basic("rita"),
                  json={"decision": "allow"}).status_code == 403
    assert env.store.get(item).status == "pending"


def test_the_queue_filters_by_label_policy_and_age(env: Env) -> None:
    env.queue("a", flagged=("abuse",), policy="p1")
    env.queue("s", flagged=("spam",), policy="p2")
    c = sign_in(env.client(), "rita")
    html = c.get("/console/review?label=spam").text
    assert "1 pending" in html and ">s<" not in html
    assert "#2" in html and "#1<" not in html
    assert "1 pending" in c.get("/console/review?policy=p1").text
    assert "0 pending" in c.get("/console/review?older_than=1d").text
    bad = c.get("/console/review?label=<b>&older_than=soon")
    assert bad.status_code == 200 and "older_than: an age" in bad.text and "<b>" not in bad.text


def test_an_image_shows_as_the_queues_thumbnail_or_says_none_was_kept(env: Env) -> None:
    with_thumb = env.store.record_model_decision(
        content_id="img1", decision="review", model="moderation_image", policy_version="p1",
        request_id="r", text=None, has_image=True, author_id=None, scores={"nudity": 0.5},
        flagged_labels=["nudity"], reasons=[], model_versions={}, thumbnail=b"RIFF-webp")
    without = env.store.record_model_decision(
        content_id="img2", decision="review", model="moderation_image", policy_version="p1",
        request_id="r", text=None, has_image=True, author_id=None, scores={"nudity": 0.5},
        flagged_labels=["nudity"], reasons=[], model_versions={})
    c = sign_in(env.client(), "rita")
    assert f'src="/console/review/{with_thumb}/thumbnail"' in c.get(
        f"/console/review/{with_thumb}").text
    r = c.get(f"/console/review/{with_thumb}/thumbnail")
    assert (r.status_code, r.content, r.headers["content-type"]) == (
        200, b"RIFF-webp", "image/webp")
    page = c.get(f"/console/review/{without}").text
    assert "<img" not in page and "no thumbnail was kept" in page
    assert c.get(f"/console/review/{without}/thumbnail").status_code == 404
    assert env.client().get(f"/console/review/{with_thumb}/thumbnail").status_code == 303
