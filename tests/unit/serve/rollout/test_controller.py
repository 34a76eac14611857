"""RolloutController's logic without Ray: the deployment class called directly, over bundle
directories with real manifests and checksums, and a fake Triton client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from funnel.contracts.bundle import REQUIRED_FILES, point_latest, write_manifest
from serve.rollout.controller import RolloutController


class FakeTriton:
    def __init__(self) -> None:
        self.loaded: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.refuse: set[str] = set()

    def load_model(self, name: str, config: str, files: dict[str, bytes],
                   client_timeout: float) -> None:
        if name in self.refuse:
            raise RuntimeError("failed to load 'ranker-x': out of memory")
        assert b"class TritonPythonModel" in files["file:1/model.py"]
        self.loaded[name] = json.loads(config)
        self.files[name] = files

    def is_model_ready(self, name: str) -> bool:
        return name in self.loaded

    def unload_model(self, name: str) -> None:
        self.loaded.pop(name, None)


def make_bundle(root: Path, version: str, labels: list[str]) -> None:
    d = root / version
    for rel in REQUIRED_FILES:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(f"{version}:{rel}".encode())
    write_manifest(d, {"version": version, "models": {
        "ranker": {"path": "triton/ranker/1/model.pt", "dense_features": ["a", "b"]},
        "moderation": {"labels": labels}}})


@pytest.fixture
def controller(tmp_path: Path) -> tuple[Any, FakeTriton]:
    for v, labels in (("v1", ["spam"]), ("v2", ["spam"]), ("v3", ["spam", "hate"]),
                      ("v4", ["spam", "self_harm"])):
        make_bundle(tmp_path, v, labels)
    point_latest(tmp_path, tmp_path / "v1")
    cls = RolloutController.func_or_class  # the plain class under @serve.deployment
    ctrl = cls({"bundle": str(tmp_path / "latest")})
    fake = FakeTriton()
    ctrl.triton._client = fake
    return ctrl, fake


def ranker(canary: str = "v2", weight: float = 10) -> dict[str, Any]:
    return {"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": "v1", "weight": 100 - weight},
        {"name": "canary", "bundle_version": canary, "weight": weight}]}}}


def test_apply_loads_ranker_versions_into_triton_with_their_checksums(controller) -> None:
    ctrl, triton = controller
    out = asyncio.run(ctrl.apply(ranker()))
    assert out == {"ok": True, "revision": 1}
    cfg = triton.loaded["ranker-v2"]
    assert cfg["parameters"]["model_sha256"]["string_value"] == json.loads(
        (Path(ctrl.root) / "v2" / "manifest.json").read_text())["files"][
            "triton/ranker/1/model.pt"]
    assert cfg["model_warmup"][0]["batch_size"] == 1
    # the TorchScript travels with the request: Triton needs no access to this bundle root
    assert cfg["parameters"]["model_path"]["string_value"] == ""
    assert triton.files["ranker-v2"]["file:1/model.pt"] == (
        Path(ctrl.root) / "v2" / "triton/ranker/1/model.pt").read_bytes()
    table = asyncio.run(ctrl.report("r1", []))
    assert table["stages"]["ranker"]["variants"][1]["bundle_version"] == "v2"
    assert table["pending_start"] is False


def test_refusals_change_nothing(controller) -> None:
    ctrl, triton = controller
    asyncio.run(ctrl.apply(ranker()))
    out = asyncio.run(ctrl.apply(ranker(canary="v9")))
    assert out["ok"] is False and out["status"] == 422
    assert out["fields"][0]["field"] == "stages.ranker.variants[1].bundle_version"
    (Path(ctrl.root) / "v3" / "features" / "transform.json").write_text("tampered")
    out = asyncio.run(ctrl.apply(ranker(canary="v3")))
    assert out["ok"] is False and "checksum mismatch" in out["fields"][0]["message"]
    triton.refuse.add("ranker-v2")
    triton.loaded.clear()
    ctrl.triton.loaded.clear()
    out = asyncio.run(ctrl.apply(ranker(weight=20)))
    assert out["ok"] is False and out["status"] == 503 and "out of memory" in out["error"]
    status = asyncio.run(ctrl.status())
    assert status["revision"] == 1
    assert status["stages"]["ranker"]["weights"] == {"control": 90.0, "canary": 10.0}


def moderation(canary: str) -> dict[str, Any]:
    cfg = ranker(canary=canary)
    return {"stages": {"moderation": cfg["stages"]["ranker"]}}


def test_a_moderation_head_with_a_label_the_policy_lacks_is_refused(controller) -> None:
    ctrl, _ = controller
    # hate: not the serving head's, but the (default) policy has thresholds for it
    assert asyncio.run(ctrl.apply(moderation("v3")))["ok"] is True
    out = asyncio.run(ctrl.apply(moderation("v4")))
    assert out["ok"] is False and out["status"] == 422
    f = out["fields"][0]
    assert f["field"] == "stages.moderation.variants[1].bundle_version" and f["given"] == "v4"
    assert "emits text label(s) ['self_harm']" in f["message"]
    assert "add labels.self_harm" in f["message"]


def test_a_policy_with_the_new_label_lets_the_head_canary(tmp_path: Path) -> None:
    import yaml

    from serve.config import DEFAULT_POLICY

    for v, labels in (("v1", ["spam"]), ("v4", ["spam", "self_harm"])):
        make_bundle(tmp_path, v, labels)
    policy = yaml.safe_load(Path(DEFAULT_POLICY).read_text())
    policy["labels"]["self_harm"] = {"review_at": 0.1, "block_at": 0.6}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    cls = RolloutController.func_or_class
    ctrl = cls({"bundle": str(tmp_path / "v1"),
                "moderation": {"policy": str(tmp_path / "policy.yaml")}})
    assert asyncio.run(ctrl.apply(moderation("v4"))) == {"ok": True, "revision": 1}


def test_user_config_applies_in_place_and_a_bad_one_is_refused(controller) -> None:
    ctrl, _ = controller
    asyncio.run(ctrl.reconfigure({"rollout": ranker(weight=30)}))
    s = asyncio.run(ctrl.status())
    assert s["stages"]["ranker"]["weights"]["canary"] == 30.0 and s["user_config_error"] == ""
    asyncio.run(ctrl.reconfigure({"rollout": ranker(weight=130)}))
    s = asyncio.run(ctrl.status())
    assert s["stages"]["ranker"]["weights"]["canary"] == 30.0
    assert "less than or equal to 100" in s["user_config_error"]


def test_promote_and_rollback_answer_conflicts_as_refusals(controller) -> None:
    ctrl, _ = controller
    asyncio.run(ctrl.apply(ranker()))
    out = asyncio.run(ctrl.promote("ranker"))
    assert out["ok"] is False and out["status"] == 409 and "no promotion" in out["error"]
    assert asyncio.run(ctrl.rollback("ranker"))["ok"] is True
    assert asyncio.run(ctrl.rollback("ranker"))["status"] == 409


def test_a_user_config_triton_cannot_load_yet_is_retried_not_dropped(controller) -> None:
    """A fresh install: the Helm values' rollout reaches the controller before Triton can
    load the canary's ranker. It waits, pending, and is applied once Triton can."""
    ctrl, fake = controller
    fake.refuse.add("ranker-v2")
    asyncio.run(ctrl.reconfigure({"rollout": ranker(weight=20)}))
    s = asyncio.run(ctrl.status())
    assert "ranker" not in s["stages"] and s["pending_start_config"]
    assert s["user_config_error"].startswith("pending (retried)")
    fake.refuse.clear()
    ctrl._last_start_try = -1e9  # the next call retries (every 2 s otherwise)
    s = asyncio.run(ctrl.status())
    assert s["stages"]["ranker"]["weights"]["canary"] == 20.0
    assert not s["pending_start_config"] and s["user_config_error"] == ""
    # a config that cannot serve is still refused at once, and the running one stays
    asyncio.run(ctrl.reconfigure({"rollout": ranker(canary="v9")}))
    s = asyncio.run(ctrl.status())
    assert "v9" in s["user_config_error"] and not s["pending_start_config"]
    assert s["stages"]["ranker"]["weights"]["canary"] == 20.0


