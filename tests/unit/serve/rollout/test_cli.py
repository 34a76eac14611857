"""`funnel rollout versions` and `apply --dry-run` against a bundle root of real (tiny)
bundles: manifests and checksums as `funnel train` writes them, no server. Run through
`funnel.cli.main`, so bad input is checked as the user sees it: exit 2, the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from funnel.contracts.bundle import REQUIRED_FILES, point_latest, write_manifest
from tests.cli_runner import run_funnel

EXAMPLE = Path(__file__).resolve().parents[4] / "serve" / "configs" / "rollout-canary.yaml"


def make_bundle(root: Path, version: str) -> Path:
    d = root / version
    for rel in REQUIRED_FILES:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(f"{version}:{rel}".encode())
    write_manifest(d, {"version": version, "created_at": "2026-11-01T09:30:00+00:00",
                       "dataset": {"name": "synthetic-tiny", "users": 50, "posts": 200}})
    return d


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "artifacts"
    make_bundle(r, "v1")
    point_latest(r, make_bundle(r, "v2"))
    return r


funnel = run_funnel


def canary(tmp_path: Path, control: str, candidate: str, **extra: Any) -> str:
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump({"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": control, "weight": 90},
        {"name": "candidate", "bundle_version": candidate, "weight": 10, **extra}]}}}))
    return str(path)


def test_versions_lists_the_bundle_root_and_marks_latest(root, monkeypatch, capsys) -> None:
    code, out = funnel(monkeypatch, capsys, "rollout", "versions", "--bundles", str(root))
    assert code == 0, out
    rows = {line.split()[1]: line for line in out.splitlines() if " v" in line}
    assert set(rows) == {"v1", "v2"}
    assert "latest" in rows["v2"] and "latest" not in rows["v1"]
    assert "synthetic-tiny" in rows["v1"]


def test_versions_of_a_root_with_none_exits_2(tmp_path, monkeypatch, capsys) -> None:
    code, out = funnel(monkeypatch, capsys, "rollout", "versions", "--bundles",
                       str(tmp_path))
    assert code == 2
    assert f"no bundle versions under {tmp_path}" in out.replace("\n", "")


def test_dry_run_passes_when_every_version_exists_and_verifies(root, tmp_path, monkeypatch,
                                                               capsys) -> None:
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", canary(tmp_path, "v1", "v2"),
                       "--dry-run", "--bundles", str(root))
    assert code == 0, out
    assert "['v1', 'v2'] exist" in out


def test_dry_run_names_the_missing_version_its_field_and_the_available_ones(
        root, tmp_path, monkeypatch, capsys) -> None:
    code, out = funnel(monkeypatch, capsys, "rollout", "apply",
                       canary(tmp_path, "v1", "v20261123-191548"), "--dry-run",
                       "--bundles", str(root))
    out = out.replace("\n", "")
    assert code == 2, out
    assert ("stages.ranker.variants[1].bundle_version: unknown bundle version "
            "'v20261123-191548'; available: ['v1', 'v2']") in out
    assert "Traceback" not in out


def test_dry_run_refuses_a_version_whose_checksums_fail(root, tmp_path, monkeypatch,
                                                        capsys) -> None:
    (root / "v2" / "index" / "items.faiss").write_bytes(b"tampered")
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", canary(tmp_path, "v1", "v2"),
                       "--dry-run", "--bundles", str(root))
    out = out.replace("\n", "")
    assert code == 2, out
    assert "stages.ranker.variants[1].bundle_version:" in out
    assert "items.faiss: checksum mismatch" in out


def test_dry_run_defaults_to_the_serve_configs_bundle_root_and_fault_setting(
        root, tmp_path, monkeypatch, capsys) -> None:
    serve_cfg = tmp_path / "serve.yaml"
    serve_cfg.write_text(yaml.safe_dump({"applications": [
        {"args": {"bundle": str(root / "latest")}}]}))
    faulty = canary(tmp_path, "v1", "v2", fault={"error_rate": 0.5})
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", faulty, "--dry-run",
                       "--config", str(serve_cfg))
    assert code == 2, out
    assert "stages.ranker.variants[1].fault" in out.replace("\n", "")
    serve_cfg.write_text(yaml.safe_dump({"applications": [{"args": {
        "bundle": str(root / "latest"), "rollout": {"allow_fault_injection": True}}}]}))
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", faulty, "--dry-run",
                       "--config", str(serve_cfg))
    assert code == 0, out


def test_the_shipped_example_names_placeholders_the_dry_run_explains(
        root, monkeypatch, capsys) -> None:
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", str(EXAMPLE), "--dry-run",
                       "--bundles", str(root))
    out = out.replace("\n", "")
    assert code == 2, out
    assert "stages.ranker.variants[0].bundle_version: unknown bundle version " \
           "'PRIMARY_VERSION'; available: ['v1', 'v2']" in out


def _failing_gate(root: Path, version: str) -> None:
    """Re-write a bundle's manifest with a ranker that loses to retrieval order."""
    import json

    d = root / version
    m = json.loads((d / "manifest.json").read_text())
    m.pop("files", None)
    m["metrics"] = {"ranker": {"ndcg_at_10": 0.6025,
                               "baselines": {"retrieval_order": {"ndcg_at_10": 0.6060}}}}
    write_manifest(d, m)


