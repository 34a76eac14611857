"""Rollouts by version through the model registry, against the running stack: a version only
the registry (on an S3 API server) holds is pulled by the controller and the replicas when a
config names it, serves its share with no client error, is recorded as serving, and is
rolled back by version; a version with one corrupt byte in the store is refused at apply
with the field and the file named, the stack keeps serving, and the failure shows in the
metrics and in /readyz."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from funnel.contracts.bundle import write_manifest
from tests.integration.conftest import S3Registry, Stack

pytestmark = pytest.mark.integration


def outside_copy(src: Path, version: str, where: Path) -> Path:
    """A new version of the bundle in `where` (not the stack's bundle root)."""
    dst = where / version
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["version"] = version
    for key in ("files", "format_version"):
        m.pop(key, None)
    write_manifest(dst, m)
    return dst


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(headers={"authorization": f"Bearer {stack.admin_token}"},
                      timeout=180) as c:
        yield c


@pytest.fixture(autouse=True)
def no_rollout_after(stack: Stack, admin: httpx.Client) -> Iterator[None]:
    yield
    assert admin.put(f"{stack.url}/v1/admin/rollout", json={}).status_code == 200


def canary(primary: str, version: str, weight: float = 50) -> dict[str, Any]:
    return {"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": primary, "weight": 100 - weight},
        {"name": "candidate", "bundle_version": version, "weight": weight}]}}}


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name))


def test_a_canary_by_version_is_pulled_from_s3_and_rolled_back_by_version(
        stack: Stack, admin: httpx.Client, s3_registry: S3Registry,
        tmp_path: Path) -> None:
    src = Path(stack.bundle).resolve()
    primary = json.loads((src / "manifest.json").read_text())["version"]
    version = f"{primary}-reg"
    reg = s3_registry.open()
    try:
        reg.push(outside_copy(src, version, tmp_path))
    finally:
        reg.close()
    root = src.parent
    assert not (root / version).exists()  # only the registry has it

    users = [int(u) for u in pd.read_parquet(src / "catalog" / "users.parquet")["user_id"]]
    log: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as c:
            k = 0
            while not stop.is_set():
                r = c.post(f"{stack.url}/v1/feed",
                           json={"user_id": users[k % len(users)], "limit": 10})
                k += 1
                body = r.json() if r.status_code == 200 else {}
                log.append((r.status_code, body.get("model_versions", {}).get("ranker")))
                time.sleep(0.02)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        time.sleep(1)
        r = admin.put(f"{stack.url}/v1/admin/rollout", json=canary(primary, version))
        assert r.status_code == 200, r.text
        assert (root / version / "manifest.json").is_file()  # pulled into the bundle root
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            served = Counter(v for s, v in log if s == 200)
            if served[version] >= 20 and served[primary] >= 20:
                break
            time.sleep(0.5)
        reg = s3_registry.open()
        try:
            rec = reg.show(version)
            assert rec.status == "serving" and ("ranker", "candidate") in rec.serving
            assert rec.promoted_by == "rollout:api"
        finally:
            reg.close()

        # rollback by version: the config names the first version alone
        n_before = len(log)
        r = admin.put(f"{stack.url}/v1/admin/rollout", json={"stages": {"ranker": {
            "variants": [{"name": "control", "bundle_version": primary, "weight": 100}]}}})
        assert r.status_code == 200, r.text
        time.sleep(3)  # the replicas adopt the table at their next report
        n_after = len(log)
        time.sleep(3)
    finally:
        stop.set()
        t.join(30)
    statuses = Counter(s for s, _ in log)
    assert set(statuses) == {200}, statuses  # zero client errors throughout
    served = Counter(v for _, v in log)
    assert served[version] >= 20 and served[primary] >= 20, served
    assert n_after > n_before
    assert {v for _, v in log[n_after:]} == {primary}, "rolled back to the first version"
    reg = s3_registry.open()
    try:
        assert reg.show(version).status == "staged"  # serves nowhere now
        assert reg.retire(version).status == "retired"
    finally:
        reg.close()


def test_a_corrupt_version_in_the_store_is_refused_and_the_stack_keeps_serving(
        stack: Stack, admin: httpx.Client, s3_registry: S3Registry,
        tmp_path: Path) -> None:
    src = Path(stack.bundle).resolve()
    primary = json.loads((src / "manifest.json").read_text())["version"]
    version = f"{primary}-corrupt"
    reg = s3_registry.open()
    try:
        reg.push(outside_copy(src, version, tmp_path))
        key = reg.store.key(version, "triton/ranker/1/model.pt")
        data = bytearray(reg.store.fs.cat_file(key))
        data[len(data) // 2] ^= 0x01  # one byte
        reg.store.fs.pipe_file(key, bytes(data))
    finally:
        reg.close()
    before = metric(httpx.get(f"{stack.url}/metrics", timeout=30).text,
                    'funnel_bundle_pulls_total{result="failed"}')

    r = admin.put(f"{stack.url}/v1/admin/rollout", json=canary(primary, version))
    assert r.status_code == 422, r.text
    [field] = r.json()["detail"]
    assert field["field"] == "stages.ranker.variants[1].bundle_version"
    assert "triton/ranker/1/model.pt" in field["message"], field
    assert not (src.parent / version).exists()  # nothing of it was kept

    feed = httpx.post(f"{stack.url}/v1/feed", json={"user_id": 1, "limit": 5}, timeout=30)
    assert feed.status_code == 200 and feed.json()["model_versions"]["ranker"] == primary
    after = metric(httpx.get(f"{stack.url}/metrics", timeout=30).text,
                   'funnel_bundle_pulls_total{result="failed"}')
    assert after >= before + 1
    # the controller's failure reaches the replicas with their next routing table
    deadline = time.monotonic() + 30
    while True:
        ready = httpx.get(f"{stack.url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text  # still ready: it serves what it has
        detail = ready.json().get("detail", {}).get("registry", "")
        if version in detail or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert version in detail and "triton/ranker/1/model.pt" in detail, ready.json()