def test_a_version_only_shadows_use_runs_in_the_idle_class_until_it_serves_clients(
        controller) -> None:
    ctrl, triton = controller
    loads: list[tuple[str, str]] = []
    real_load = triton.load_model

    def load_model(name: str, config: str, **kw: Any) -> None:
        loads.append((name, json.loads(config)["parameters"]["cpu_class"]["string_value"]))
        real_load(name, config, **kw)

    triton.load_model = load_model  # type: ignore[method-assign]
    shadowed = {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": "v1", "weight": 100}],
        "shadows": [{"name": "next", "bundle_version": "v2", "sample_rate": 0.5}]}}}
    assert asyncio.run(ctrl.apply(shadowed))["ok"] is True
    assert loads == [("ranker-v2", "idle")]
    assert asyncio.run(ctrl.apply(shadowed))["ok"] is True  # same class: not loaded again
    assert loads == [("ranker-v2", "idle")]
    # the shadow becomes a canary: loaded again in the normal class before it serves
    assert asyncio.run(ctrl.apply(ranker(canary="v2")))["ok"] is True
    assert loads == [("ranker-v2", "idle"), ("ranker-v2", "normal")]
    # a version that is both a canary and a shadow serves clients: normal
    both = ranker(canary="v2")
    both["stages"]["ranker"]["shadows"] = [
        {"name": "again", "bundle_version": "v2", "sample_rate": 0.1}]
    assert asyncio.run(ctrl.apply(both))["ok"] is True
    assert loads[-1] == ("ranker-v2", "normal") and len(loads) == 2


def test_prices_come_from_args_and_an_opencost_that_does_not_answer_keeps_them() -> None:
    from serve.config import parse_app_args
    from serve.rollout.controller import cost_prices
    from tests.integration.conftest import free_port

    a = parse_app_args({"cost": {"cpu_core_hour_usd": 0.05}})
    assert cost_prices(a).cpu_core_hour_usd == 0.05 and cost_prices(a).source == "args.cost"
    dead = parse_app_args({"cost": {"cpu_core_hour_usd": 0.05, "opencost_url":
                                    f"http://127.0.0.1:{free_port()}/metrics"}})
    p = cost_prices(dead)  # logged, not raised: the controller starts with args.cost's
    assert p.cpu_core_hour_usd == 0.05 and p.source == "args.cost"
