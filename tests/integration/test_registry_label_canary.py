"""A moderation head with one more label, canaried by version from the model registry.

Two tiny bundles go to the registry on an S3 API server: the session's, and one trained on
the same synthetic feed with a `self_harm` label added. `funnel serve --bundle-version`
starts on the first, pulled from S3 into an empty bundle root; the second is applied as a
moderation canary by version under continuous `/v1/moderate` traffic. Both serve their
shares with no client error, the canary's responses carry `self_harm`, `funnel rollout
promote` makes it serve everything, and a config naming the first version alone rolls
back to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from funnel.contracts.errors import UnknownVersionError
from serve.config import DEFAULT_POLICY
from tests.integration.conftest import ADMIN_TOKEN, FUNNEL, S3Registry, write_serve_config

pytestmark = pytest.mark.integration

TEXTS = ("I keep thinking about hurting myself", "the rescue cat naps in the sun all day",
         "click here to win free money now", "our team won the match last night")


@dataclass(frozen=True)
class Versions:
    first: str
    second: str  # one more moderation label: self_harm


def _version(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["version"])


@pytest.fixture(scope="module")
def versions(tiny_bundle: Path, s3_registry: S3Registry,
             tmp_path_factory: pytest.TempPathFactory) -> Versions:
    first = _version(tiny_bundle.resolve())
    reg = s3_registry.open()
    try:
        try:
            reg.show(first)
        except UnknownVersionError:
            reg.push(tiny_bundle.resolve())
    finally:
        reg.close()
    tmp = tmp_path_factory.mktemp("self-harm")
    env = {**os.environ, **s3_registry.env}
    r = subprocess.run([*FUNNEL, "data", "generate", "--profile", "tiny", "--extra-label",
                        "self_harm", "--out", str(tmp / "data")],
                       capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*FUNNEL, "train", "--profile", "tiny", "--dataset", str(tmp / "data"),
                        "--out", str(tmp / "artifacts"), "--push", "--registry",
                        s3_registry.url, "--registry-db", s3_registry.database_url],
                       capture_output=True, text=True, timeout=900, env=env, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    second = _version((tmp / "artifacts" / "latest").resolve())
    labels = json.loads((tmp / "artifacts" / "latest" / "manifest.json").read_text())[
        "models"]["moderation"]["labels"]
    assert labels[-1] == "self_harm" and len(labels) == 7, labels
    assert second != first
    return Versions(first, second)


@dataclass
class Server:
    url: str
    root: Path
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def server(versions: Versions, s3_registry: S3Registry,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`funnel serve --bundle-version FIRST` on an empty bundle root, the registry on S3,
    and a policy with thresholds for self_harm (dormant until the canary's head emits it)."""
    tmp = tmp_path_factory.mktemp("serve-by-version")
    config, port, _ = write_serve_config(tmp, grpc=False)
    policy = yaml.safe_load(Path(DEFAULT_POLICY).read_text())
    policy["version"] = "test-self-harm.1"
    policy["labels"]["self_harm"] = {"review_at": 0.3, "block_at": 0.9}
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    doc = yaml.safe_load(config.read_text())
    args = doc["applications"][0]["args"]
    args["bundle"] = str(tmp / "root" / "latest")  # nothing there: the root is empty
    args["registry"] = {"url": s3_registry.url, "database_url": s3_registry.database_url}
    args["moderation"]["policy"] = str(tmp / "policy.yaml")
    config.write_text(yaml.safe_dump(doc))
    ready, log = tmp / "ready.json", tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*FUNNEL, "serve", "--bundle-version", versions.first,
                                 "--config", str(config), "--ranker", "local",
                                 "--ready-file", str(ready)],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **s3_registry.env,
                                     "FUNNEL_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, \
                log.read_text(errors="replace")[-4000:]
            time.sleep(0.5)
        yield Server(f"http://127.0.0.1:{port}", tmp / "root", log, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


def moderation(first: str, second: str | None, weight: float = 50) -> dict[str, Any]:
    variants = [{"name": "control", "bundle_version": first,
                 "weight": 100 - (weight if second else 0)}]
    cfg: dict[str, Any] = {"stages": {"moderation": {"variants": variants}}}
    if second:
        variants.append({"name": "canary", "bundle_version": second, "weight": weight})
        cfg["stages"]["moderation"]["promotion"] = {
            "steps": [{"weight": weight, "min_requests": 1_000_000}, {"weight": 100}],
            "auto_rollback": True, "error_budget": 1000}
        # a tiny bundle's quality gate judges a head on a few dozen harmful texts; the
        # test is about shipping a label set, not about this head's quality
        cfg["allow_regression"] = True
    return cfg


def test_a_head_with_one_more_label_canaries_by_version_from_s3(
        server: Server, versions: Versions, s3_registry: S3Registry) -> None:
    first, second = versions.first, versions.second
    assert (server.root / first / "manifest.json").is_file()  # pulled from S3 at start
    assert not (server.root / second).exists()
    admin = httpx.Client(headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=180)
    log: list[tuple[int, str | None, tuple[str, ...]]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=60) as c:
            k = 0
            while not stop.is_set():
                r = c.post(f"{server.url}/v1/moderate",
                           json={"content_id": f"c-{k}", "text": TEXTS[k % len(TEXTS)]})
                k += 1
                body = r.json() if r.status_code == 200 else {}
                log.append((r.status_code, body.get("model_versions", {}).get(
                    "moderation_text"), tuple(body.get("labels", {}))))
                time.sleep(0.02)

    def wait_for(pred: Any, what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            assert time.monotonic() < deadline, f"{what}: {Counter(v for _, v, _ in log)}"
            time.sleep(0.5)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(log) >= 10, "first answers")
        r = admin.put(f"{server.url}/v1/admin/rollout", json=moderation(first, second))
        assert r.status_code == 200, r.text
        assert (server.root / second / "manifest.json").is_file()  # pulled at apply
        start = len(log)

        def shares() -> Counter[str | None]:
            return Counter(v for _, v, _ in log[start:])

        wait_for(lambda: shares()[first] >= 20 and shares()[second] >= 20, "both variants")
        reg = s3_registry.open()
        try:
            assert ("moderation", "canary") in reg.show(second).serving
        finally:
            reg.close()

        # on-call promotes: the canary serves everything
        cli = subprocess.run([*FUNNEL, "rollout", "promote", "moderation", "--url",
                              server.url], capture_output=True, text=True, timeout=120,
                             check=False, env={**os.environ, "FUNNEL_ADMIN_TOKEN": ADMIN_TOKEN})
        assert cli.returncode == 0, cli.stderr[-2000:]
        time.sleep(3)  # replicas adopt the table at their next report
        promoted = len(log)
        wait_for(lambda: sum(1 for _, v, _ in log[promoted:] if v == second) >= 20,
                 "promoted canary")
        status = admin.get(f"{server.url}/v1/admin/rollout").json()
        assert status["stages"]["moderation"]["weights"]["canary"] == 100.0, status
        # at 100 % the last step is reached: the controller completes the rollout, and the
        # canary's version serves the stage
        def complete() -> bool:
            st = admin.get(f"{server.url}/v1/admin/rollout").json()
            return bool(st["stages"]["moderation"]["status"] == "complete")

        wait_for(complete, "the rollout completing", timeout_s=60)

        # rollback by version: a config that names the first version alone
        r = admin.put(f"{server.url}/v1/admin/rollout", json=moderation(first, None))
        assert r.status_code == 200, r.text
        time.sleep(3)
        rolled = len(log)
        wait_for(lambda: len(log) >= rolled + 20, "after the rollback")
    finally:
        stop.set()
        t.join(60)
        admin.close()

    statuses = Counter(s for s, _, _ in log)
    assert set(statuses) == {200}, statuses  # zero client errors throughout
    during = log[start:promoted]
    by_version = Counter(v for _, v, _ in during)
    assert by_version[first] >= 20 and by_version[second] >= 20, by_version
    assert {v for _, v, _ in during} <= {first, second}
    # the canary's extra label is in its responses, and only in its
    assert all("self_harm" in labels for _, v, labels in during if v == second)
    assert not any("self_harm" in labels for _, v, labels in during if v == first)
    assert sum(1 for _, v, _ in log[promoted + 20:rolled] if v == second) > 0
    assert {v for _, v, _ in log[rolled:]} == {first}, "rolled back to the first version"
