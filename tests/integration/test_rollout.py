"""Canary and shadow rollout on the real stack: the session's Serve app and Triton, with two
more bundle versions written beside the session's bundle (a copy, and a copy whose index maps
its rows to the wrong items). Every test starts from no rollout and leaves none behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
COLD = 50_000_000  # user ids above the catalog's: cold start, the cheapest full request


def copy_bundle(src: Path, version: str, *, scramble_index: bool = False) -> str:
    """A new bundle version beside `src` (same models), manifest checksums rewritten."""
    from funnel.contracts.bundle import write_manifest

    dst = src.parent / version
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["version"] = version
    for key in ("files", "format_version"):
        m.pop(key, None)
    if scramble_index:  # index rows point at the wrong items: a broken retrieval index
        ids = np.load(dst / "index/item_ids.npy")
        np.save(dst / "index/item_ids.npy", np.random.default_rng(0).permutation(ids))
    write_manifest(dst, m)
    return version


@pytest.fixture(scope="module")
def versions(stack: Stack) -> dict[str, str]:
    src = Path(stack.bundle).resolve()
    primary = json.loads((src / "manifest.json").read_text())["version"]
    return {"primary": primary, "canary": copy_bundle(src, f"{primary}-canary"),
            "scrambled": copy_bundle(src, f"{primary}-scrambled", scramble_index=True)}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(headers={"authorization": f"Bearer {stack.admin_token}"},
                      timeout=120) as c:
        yield c


@pytest.fixture(autouse=True)
def no_rollout_after(stack: Stack, client: httpx.Client) -> Iterator[None]:
    yield
    r = client.put(f"{stack.url}/v1/admin/rollout", json={})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def known_users(stack: Stack) -> list[int]:
    users = pd.read_parquet(Path(stack.bundle).resolve() / "catalog" / "users.parquet")
    return [int(u) for u in users["user_id"]]


def apply(stack: Stack, client: httpx.Client, config: dict[str, Any]) -> httpx.Response:
    return client.put(f"{stack.url}/v1/admin/rollout", json=config)


def status(stack: Stack, client: httpx.Client) -> dict[str, Any]:
    r = client.get(f"{stack.url}/v1/admin/rollout")
    assert r.status_code == 200, r.text
    return r.json()


def feed(client: httpx.Client, stack: Stack, user: int, limit: int = 10, **headers: str
         ) -> dict[str, Any]:
    r = client.post(f"{stack.url}/v1/feed", json={"user_id": user, "limit": limit},
                    headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def many(stack: Stack, users: list[int], workers: int = 4, limit: int = 10
         ) -> list[dict[str, Any]]:
    with httpx.Client(timeout=60) as c, ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda u: feed(c, stack, u, limit), users))


def two_variants(versions: dict[str, str], canary_weight: float, stage: str = "ranker",
                 canary: str = "canary", **extra: Any) -> dict[str, Any]:
    return {"stages": {stage: {"variants": [
        {"name": "control", "bundle_version": versions["primary"],
         "weight": 100 - canary_weight},
        {"name": "candidate", "bundle_version": versions[canary], "weight": canary_weight,
         **extra.pop("canary_extra", {})}], **extra}}}


def test_refused_configs_name_the_field_and_the_old_config_keeps_serving(
        stack: Stack, client: httpx.Client, versions: dict[str, str]) -> None:
    assert apply(stack, client, two_variants(versions, 20)).status_code == 200
    before = status(stack, client)["revision"]
    good = two_variants(versions, 20)["stages"]["ranker"]
    bad = {
        "weights": ({"stages": {"ranker": {**good, "variants": [
            {**good["variants"][0], "weight": 70}, good["variants"][1]]}}},
            "stages.ranker", "sum to 100, got 90"),
        "stage": ({"stages": {"reranker": good}}, "stages.reranker", "'ranker'"),
        "version": ({"stages": {"ranker": {**good, "variants": [
            good["variants"][0], {**good["variants"][1], "bundle_version": "v-nope"}]}}},
            "stages.ranker.variants[1].bundle_version", "unknown bundle version 'v-nope'"),
        "sample rate": ({"stages": {"ranker": {**good, "shadows": [
            {"name": "s", "bundle_version": versions["canary"], "sample_rate": -0.5}]}}},
            "stages.ranker.shadows[0].sample_rate", "greater than or equal to 0"),
        "metric": ({"stages": {"ranker": {**good, "guardrails": [{"max": 0.1}]}}},
                   "stages.ranker.guardrails[0].metric", "Field required"),
    }
    for case, (config, field, message) in bad.items():
        r = apply(stack, client, config)
        assert r.status_code == 422, (case, r.text)
        detail = r.json()["detail"]
        assert any(d["field"] == field and message in d["message"] for d in detail), (
            case, detail)
    s = status(stack, client)
    assert s["revision"] == before
    assert s["stages"]["ranker"]["weights"] == {"control": 80.0, "candidate": 20.0}
    assert {feed(client, stack, COLD + u)["variants"]["ranker"] for u in range(40)} == {
        "control", "candidate"}


def test_the_cli_applies_refuses_and_reports(stack: Stack, versions: dict[str, str],
                                             tmp_path: Path) -> None:
    env = {"FUNNEL_ADMIN_TOKEN": stack.admin_token, "PATH": ""}
    cli = [sys.executable, "-m", "funnel", "rollout"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(two_variants({**versions, "canary": "v-nope"}, 10)))
    r = subprocess.run([*cli, "apply", str(bad), "--url", stack.url], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert "stages.ranker.variants[1].bundle_version" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(two_variants(versions, 10)))
    r = subprocess.run([*cli, "apply", str(good), "--url", stack.url], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cli, "status", "--url", stack.url, "--json"], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stages"]["ranker"]["weights"]["candidate"] == 10.0
    r = subprocess.run([*cli, "status", "--url", stack.url], env={"PATH": ""},
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "FUNNEL_ADMIN_TOKEN is not set" in r.stderr


def test_weights_hold_over_2000_users_and_each_keeps_its_variant(
        stack: Stack, client: httpx.Client, versions: dict[str, str]) -> None:
    # comparisons off: this test counts assignments, and 4,000 requests are its cost
    r = apply(stack, client, two_variants(versions, 30, compare_sample_rate=0))
    assert r.status_code == 200, r.text
    assert versions["canary"] in status(stack, client)["triton_models"]
    users = [COLD + u for u in range(2000)]
    t0 = time.monotonic()
    first = many(stack, users, limit=3)
    again = many(stack, users, limit=3)
    print(f"4,000 feed requests in {time.monotonic() - t0:.1f} s")
    got = {u: b["variants"]["ranker"] for u, b in zip(users, first, strict=True)}
    share = Counter(got.values())["candidate"] / len(users)
    # binomial sd at n=2000, p=0.3 is 0.0102: 4 sd
    assert abs(share - 0.30) < 0.041, share
    assert got == {u: b["variants"]["ranker"] for u, b in zip(users, again, strict=True)}
    for b in first:
        expected = versions["canary" if b["variants"]["ranker"] == "candidate" else "primary"]
        assert b["model_versions"]["ranker"] == expected


def test_slow_and_failing_shadows_never_reach_the_client(
        stack: Stack, client: httpx.Client, versions: dict[str, str],
        known_users: list[int]) -> None:
    users = known_users[:40]
    baseline = {u: feed(client, stack, u, **{"x-request-id": f"shadow-{u}"})
                for u in users}
    config = {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": versions["primary"],
                      "weight": 100}],
        "shadows": [{"name": "slow", "bundle_version": versions["canary"], "sample_rate": 1,
                     "fault": {"delay_ms": 200}},
                    {"name": "broken", "bundle_version": versions["canary"],
                     "sample_rate": 1, "fault": {"error_rate": 1.0}}]}}}
    assert apply(stack, client, config).status_code == 200
    for _ in range(3):
        for u in users:
            b = feed(client, stack, u, **{"x-request-id": f"shadow-{u}"})
            assert b["degraded"] == [] and b["variants"]["ranker"] == "control"
            assert b["items"] == baseline[u]["items"]  # shadows never change the response
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        v = status(stack, client)["stages"]["ranker"]["variants"]
        if v["slow"]["totals"].get("comparisons", 0) >= 10 and \
                v["broken"]["totals"].get("errors", 0) >= 10:
            break
        time.sleep(0.5)
    slow, broken = v["slow"], v["broken"]
    assert slow["window"]["overlap_at_k"]["10"] == pytest.approx(1.0)  # the same model
    assert slow["window"]["p99_ms"] >= 200
    assert broken["totals"]["errors"] == broken["totals"]["requests"] > 0
    metrics = httpx.get(f"{stack.url}/metrics", timeout=30).text
    assert 'funnel_rollout_agreement{measure="overlap_at_10",stage="ranker",variant="slow"}' \
        in metrics
    assert 'funnel_rollout_agreement{measure="rbo",stage="ranker",variant="slow"}' in metrics
    line = next(x for x in metrics.splitlines() if x.startswith(
        'funnel_rollout_errors_total{stage="ranker",variant="broken"}'))
    assert float(line.split()[-1]) >= 10
    # the shadows ran in the ShadowScorer, a process of its own at a lower CPU priority
    assert stack.serve_pid, "the stack's `funnel serve` pid is unknown"
    nice = replica_priority(stack.serve_pid)
    assert nice["ShadowScorer"] == (min(19, nice["FeedIngress"][0] + 10), os.SCHED_IDLE), nice
    assert nice["FeedIngress"][1] == os.SCHED_OTHER, nice
    # and the shadows' ranker version, which serves no client, runs in Triton's model
    # process in the idle class; the primary's does not
    assert model_process_policy(f"ranker-{versions['canary']}") == os.SCHED_IDLE
    assert model_process_policy("ranker") == os.SCHED_OTHER


def model_process_policy(model: str) -> int:
    """The scheduling policy of the newest Triton Python-backend process serving `model`
    (its command line ends with the instance name, `<model>_0_0`)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("triton_python_backend_stub") and \
                f"{model}_0_0" in cmd:
            found.append((p.info["create_time"], p.pid))
    assert found, f"no Triton model process for {model}"
    return os.sched_getscheduler(max(found)[1])


