"""The console in a real browser (headless Chromium through Selenium) against the running
stack: sign-in, deciding with the keyboard, a conflict between two reviewers, an XSS payload,
CSRF, roles, the drift report, a rollback from the rollout page, and axe-core's
accessibility check on every page. The review items are real rows of the stack's review
database, each test's under a policy version of its own (other tests share the queue)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serve.review.store import SqlReviewStore
from tests.integration.browser import axe_violations, screenshot, start_chromium
from tests.integration.conftest import FUNNEL, Stack

pytestmark = pytest.mark.integration
PASSWORDS = {"rita": "rita-browser-password", "ravi": "ravi-browser-password",
             "ada": "ada-browser-password"}
ROLES = {"rita": "reviewer", "ravi": "reviewer", "ada": "admin"}
COLD = 60_000_000
# every page the console has; each test that shows one adds its axe result here
AXE: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture(scope="module")
def accounts(stack: Stack) -> dict[str, str]:
    """The console's accounts, made with `funnel users add` as an operator would."""
    assert stack.review is not None
    for name, role in ROLES.items():
        r = subprocess.run([*FUNNEL, "users", "add", name, "--role", role, "--password-stdin",
                            "--database-url", stack.review.direct_url],
                           input=PASSWORDS[name] + "\n", capture_output=True, text=True,
                           timeout=120, check=False)
        assert r.returncode == 0 or "exists" in r.stderr, r.stderr[-2000:]
        assert PASSWORDS[name] not in r.stdout + r.stderr  # never echoed
    return PASSWORDS


@pytest.fixture(scope="module")
def queue(stack: Stack) -> Iterator[SqlReviewStore]:
    assert stack.review is not None
    store = SqlReviewStore(stack.review.direct_url)
    yield store
    store.close()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    yield from start_chromium()


def enqueue(store: SqlReviewStore, policy: str, texts: list[str],
            image: bytes | None = None) -> list[int]:
    """Queue items as moderation does (`image`: the thumbnail it keeps of the image)."""
    ids = []
    for k, text in enumerate(texts):
        item = store.record_model_decision(
            content_id=f"{policy}-{k}", decision="review", model="moderation_text",
            policy_version=policy, request_id=f"browser-{k}", text=text,
            has_image=image is not None, thumbnail=image,
            author_id=7, scores={"hate": 0.61, "spam": 0.12}, flagged_labels=["hate"],
            reasons=["hate: 0.610 >= review_at 0.50"], model_versions={"moderation_text": "b"})
        assert item is not None
        ids.append(item)
    return ids


def policy() -> str:
    return f"browser-{uuid.uuid4().hex[:10]}"


