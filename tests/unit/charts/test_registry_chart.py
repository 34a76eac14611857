"""The chart with the model registry (docs/registry.md): every pod that reads a bundle pulls
bundle.version from the registry in an init container into its own cache, with the
registry's Secret in its environment; the Serve replicas may write the cache (they pull the
versions a rollout names); the training job pushes; a setup that cannot work is refused,
naming the value."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.unit.charts.chart_harness import ci_values, one, render_docs, rendered

VERSION = "v20261205-101500"


def pods(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]]
         ) -> dict[str, dict[str, Any]]:
    """Pod specs that read a bundle, by name: the Ray head and workers, Triton, drift."""
    svc = one(docs, "RayService")["spec"]["rayClusterConfig"]
    out = {"ray-head": svc["headGroupSpec"]["template"]["spec"]}
    for g in svc["workerGroupSpecs"]:
        out[f"ray-{g['groupName']}"] = g["template"]["spec"]
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith(("-triton", "-drift")):
            out[d["metadata"]["name"].rsplit("-", 1)[1]] = d["spec"]["template"]["spec"]
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container.get("env", [])}


def test_every_bundle_reader_pulls_the_version_from_the_registry_first() -> None:
    docs = rendered("registry-values.yaml")
    specs = pods(docs)
    assert {"ray-head", "triton", "drift"} <= set(specs) and len(specs) >= 4
    for name, spec in specs.items():
        init = spec["initContainers"][0]
        assert init["name"] == "pull-bundle", name
        assert init["command"] == ["funnel", "bundle", "pull", VERSION, "--cache", "/bundles"]
        env = env_of(init)
        assert env["FUNNEL_REGISTRY_URL"] == {"secretKeyRef": {"name": "funnel-registry",
                                                                "key": "url"}}
        assert env["FUNNEL_REGISTRY_DATABASE_URL"]["secretKeyRef"]["key"] == "database-url"
        creds = env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]
        assert creds["optional"] is True  # absent: the service account's cloud identity
        assert init["securityContext"]["runAsNonRoot"] is True
        [vol] = [v for v in spec["volumes"] if v["name"] == "bundles"]
        assert vol == {"name": "bundles", "emptyDir": {"sizeLimit": "10Gi"}}, name
        assert {"name": "bundles", "mountPath": "/bundles"} in init["volumeMounts"]
    head = specs["ray-head"]["containers"][0]
    mount = next(m for m in head["volumeMounts"] if m["name"] == "bundles")
    assert mount["readOnly"] is False  # the replicas pull a canary's version into it
    assert "FUNNEL_REGISTRY_URL" in env_of(head)
    # the serving bundle is the pulled version
    triton = specs["triton"]["containers"][0]
    assert triton["command"][3] == f"/bundles/{VERSION}"
    assert not [d for d in docs if d["kind"] == "Secret"
                and d["metadata"]["name"].endswith("-registry")]  # the existing one is used


def test_training_pushes_to_the_registry_and_keeps_its_shared_volume() -> None:
    docs = rendered("registry-values.yaml")
    job = one(docs, "RayJob")
    assert "--push" in job["spec"]["entrypoint"].split()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    [vol] = [v for v in head["volumes"] if v["name"] == "bundles"]
    assert "persistentVolumeClaim" in vol  # Ray Train's checkpoints: shared by its pods
    assert "FUNNEL_REGISTRY_URL" in env_of(head["containers"][0])
    assert one(docs, "PersistentVolumeClaim", "rel-funnel-bundles")


def test_without_training_an_emptydir_cache_needs_no_bundles_claim() -> None:
    values = {**ci_values("registry-values.yaml"), "training": {"enabled": False}}
    docs = render_docs(values)
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"
                and d["metadata"]["name"].endswith("-bundles")]
    values["registry"] = {**values["registry"], "cache": {"type": "pvc"}}
    spec = pods(render_docs(values))["ray-head"]
    [vol] = [v for v in spec["volumes"] if v["name"] == "bundles"]
    assert vol["persistentVolumeClaim"]["claimName"] == "rel-funnel-bundles"


def test_the_chart_keeps_given_registry_values_in_a_secret_of_its_own() -> None:
    docs = render_docs({"bundle": {"version": VERSION}, "registry": {
        "enabled": True, "url": "s3://models/funnel",
        "databaseUrl": "postgresql://funnel:pw@db:5432/registry",
        "s3EndpointUrl": "http://minio:9000"}})
    secret = one(docs, "Secret", "rel-funnel-registry")
    assert set(secret["data"]) == {"url", "database-url", "s3-endpoint-url"}
    init = pods(docs)["ray-head"]["initContainers"][0]
    assert env_of(init)["FUNNEL_REGISTRY_S3_ENDPOINT_URL"]["secretKeyRef"] == {
        "name": "rel-funnel-registry", "key": "s3-endpoint-url", "optional": True}


def test_without_the_registry_the_bundles_come_from_the_claim_read_only() -> None:
    docs = render_docs({})
    for name, spec in pods(docs).items():
        assert not spec.get("initContainers") or all(
            c["name"] != "pull-bundle" for c in spec["initContainers"]), name
    head = pods(docs)["ray-head"]["containers"][0]
    assert next(m for m in head["volumeMounts"] if m["name"] == "bundles")["readOnly"] is True
    assert "FUNNEL_REGISTRY_URL" not in env_of(head)


@pytest.mark.parametrize(("registry", "version", "named"), [
    ({"enabled": True, "existingSecret": "s"}, "latest", 'bundle.version: "latest"'),
    ({"enabled": True, "databaseUrl": "postgresql://db/r"}, VERSION, "registry.url: empty"),
    ({"enabled": True, "url": "/models", "databaseUrl": "postgresql://db/r"}, VERSION,
     'registry.url: "/models" is not an object-store URL'),
    ({"enabled": True, "url": "s3://m/f"}, VERSION, "registry.databaseUrl: empty"),
])
def test_a_registry_setup_that_cannot_work_fails_naming_the_value(
        registry: dict[str, Any], version: str, named: str) -> None:
    with pytest.raises(helm_python.HelmError) as e:
        render_docs({"bundle": {"version": version}, "registry": registry})
    assert named in str(e.value), str(e.value)


def test_the_schema_refuses_an_unknown_cache_type() -> None:
    allowed = r"/registry/cache/type'?: value must be one of 'emptyDir', 'pvc'"
    with pytest.raises(helm_python.HelmError, match=allowed):
        render_docs({"bundle": {"version": VERSION}, "registry": {
            "enabled": True, "existingSecret": "s", "cache": {"type": "hostPath"}}})