def replica_priority(serve_pid: int) -> dict[str, tuple[int, int]]:
    """(nice value, scheduling policy) of each Serve replica process below `funnel serve`,
    by deployment."""
    import psutil

    out = {}
    for p in psutil.Process(serve_pid).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
            if title.startswith("ray::ServeReplica:"):
                out[title.split()[0].split(":")[-1].split(".")[0]] = (
                    p.nice(), os.sched_getscheduler(p.pid))
        except (psutil.Error, OSError):
            continue
    return out


def test_a_failing_canary_is_rolled_back_within_its_error_budget(
        stack: Stack, client: httpx.Client, versions: dict[str, str]) -> None:
    budget = 10
    config = two_variants(
        versions, 50, canary_extra={"fault": {"error_rate": 0.2}},
        guardrails=[{"metric": "error_rate", "max": 0.05, "min_samples": 50}],
        promotion={"steps": [{"weight": 50, "min_requests": 100_000}, {"weight": 100}],
                   "auto_rollback": True, "error_budget": budget})
    assert apply(stack, client, config).status_code == 200, config
    failed = served = 0
    user = COLD + 100_000
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=60) as c:
        while time.monotonic() < deadline:
            batch = many(stack, list(range(user, user + 40)))
            user += 40
            for b in batch:
                if b["variants"]["ranker"] == "candidate":
                    served += 1
                    failed += "ranker" in b["degraded"]
            if status(stack, client)["stages"]["ranker"]["status"] == "rolled_back":
                break
        s = status(stack, client)
        st = s["stages"]["ranker"]
        assert st["status"] == "rolled_back", st
        assert st["weights"] == {"control": 100.0, "candidate": 0.0}
        assert 0 < failed <= budget, (failed, served)
        [d] = [d for d in s["decisions"] if d["action"] == "rollback"]
        assert "error budget spent" in d["reason"] or "error_rate" in d["reason"]
        after = [feed(c, stack, u) for u in range(user, user + 30)]
    assert {b["variants"]["ranker"] for b in after} == {"control"}
    assert all(b["degraded"] == [] for b in after)