def wait(driver: Any, cond: Any, timeout: float = 30.0) -> Any:
    """`cond` true within `timeout`; a page replaced mid-check (the next page loading) is
    checked again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException)).until(cond)


def sign_in(driver: Any, stack: Stack, name: str, then: str = "/console/review") -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{stack.url}/console/login?next={then}")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    wait(driver, lambda d: "/console/login" not in d.current_url)
    assert name in driver.find_element(By.CSS_SELECTOR, ".who").text


def check_axe(driver: Any, page: str) -> None:
    AXE[page] = axe_violations(driver)


def press(driver: Any, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    old = driver.find_element(By.TAG_NAME, "html")
    ActionChains(driver).send_keys(key).perform()
    wait(driver, ec.staleness_of(old))


def h1(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "h1").text)


def test_sign_in_decide_three_items_with_the_keyboard_and_sign_out(
        stack: Stack, accounts: dict[str, str], queue: SqlReviewStore, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    pv = policy()
    ids = enqueue(queue, pv, ["first post to look at", "second post, a line\nand another",
                              "third post"])
    driver.delete_all_cookies()
    driver.get(f"{stack.url}/console/review")
    assert "/console/login" in driver.current_url  # signed out: sent to sign in
    check_axe(driver, "login")
    screenshot(driver, "login")
    sign_in(driver, stack, "rita", then=f"/console/review?policy={pv}")
    assert "3 pending" in h1(driver)
    check_axe(driver, "queue")
    screenshot(driver, "queue")
    press(driver, "o")  # the oldest item
    assert h1(driver) == f"Review item #{ids[0]}"
    check_axe(driver, "item")
    screenshot(driver, "item")
    for key, nxt in (("a", ids[1]), ("b", ids[2])):
        press(driver, key)
        assert h1(driver) == f"Review item #{nxt}", driver.page_source[:2000]
    press(driver, "a")  # the last: back to the (now empty) filtered queue
    assert "0 pending" in h1(driver)
    decided = {i: queue.get(i) for i in ids}
    assert [(d.status, d.decided_by) for d in decided.values()] == [
        ("allow", "rita"), ("block", "rita"), ("allow", "rita")]
    driver.find_element(By.CSS_SELECTOR, "header form button").click()  # sign out
    wait(driver, lambda d: "/console/login" in d.current_url)
    driver.get(f"{stack.url}/console/review")
    assert "/console/login" in driver.current_url


def test_two_reviewers_on_one_item_the_second_sees_the_conflict(
        stack: Stack, accounts: dict[str, str], queue: SqlReviewStore, driver: Any) -> None:
    import io

    from PIL import Image
    from selenium.webdriver.common.by import By

    from serve.moderation.media import thumbnail_webp

    png = io.BytesIO()
    Image.new("RGB", (800, 400), (30, 90, 160)).save(png, format="PNG")
    pv = policy()
    [item] = enqueue(queue, pv, ["a post two reviewers open at once"],
                     image=thumbnail_webp(png.getvalue()))
    sign_in(driver, stack, "ravi", then=f"/console/review/{item}")
    assert h1(driver) == f"Review item #{item}"
    # the image is the queue's own thumbnail, served by the console, and it loads
    img = driver.find_element(By.CSS_SELECTOR, "img.thumb")
    assert img.get_attribute("src") == f"{stack.url}/console/review/{item}/thumbnail"
    assert wait(driver, lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", img)) == 320
    # rita, on her own, decides first (through the API, with her own credentials)
    r = httpx.post(f"{stack.url}/v1/review/{item}", json={"decision": "block"},
                   auth=("rita", PASSWORDS["rita"]), timeout=60)
    assert r.status_code == 200, r.text
    driver.find_element(By.CSS_SELECTOR, "button[value=allow]").click()
    box = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".conflict"))[0]
    assert "Someone decided first" in box.text and "rita" in box.text and "block" in box.text
    check_axe(driver, "conflict")
    screenshot(driver, "conflict")
    got = queue.get(item)
    assert (got.status, got.decided_by) == ("block", "rita")  # nothing overwritten


XSS = ('<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
       '<a href="javascript:window.__xss = 3">click me</a>')


def test_an_xss_payload_is_shown_as_text_and_runs_nothing(
        stack: Stack, accounts: dict[str, str], queue: SqlReviewStore, driver: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    pv = policy()
    [item] = enqueue(queue, pv, [XSS])
    sign_in(driver, stack, "rita", then=f"/console/review?policy={pv}")
    assert "<script>window.__xss" in driver.find_element(By.CSS_SELECTOR, "td.preview").text
    driver.get(f"{stack.url}/console/review/{item}")
    assert driver.find_element(By.CSS_SELECTOR, "pre.text").text == XSS  # shown, as text
    for a in driver.find_elements(By.TAG_NAME, "a"):  # the link is text, not a link
        assert not (a.get_attribute("href") or "").startswith("javascript:")
    assert not driver.find_elements(By.CSS_SELECTOR, "main img[src='x']")
    time.sleep(0.5)
    assert driver.execute_script("return window.__xss === undefined")
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - no dialog opened


def test_a_form_without_or_with_a_wrong_csrf_token_is_refused(
        stack: Stack, accounts: dict[str, str], queue: SqlReviewStore, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    pv = policy()
    [item] = enqueue(queue, pv, ["a post"])
    sign_in(driver, stack, "rita", then=f"/console/review/{item}")
    for tamper in ("el.remove()", "el.value = 'forged-token'"):
        driver.execute_script("const el = document.querySelector("
                              "'form.decide input[name=csrf_token]'); " + tamper)
        driver.find_element(By.CSS_SELECTOR, "button[value=block]").click()
        wait(driver, lambda d: h1(d) == "Form refused")
        assert "CSRF" in driver.find_element(By.CSS_SELECTOR, "main").text
        assert queue.get(item).status == "pending"
        driver.get(f"{stack.url}/console/review/{item}")
    check_axe(driver, "item-again")
    # a page of another site cannot post either: its form has no token, and the cookie is
    # SameSite=Strict
    driver.get("data:text/html,<form method=post action='" + stack.url +
               f"/console/review/{item}'><input name=decision value=block>"
               "<button id=go>go</button></form>")
    driver.find_element(By.ID, "go").click()
    time.sleep(1.0)
    assert queue.get(item).status == "pending"


def test_a_reviewer_cannot_reach_the_admin_pages_or_the_rollout_actions(
        stack: Stack, accounts: dict[str, str], driver: Any) -> None:
    from selenium.webdriver.common.by import By

    sign_in(driver, stack, "rita")
    nav = driver.find_element(By.CSS_SELECTOR, "header nav").text
    assert "Audit log" not in nav and "Rollout" in nav
    for path in ("/console/audit", "/console/rollout/ranker/rollback",
                 "/console/rollout/ranker/promote"):
        driver.get(f"{stack.url}{path}")
        assert h1(driver) == "Admins only", path
    check_axe(driver, "forbidden")
    screenshot(driver, "forbidden")
    driver.get(f"{stack.url}/console/rollout")
    assert not driver.find_elements(By.CSS_SELECTOR, "a[href*='/rollback'], a[href*='/promote']")
    # and posting the action directly is refused too (a valid token of her own session)
    token = driver.find_element(By.CSS_SELECTOR, "header input[name=csrf_token]")
    driver.execute_script(
        "const f = document.createElement('form'); f.method = 'post';"
        "f.action = '/console/rollout/ranker/rollback';"
        "f.innerHTML = '<input name=confirm value=yes><input name=csrf_token value=\"' + "
        "arguments[0] + '\">'; document.body.append(f); f.submit();",
        token.get_attribute("value"))
    wait(driver, lambda d: h1(d) == "Admins only")


def test_the_drift_page_links_a_report_that_opens(
        stack: Stack, accounts: dict[str, str], driver: Any) -> None:
    from selenium.webdriver.common.by import By

    with httpx.Client(timeout=60) as c:
        for u in range(COLD, COLD + 60):
            assert c.post(f"{stack.url}/v1/feed", json={"user_id": u, "limit": 10}
                          ).status_code == 200
    time.sleep(1.5)  # the impression log's flush interval is 0.5 s
    r = subprocess.run([*FUNNEL, "drift", "run", "--window", "3h", "--log",
                        str(stack.impressions), "--bundle", str(stack.bundle), "--out",
                        str(stack.drift_reports), "--min-rows", "20"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    stamp = sorted(p.name for p in stack.drift_reports.iterdir())[-1]
    assert json.loads((stack.drift_reports / stamp / "summary.json").read_text())["report"]
    sign_in(driver, stack, "rita", then="/console/drift")
    assert h1(driver) == "Drift monitors"
    states = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "h2 .state")]
    assert len(states) == 3 and all(s in ("firing", "pending", "ok", "no verdict")
                                    for s in states)
    check_axe(driver, "drift")
    screenshot(driver, "drift")
    link = driver.find_element(By.CSS_SELECTOR, f"a[href='/console/drift/{stamp}/report']")
    link.click()
    wait(driver, lambda d: f"/console/drift/{stamp}/report" in d.current_url)
    # Evidently's page renders itself with its scripts (allowed in the report's sandbox): the
    # drift summary it draws is visible text, not only the data it carries
    wait(driver, lambda d: "Drifted Columns" in d.find_element(By.TAG_NAME, "body").text
         or "Drift is detected" in d.find_element(By.TAG_NAME, "body").text, timeout=60)
    assert "Form refused" not in driver.page_source


def test_a_rollback_from_the_rollout_page_takes_effect(
        stack: Stack, accounts: dict[str, str], driver: Any) -> None:
    from selenium.webdriver.common.by import By

    from tests.integration.test_rollout import copy_bundle

    src = stack.bundle.resolve()
    primary = json.loads((src / "manifest.json").read_text())["version"]
    canary = copy_bundle(src, f"{primary}-console")
    admin = httpx.Client(headers={"authorization": f"Bearer {stack.admin_token}"},
                         timeout=120)
    config = {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": primary, "weight": 50},
                     {"name": "candidate", "bundle_version": canary, "weight": 50}],
        "guardrails": [{"metric": "error_rate", "max": 0.5, "min_samples": 10}],
        "promotion": {"steps": [{"weight": 50, "min_requests": 1_000_000},
                                {"weight": 100}], "auto_rollback": True,
                      "error_budget": 1000}}}}
    try:
        r = admin.put(f"{stack.url}/v1/admin/rollout", json=config)
        assert r.status_code == 200, r.text
        with httpx.Client(timeout=60) as c:
            for u in range(COLD + 1000, COLD + 1040):
                c.post(f"{stack.url}/v1/feed", json={"user_id": u, "limit": 10})
        sign_in(driver, stack, "ada", then="/console/rollout")
        section = driver.find_element(By.ID, "s-ranker").find_element(By.XPATH, "..")
        assert "canary" in section.text and "candidate" in section.text
        check_axe(driver, "rollout")
        screenshot(driver, "rollout")
        section.find_element(By.CSS_SELECTOR, "a[href='/console/rollout/ranker/rollback']"
                             ).click()
        wait(driver, lambda d: h1(d) == "Roll back the ranker stage?")
        check_axe(driver, "confirm")
        screenshot(driver, "confirm")
        driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
        notice = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".notice"))[0]
        assert notice.text == "The ranker stage was rolled back."
        st = admin.get(f"{stack.url}/v1/admin/rollout").json()["stages"]["ranker"]
        assert st["status"] == "rolled_back", st
        assert st["weights"] == {"control": 100.0, "candidate": 0.0}
        [d] = [d for d in admin.get(f"{stack.url}/v1/admin/rollout").json()["decisions"]
               if d["action"] in ("rollback", "manual_rollback")]
        with httpx.Client(timeout=60) as c:
            served = {c.post(f"{stack.url}/v1/feed", json={"user_id": u, "limit": 10}
                             ).json()["variants"]["ranker"]
                      for u in range(COLD + 2000, COLD + 2030)}
        assert served == {"control"}, (served, d)
    finally:
        assert admin.put(f"{stack.url}/v1/admin/rollout", json={}).status_code == 200
        admin.close()


def test_the_audit_log_shows_who_decided_through_the_console_and_the_api(
        stack: Stack, accounts: dict[str, str], queue: SqlReviewStore, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    pv = policy()
    a, b, c = enqueue(queue, pv, ["one", "two", "three"])
    sign_in(driver, stack, "rita", then=f"/console/review/{a}")
    press(driver, "b")
    r = httpx.post(f"{stack.url}/v1/review/{b}", timeout=60, auth=("ravi", PASSWORDS["ravi"]),
                   json={"decision": "allow", "reviewer": "mallory"})
    assert r.status_code == 200 and r.json()["decided_by"] == "ravi", r.text
    r = httpx.post(f"{stack.url}/v1/review/{c}", timeout=60, json={"decision": "block"},
                   headers={"authorization": f"Bearer {stack.admin_token}"})
    assert r.status_code == 200 and r.json()["decided_by"] == "token:admin", r.text
    sign_in(driver, stack, "ada", then="/console/audit")
    rows = {}
    for k in range(3):
        driver.get(f"{stack.url}/console/audit?content_id={pv}-{k}")
        cells = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "tbody tr:first-child td")]
        rows[k] = (cells[3], cells[4], cells[5])  # who, source, decision
    assert rows == {0: ("rita", "reviewer", "block"), 1: ("ravi", "reviewer", "allow"),
                    2: ("token:admin", "reviewer", "block")}
    assert "mallory" not in driver.page_source
    driver.get(f"{stack.url}/console/audit")
    check_axe(driver, "audit")
    screenshot(driver, "audit")


def test_no_page_has_a_serious_or_critical_accessibility_violation() -> None:
    pages = {"login", "queue", "item", "conflict", "forbidden", "drift", "rollout", "confirm",
             "audit"}
    missing = pages - set(AXE)
    if missing:
        pytest.skip(f"the tests that visit {sorted(missing)} did not run")
    bad = {p: v for p, v in AXE.items() if v}
    assert not bad, json.dumps(bad, indent=1)
