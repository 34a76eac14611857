"""Serving finds bundle versions in its bundle root, pulled from the model registry when the
root lacks them: a rollout naming a version only the registry holds validates and verifies;
an unknown version and a corrupt object are refused with the config's field named; what a
rollout serves is recorded in the registry, which then refuses to retire it."""

from __future__ import annotations

from pathlib import Path

import pytest

from funnel.contracts.errors import BundleError, RolloutConfigError, UnknownVersionError
from funnel.registry import ObjectStore, Registry, RegistryIndex
from monitoring import metrics
from serve.bundles import BundleVersions
from serve.rollout.controller import serving_rows, validate_rollout, verify_versions
from tests.unit.registry.test_registry import make_bundle


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(ObjectStore(str(tmp_path / "objects")),
                    RegistryIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}"))


def _pulls(result: str) -> float:
    return metrics.BUNDLE_PULLS.labels(result)._value.get()


def canary(version: str, primary: str = "v1") -> dict[str, object]:
    return {"stages": {"ranker": {"variants": [
        {"name": "control", "bundle_version": primary, "weight": 90},
        {"name": "candidate", "bundle_version": version, "weight": 10}]}}}


def test_a_version_the_root_lacks_is_pulled_and_counted(reg: Registry, tmp_path: Path) -> None:
    reg.push(make_bundle(tmp_path / "src", "v2"))
    root = tmp_path / "root"
    bundles = BundleVersions(root, reg)
    assert bundles.available() == [] and bundles.knows("v2") and not bundles.knows("v9")
    ok = _pulls("ok")
    path = bundles.path("v2")
    assert path == (root / "v2").resolve() and (path / "manifest.json").is_file()
    assert _pulls("ok") == ok + 1
    assert bundles.path("v2") == root / "v2" and _pulls("ok") == ok + 1  # now local
    assert bundles.available() == ["v2"]


def test_a_failed_pull_is_counted_kept_and_leaves_nothing(reg: Registry,
                                                          tmp_path: Path) -> None:
    reg.push(make_bundle(tmp_path / "src", "v3"))
    stored = tmp_path / "objects" / "bundles" / "v3" / "index" / "items.faiss"
    stored.write_bytes(b"x" + stored.read_bytes()[1:])
    bundles = BundleVersions(tmp_path / "root", reg)
    failed = _pulls("failed")
    with pytest.raises(BundleError, match=r"index/items\.faiss"):
        bundles.path("v3")
    assert _pulls("failed") == failed + 1
    assert bundles.last_failure is not None and bundles.last_failure.version == "v3"
    assert "index/items.faiss" in bundles.last_failure.error
    assert bundles.available() == []
    assert bundles.failure() == {"version": "v3", "error": bundles.last_failure.error}
    # the object repaired: the version arrives, and its failure is no longer reported
    reg.store.upload("v3", "index/items.faiss",
                     tmp_path / "src" / "v3-0" / "index" / "items.faiss")
    assert bundles.path("v3").is_dir() and bundles.failure() is None
    with pytest.raises(UnknownVersionError):
        bundles.path("v-nope")
    assert bundles.failure() is not None and bundles.failure()["version"] == "v-nope"


def test_apply_time_checks_name_the_field(reg: Registry, tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_bundle(root, "v1")  # the primary, local
    (root / "v1-0").rename(root / "v1")
    reg.push(make_bundle(tmp_path / "src", "v2"))
    bundles = BundleVersions(root, reg)
    cfg = validate_rollout(canary("v2"), bundles=bundles, allow_faults=False)
    verify_versions(cfg, bundles=bundles, primary={"version": "v1"})  # pulls v2
    assert (root / "v2" / "manifest.json").is_file()

    with pytest.raises(RolloutConfigError) as e:
        validate_rollout(canary("v-nope"), bundles=bundles, allow_faults=False)
    assert e.value.fields[0]["field"] == "stages.ranker.variants[1].bundle_version"

    reg.push(make_bundle(tmp_path / "src", "v4"))
    stored = tmp_path / "objects" / "bundles" / "v4" / "models" / "user_tower.pt"
    stored.write_bytes(stored.read_bytes()[:-1])  # a truncated object
    cfg = validate_rollout(canary("v4"), bundles=bundles, allow_faults=False)
    with pytest.raises(RolloutConfigError) as e:
        verify_versions(cfg, bundles=bundles, primary={"version": "v1"})
    assert e.value.fields[0]["field"] == "stages.ranker.variants[1].bundle_version"
    assert "models/user_tower.pt" in str(e.value.fields[0]["message"])
    assert not (root / "v4").exists()

    reg.retire("v2")  # a retired version is not served again
    with pytest.raises(RolloutConfigError, match="v2"):
        validate_rollout(canary("v2"), bundles=BundleVersions(tmp_path / "other", reg),
                         allow_faults=False)


def test_what_a_rollout_serves_is_recorded_and_cannot_be_retired(reg: Registry,
                                                                 tmp_path: Path) -> None:
    for v in ("v1", "v2", "v3"):
        reg.push(make_bundle(tmp_path / "src", v))
    routing = {"stages": {"ranker": {
        "variants": [{"name": "control", "bundle_version": "v1", "weight": 90.0},
                     {"name": "candidate", "bundle_version": "v2", "weight": 10.0}],
        "shadows": [{"name": "dark", "bundle_version": "v3"}]}}}
    rows = serving_rows(routing, "v1")
    assert rows == [("v1", "all", "primary"), ("v1", "ranker", "control"),
                    ("v2", "ranker", "candidate"), ("v3", "ranker", "shadow:dark")]
    bundles = BundleVersions(tmp_path / "root", reg)
    bundles.record_serving([*rows, ("v-local", "ranker", "x")], actor="rollout:api")
    assert {r.version: r.status for r in reg.list()} == {
        "v1": "serving", "v2": "serving", "v3": "serving"}
    assert reg.show("v2").promoted_by == "rollout:api"
    with pytest.raises(Exception, match=r"cannot be retired: it serves \(ranker/candidate\)"):
        reg.retire("v2")
    # rolled back: the canary's weight is 0 and the shadow is gone
    routing["stages"]["ranker"]["variants"][1]["weight"] = 0.0
    routing["stages"]["ranker"]["shadows"] = []
    bundles.record_serving(serving_rows(routing, "v1"), actor="rollout:rollback")
    assert reg.show("v2").status == "staged" and reg.show("v3").status == "staged"
    assert reg.retire("v2").status == "retired"