def test_a_canary_ranker_doing_twice_the_work_costs_more_and_is_rolled_back(
        stack: Stack, client: httpx.Client, versions: dict[str, str],
        known_users: list[int]) -> None:
    """`fault.repeat: 2` makes every canary ranker call run the model twice: Triton does
    twice the rows for the canary's model, and the requests it serves cost more. The
    cost_ratio guardrail (canary CPU per request over the primary's) rolls it back, and
    `funnel rollout status` shows both variants' $/1k."""
    config = two_variants(
        versions, 50, canary_extra={"fault": {"repeat": 2}},
        guardrails=[{"metric": "cost_ratio", "max": 1.1, "min_samples": 150}],
        promotion={"steps": [{"weight": 50, "min_requests": 100_000}, {"weight": 100}],
                   "auto_rollback": True, "error_budget": 1000})
    assert apply(stack, client, config).status_code == 200, config
    deadline = time.monotonic() + 120
    seen: Counter[str] = Counter()
    k = 0
    before_rollback: dict[str, Any] = {}
    while time.monotonic() < deadline:
        batch = many(stack, [known_users[(k + i) % len(known_users)] for i in range(40)])
        k += 40
        seen.update(b["variants"]["ranker"] for b in batch)
        s = status(stack, client)
        st = s["stages"]["ranker"]
        if st["status"] == "rolled_back":
            break
        before_rollback = st
    st = status(stack, client)["stages"]["ranker"]
    assert st["status"] == "rolled_back", st
    assert seen["candidate"] >= 150 and seen["control"] >= 150, seen
    d = [d for d in status(stack, client)["decisions"] if d["action"] == "rollback"][-1]
    assert "cost_ratio" in d["reason"], d
    ratio = float(d["reason"].split("cost_ratio ")[1].split()[0])
    assert ratio > 1.1
    # the variants' $/1k since the config was applied: the canary's is the higher one
    v = st["variants"]
    assert v["candidate"]["usd_per_1k"] > v["control"]["usd_per_1k"] > 0, v
    t = {n: v[n]["totals"] for n in ("candidate", "control")}
    assert t["candidate"]["cost_core_s"] / t["candidate"]["cost_requests"] \
        > t["control"]["cost_core_s"] / t["control"]["cost_requests"], t
    assert before_rollback == {} or before_rollback["status"] == "canary"
    r = subprocess.run([sys.executable, "-m", "funnel", "rollout", "status", "--url",
                        stack.url], env={**os.environ, "FUNNEL_ADMIN_TOKEN": stack.admin_token,
                                         "COLUMNS": "200"},
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    print(d["reason"], "\n", r.stdout)  # shown with -s: the figures docs/cost.md quotes
    assert "$/1k" in r.stdout
    usd = {line.split()[1]: float(line.split("$")[1].split()[0])
           for line in r.stdout.splitlines() if line.startswith(("│ control", "│ candidate"))}
    assert usd["candidate"] > usd["control"] > 0, r.stdout


def test_twenty_config_changes_under_load_drop_no_request(
        stack: Stack, client: httpx.Client, versions: dict[str, str]) -> None:
    stop = threading.Event()
    codes: Counter[int] = Counter()
    degraded: Counter[str] = Counter()
    variants: Counter[str] = Counter()

    def load(worker: int) -> None:
        with httpx.Client(timeout=60) as c:
            u = COLD + 200_000 + worker * 1_000_000
            while not stop.is_set():
                u += 1
                try:
                    r = c.post(f"{stack.url}/v1/feed", json={"user_id": u, "limit": 10})
                except httpx.HTTPError as e:  # a dropped connection is a dropped request
                    codes[type(e).__name__] += 1  # type: ignore[index]
                    continue
                codes[r.status_code] += 1
                if r.status_code == 200:
                    b = r.json()
                    degraded.update(b["degraded"])
                    variants[b["variants"]["ranker"]] += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            weight = [10, 50, 90, 0][i % 4]
            config = two_variants(versions, weight) if i % 5 != 4 else {}
            r = apply(stack, client, config)
            assert r.status_code == 200, r.text
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert set(codes) == {200}, codes
    assert codes[200] > 50
    assert "ranker" not in degraded, degraded
    assert variants["candidate"] > 0 and variants["control"] > 0


def test_a_retrieval_canary_below_its_overlap_guardrail_is_not_promoted(
        stack: Stack, client: httpx.Client, versions: dict[str, str],
        known_users: list[int]) -> None:
    config = two_variants(
        versions, 20, stage="retrieval", canary="scrambled",
        guardrails=[{"metric": "overlap_at_k", "k": 50, "min": 0.5, "min_samples": 20}],
        promotion={"steps": [{"weight": 20, "min_requests": 10}, {"weight": 100}]})
    assert apply(stack, client, config).status_code == 200
    deadline = time.monotonic() + 90
    i = 0
    while time.monotonic() < deadline:
        many(stack, [known_users[(i + j) % len(known_users)] for j in range(40)])
        i += 40
        st = status(stack, client)["stages"]["retrieval"]
        if st["status"] != "canary":
            break
    s = status(stack, client)
    st = s["stages"]["retrieval"]
    assert st["status"] == "rolled_back", st
    actions = [d["action"] for d in s["decisions"] if d["stage"] == "retrieval"]
    assert "promote" not in actions and actions[-1] == "rollback"
    reason = s["decisions"][-1]["reason"]
    assert "overlap_at_k@50" in reason and "breaks min 0.5" in reason
    g = st["variants"]["candidate"]["totals"]
    assert g["comparisons"] >= 20


def test_a_corrupt_bundle_is_refused_and_the_old_config_keeps_serving(
        stack: Stack, client: httpx.Client, versions: dict[str, str]) -> None:
    src = Path(stack.bundle).resolve()
    bad = copy_bundle(src, f"{versions['primary']}-corrupt")
    with (src.parent / bad / "models" / "user_tower.pt").open("ab") as f:
        f.write(b"\0")  # one byte more: the checksum no longer matches
    assert apply(stack, client, two_variants(versions, 10)).status_code == 200
    before = status(stack, client)["revision"]
    r = apply(stack, client, two_variants({**versions, "canary": bad}, 10, stage="retrieval"))
    assert r.status_code == 422, r.text
    [d] = r.json()["detail"]
    assert d["field"] == "stages.retrieval.variants[1].bundle_version"
    assert "checksum mismatch" in d["message"] and "user_tower.pt" in d["message"]
    assert status(stack, client)["revision"] == before
    assert feed(client, stack, COLD)["degraded"] == []


def test_moderation_text_heads_canary_side_by_side(
        stack: Stack, client: httpx.Client, versions: dict[str, str]) -> None:
    config = two_variants(versions, 50, stage="moderation", shadows=[
        {"name": "shadow", "bundle_version": versions["canary"], "sample_rate": 1}])
    assert apply(stack, client, config).status_code == 200
    seen: Counter[str] = Counter()
    for i in range(30):
        r = client.post(f"{stack.url}/v1/moderate", json={
            "content_id": f"rollout-{i}", "text": f"have a look at my holiday photos {i}"})
        assert r.status_code == 200, r.text
        b = r.json()
        assert b["degraded"] == []
        seen[b["model_versions"]["moderation_text"]] += 1
    assert set(seen) == {versions["primary"], versions["canary"]}, seen
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        v = status(stack, client)["stages"]["moderation"]["variants"]
        if v["candidate"]["window"]["comparisons"] and v["shadow"]["window"]["comparisons"]:
            break
        time.sleep(0.5)
    for name in ("candidate", "shadow"):  # the same head: identical label rankings
        w = v[name]["window"]
        assert w["comparisons"] > 0 and w["overlap_at_k"]["10"] == pytest.approx(1.0)
        assert w["score_delta"] == pytest.approx(0.0, abs=1e-5)


def test_interleaved_pages_are_served_logged_and_reported(
        stack: Stack, client: httpx.Client, versions: dict[str, str],
        known_users: list[int], tmp_path: Path) -> None:
    """The candidate (a copy of the primary's models, served by Triton as a model of its
    own) interleaved into every primary request: each item names its team, the page is the
    primary's (the same model ranks the same), the log keeps the teams, and clicks on the
    candidate's items make `funnel experiment report` prefer it."""
    from datetime import UTC, datetime

    from tests.integration.test_monitoring import wait_for

    users = known_users[:30]
    config = two_variants(versions, 0, interleaving={"variant": "candidate",
                                                     "sample_rate": 1.0})
    r = apply(stack, client, config)
    assert r.status_code == 200, r.text
    assert status(stack, client)["stages"]["ranker"]["interleaving"]["variant"] == "candidate"
    started = datetime.now(UTC)
    clicks, pages = [], {}
    for u in users:
        rid = f"il-{u}"
        b = feed(client, stack, u, **{"x-request-id": rid})
        assert b["degraded"] == [] and b["variants"]["ranker"] == "control"
        teams = [i["explain"]["interleaving"]["team"] for i in b["items"]]
        assert all(i["explain"]["interleaving"]["candidate"] == "candidate"
                   for i in b["items"])
        for k in range(0, len(teams) - 1, 2):  # one pick per team in every round
            assert sorted(teams[k:k + 2]) == ["candidate", "control"]
        pages[rid] = [i["item_id"] for i in b["items"]]
        # a user who clicks the candidate's first item: the candidate wins the request
        first = next(i for i in b["items"] if i["explain"]["interleaving"]["team"] ==
                     "candidate")
        clicks.append({"request_id": rid, "user_id": u, "item_id": first["item_id"],
                       "event": "click", "timestamp": datetime.now(UTC).isoformat()})
    ev = httpx.post(f"{stack.url}/v1/events", json={"events": clicks}, timeout=30)
    assert ev.status_code == 202 and ev.json()["accepted"] == len(users), ev.text

    import pyarrow.dataset as ds

    def logged() -> Any:
        root = stack.impressions / "feed"
        t = ds.dataset(root, format="parquet", partitioning="hive").to_table(
            columns=["request_id", "team", "interleaved_variant"]).to_pandas()
        t = t[t["request_id"].str.startswith("il-")]
        return [t] if t["request_id"].nunique() == len(users) else None

    got = wait_for(logged)
    assert got is not None, "interleaved requests did not reach the impression log"
    rows = got[0]
    assert set(rows["team"].dropna().astype(int)) == {0, 1} and rows["team"].notna().all()
    assert set(rows["interleaved_variant"]) == {"candidate"}
    from tests.integration.test_events import read_events

    assert wait_for(lambda: len(read_events(stack, "il-")) >= len(users))
    out = tmp_path / "report.json"
    end = datetime.now(UTC)
    proc = subprocess.run(
        [sys.executable, "-m", "funnel", "experiment", "report", "ranker", "--log",
         str(stack.impressions), "--start", started.isoformat(), "--end", end.isoformat(),
         "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = json.loads(out.read_text())
    il = rep["interleaving"][0]
    assert il["variant"] == "candidate" and il["requests"] == len(users)
    assert il["preference"]["wins"] == len(users) and il["verdict"] == "candidate preferred"
    assert "interleaving (team-draft" in proc.stdout
    # an identical model ranks identically: each merged page is the page the primary alone
    # serves for the same request id (exploration is seeded by it)
    assert apply(stack, client, {}).status_code == 200
    for u in users:
        alone = feed(client, stack, u, **{"x-request-id": f"il-{u}"})
        assert [i["item_id"] for i in alone["items"]] == pages[f"il-{u}"]
        assert not any("interleaving" in i["explain"] for i in alone["items"])
