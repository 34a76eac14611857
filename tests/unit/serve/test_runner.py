"""`funnel serve`'s Serve config: the deployments it names are the ones the app builds."""

from __future__ import annotations

from serve.config import parse_app_args
from serve.runner import absent_deployments


def test_deployments_the_app_leaves_out_are_named() -> None:
    base = {"bundle": "artifacts/latest"}
    assert absent_deployments(parse_app_args(base)) == set()
    assert absent_deployments(parse_app_args(
        {**base, "rollout": {"shadow_scorer": False}, "moderation": {"enabled": False}})) == {
        "ShadowScorer", "ModerationModels"}


def test_serving_by_version_pulls_it_from_the_registry_first(tmp_path, monkeypatch) -> None:
    """`funnel serve --bundle-version V`: V lands in the bundle root, checked, and the app
    serves it from there; an unknown version or no registry is exit 2, named."""
    from pathlib import Path

    import pytest
    import yaml

    from funnel.registry import ObjectStore, Registry, RegistryIndex
    from serve.errors import ServeConfigError
    from serve.runner import resolved_config
    from tests.unit.registry.test_registry import make_bundle

    objects, db = tmp_path / "objects", f"sqlite:///{tmp_path / 'index.sqlite3'}"
    reg = Registry(ObjectStore(str(objects)), RegistryIndex(db))
    reg.push(make_bundle(tmp_path / "src", "v7"))
    reg.close()
    local = Path(__file__).resolve().parents[3] / "serve" / "configs" / "local.yaml"
    doc = yaml.safe_load(local.read_text())
    doc["applications"][0]["args"]["bundle"] = str(tmp_path / "root" / "latest")
    doc["applications"][0]["args"]["review"]["database_url"] = "sqlite:///:memory:"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(doc))
    monkeypatch.delenv("FUNNEL_REGISTRY_URL", raising=False)
    with pytest.raises(ServeConfigError,
                       match=r"--bundle-version v7: not in the bundle root .*no model registry"):
        resolved_config(str(config), None, bundle_version="v7")
    monkeypatch.setenv("FUNNEL_REGISTRY_URL", str(objects))
    monkeypatch.setenv("FUNNEL_REGISTRY_DATABASE_URL", db)
    said: list[str] = []
    out, args = resolved_config(str(config), None, bundle_version="v7", say=said.append)
    assert args.bundle == str((tmp_path / "root" / "v7").resolve())
    assert out["applications"][0]["args"]["bundle"] == args.bundle
    assert (tmp_path / "root" / "v7" / "manifest.json").is_file() and "registry" in said[0]
    with pytest.raises(ServeConfigError, match=r"--bundle-version v8: the registry has no"):
        resolved_config(str(config), None, bundle_version="v8")
    # once in the root, the version serves without the registry
    monkeypatch.delenv("FUNNEL_REGISTRY_URL")
    assert resolved_config(str(config), None, bundle_version="v7")[1].bundle == args.bundle
    with pytest.raises(ServeConfigError, match=r"--bundle and --bundle-version: give one"):
        resolved_config(str(config), args.bundle, bundle_version="v7")


def test_a_moderation_bundle_is_refused_as_the_feed_s_bundle(tmp_path) -> None:
    """`funnel serve --bundle` of a moderation bundle (`funnel train moderation` without
    --base) exits 2 saying what it is and how to serve it."""
    from pathlib import Path

    import pytest
    import yaml

    from funnel.contracts.bundle import MODERATION_REQUIRED_FILES, write_manifest
    from serve.errors import ServeConfigError
    from serve.runner import resolved_config

    root = tmp_path / "m1"
    for rel in MODERATION_REQUIRED_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    write_manifest(root, {"version": "m1", "kind": "moderation"})
    local = Path(__file__).resolve().parents[3] / "serve" / "configs" / "local.yaml"
    doc = yaml.safe_load(local.read_text())
    doc["applications"][0]["args"]["review"]["database_url"] = "sqlite:///:memory:"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(ServeConfigError, match=r"is a moderation bundle .* --base"):
        resolved_config(str(config), str(root))