def test_a_bundle_that_failed_its_quality_gate_is_refused_unless_allowed(
        root, tmp_path, monkeypatch, capsys) -> None:
    _failing_gate(root, "v1")
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", canary(tmp_path, "v2", "v1"),
                       "--dry-run", "--bundles", str(root))
    out = out.replace("\n", "")
    assert code == 2, out
    assert ("stages.ranker.variants[1].bundle_version: bundle v1 failed its quality gate: "
            "ranker ndcg@10 0.6025 does not beat retrieval order 0.6060") in out
    assert "--allow-regression" in out
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", canary(tmp_path, "v2", "v1"),
                       "--dry-run", "--bundles", str(root), "--allow-regression")
    assert code == 0, out


def test_the_dry_run_judges_every_version_even_the_one_serving(root, tmp_path, monkeypatch,
                                                               capsys) -> None:
    # it cannot tell which version the server serves: `latest` may be newer than it
    _failing_gate(root, "v1")
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", canary(tmp_path, "v1", "v2"),
                       "--dry-run", "--bundles", str(root))
    assert code == 2, out
    assert "stages.ranker.variants[0].bundle_version: bundle v1 failed its quality gate" in \
        out.replace("\n", "")


def test_the_server_does_not_judge_the_bundle_it_serves_again(root: Path) -> None:
    from funnel.contracts.errors import RolloutConfigError
    from funnel.contracts.rollout import parse_rollout
    from serve.bundles import BundleVersions
    from serve.rollout.controller import verify_versions

    _failing_gate(root, "v1")
    cfg = parse_rollout({"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": "v1", "weight": 90},
        {"name": "candidate", "bundle_version": "v2", "weight": 10}]}}})
    bundles = BundleVersions(root)
    verify_versions(cfg, bundles=bundles, primary={"version": "v1"})  # v1 serves: not judged
    with pytest.raises(RolloutConfigError, match="bundle v1 failed its quality gate"):
        verify_versions(cfg, bundles=BundleVersions(root), primary={"version": "v2"})


def test_a_stage_is_judged_by_its_own_model_in_the_gate(root: Path) -> None:
    """A bundle whose retrieval lost but whose ranker won is a fine ranker canary, and is
    refused as a retrieval canary."""
    import json

    from funnel.contracts.errors import RolloutConfigError
    from funnel.contracts.rollout import parse_rollout
    from serve.bundles import BundleVersions
    from serve.rollout.controller import verify_versions

    d = root / "v1"
    m = json.loads((d / "manifest.json").read_text())
    m.pop("files", None)
    m["metrics"] = {
        "retrieval": {"recall_at_50": 0.0212, "baselines": {"popularity": {"recall_at_50":
                                                                           0.0218}}},
        "ranker": {"ndcg_at_10": 0.6793,
                   "baselines": {"retrieval_order": {"ndcg_at_10": 0.6055}}}}
    m.pop("quality_gate", None)
    write_manifest(d, m)

    def canary_of(stage: str) -> Any:
        return parse_rollout({"stages": {stage: {"variants": [
            {"name": "control", "bundle_version": "v2", "weight": 90},
            {"name": "candidate", "bundle_version": "v1", "weight": 10}]}}})

    verify_versions(canary_of("ranker"), bundles=BundleVersions(root), primary={"version": "v2"})
    with pytest.raises(RolloutConfigError, match=r"retrieval recall@50 0\.0212 does not beat"):
        verify_versions(canary_of("retrieval"), bundles=BundleVersions(root),
                        primary={"version": "v2"})


def test_the_dry_run_checks_a_moderation_heads_labels_against_the_policy(
        tmp_path, monkeypatch, capsys) -> None:
    from serve.config import DEFAULT_POLICY

    root = tmp_path / "artifacts"
    for v, labels in (("v1", ["spam"]), ("v3", ["spam", "self_harm"])):
        d = make_bundle(root, v)
        write_manifest(d, {"version": v, "models": {"moderation": {"labels": labels}}})
    point_latest(root, root / "v1")
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text(yaml.safe_dump({"stages": {"moderation": {"variants": [
        {"name": "control", "bundle_version": "v1", "weight": 90},
        {"name": "self-harm", "bundle_version": "v3", "weight": 10}]}}}))
    serve_cfg = tmp_path / "serve.yaml"
    serve_cfg.write_text(yaml.safe_dump({"applications": [
        {"args": {"bundle": str(root / "latest")}}]}))
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", str(rollout), "--dry-run",
                       "--config", str(serve_cfg))
    out = out.replace("\n", "")
    assert code == 2, out
    assert "stages.moderation.variants[1].bundle_version:" in out
    assert "emits text label(s) ['self_harm']" in out
    policy = yaml.safe_load(Path(DEFAULT_POLICY).read_text())
    policy["labels"]["self_harm"] = {"review_at": 0.2, "block_at": 0.7}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    args = {"bundle": str(root / "latest"),
            "moderation": {"policy": str(tmp_path / "policy.yaml")}}
    serve_cfg.write_text(yaml.safe_dump({"applications": [{"args": args}]}))
    code, out = funnel(monkeypatch, capsys, "rollout", "apply", str(rollout), "--dry-run",
                       "--config", str(serve_cfg))
    assert code == 0, out
