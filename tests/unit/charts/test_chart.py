"""The Helm chart (charts/funnel), rendered and checked without a cluster or a helm binary.

helm-python-sdk embeds Helm's Go SDK: every `ci/` values file must render and lint clean
(strict). Every rendered object is validated: core kinds by kubernetes-validate against
KUBE_VERSION (strict: unknown fields fail), the custom resources against the CRDs in
`../shared/crds` (jsonschema on the served version's openAPIV3Schema, with unknown fields
refused as kubectl's strict field validation does; skipped, saying why, when the folder is
absent). The embedded Serve config must be the local one with only the cluster's settings
changed, the PrometheusRule must be the rules file, and bad values must fail the render
naming the value, with the schema and (helm template --skip-schema-validation) without it.
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.unit.charts import chart_harness as h
from tests.unit.charts.chart_harness import (
    CUSTOM_GROUPS,
    KUBE_VERSION,
    LOCAL_CONFIG,
    RULES,
    ci_files,
    ci_values,
    one,
    pod_specs,
    render_docs,
    rendered,
    serve_config,
)

CI_FILES = ci_files()


# ---- the sources the chart embeds --------------------------------------------------------

def test_the_chart_embeds_the_serve_config_and_the_rules_file_unchanged(tmp_path: Path) -> None:
    """files/ links to the sources; Helm's loader follows the links, and `helm package` stores
    their content, so a packaged chart carries the same files."""
    with helm_python.Chart.load(h.CHART) as c:
        package = Path(c.save(tmp_path))
    for chart in (h.CHART, package):
        files = h.embedded_files(chart)
        assert files["files/serve-config.yaml"] == LOCAL_CONFIG.read_bytes(), chart
        assert files["files/funnel-rules.yaml"] == RULES.read_bytes(), chart


# ---- render, lint, validate --------------------------------------------------------------

@pytest.mark.parametrize("ci_file", ["(defaults)", *CI_FILES])
def test_lint_strict_is_clean(ci_file: str) -> None:
    values = {} if ci_file == "(defaults)" else ci_values(ci_file)
    report = helm_python.lint(h.CHART, values, strict=True, namespace="feed",
                              kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, (report["errors"], problems)


@pytest.mark.parametrize("ci_file", CI_FILES)
def test_core_objects_validate_against_kubernetes(ci_file: str) -> None:
    core = [d for d in rendered(ci_file) if not d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {"Deployment", "Service", "ConfigMap"} <= {d["kind"] for d in core}
    for doc in core:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused wherever it lists the known ones (the API
    server would prune them silently; kubectl --validate=strict refuses them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, made strict."""
    schemas = {}
    for path in sorted(h.CRDS.glob("*.yaml")):
        # ~3.5 MB of YAML: libyaml's loader when PyYAML has it
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                schemas[(f"{group}/{v['name']}", kind)] = _strict(
                    v["schema"]["openAPIV3Schema"])
    return schemas


@pytest.mark.parametrize("ci_file", CI_FILES)
def test_custom_resources_validate_against_the_crds(ci_file: str) -> None:
    if not h.CRDS.is_dir():
        pytest.skip(f"no CRDs at {h.CRDS} (the shared folder beside the repository): the custom "
                    "resources (RayService, RayJob, ServiceMonitor, PodMonitor, PrometheusRule) "
                    "were not validated")
    custom = [d for d in rendered(ci_file) if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert "RayService" in {d["kind"] for d in custom}
    for doc in custom:
        schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
        assert schema is not None, f"no CRD for {doc['apiVersion']} {doc['kind']}"
        jsonschema.Draft7Validator(schema).validate(doc)


@pytest.mark.parametrize("ci_file", CI_FILES)
def test_every_pod_runs_locked_down(ci_file: str) -> None:
    autoscaler = bool(((ci_values(ci_file).get("ray") or {}).get("autoscaling") or {})
                      .get("enabled"))
    pods = [(f"{d['kind']} {d['metadata']['name']} {where}", spec)
            for d in rendered(ci_file) for where, spec in pod_specs(d)]
    assert len(pods) >= 4
    for where, spec in pods:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        # only the RayService's head, whose autoscaler sidecar calls the Kubernetes API
        token = autoscaler and where.startswith("RayService") and where.endswith(" head")
        assert spec["automountServiceAccountToken"] is token, where
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            scratch = {m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in tmp}
            assert c["name"] == "mkdirs" or "/tmp" in scratch, (where, c["name"])


# ---- the Serve config ---------------------------------------------------------------------

# Ray's own config models use pydantic-v1-style Field extras
@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")
@pytest.mark.parametrize("ci_file", CI_FILES)
def test_serve_config_is_the_local_one_for_a_cluster(ci_file: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    from funnel.contracts.rollout import parse_rollout
    from serve.config import parse_app_args

    docs = rendered(ci_file)
    cfg = serve_config(docs)
    local = yaml.safe_load(LOCAL_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    assert [a.name for a in schema.applications] == [a["name"] for a in local["applications"]]
    for app, local_app in zip(schema.applications, local["applications"], strict=True):
        assert app.import_path == local_app["import_path"]
        assert [d.name for d in app.deployments] == [
            d["name"] for d in local_app["deployments"]]
    args = parse_app_args(cfg["applications"][0]["args"])
    assert args.bundle.startswith("/bundles/")
    # Triton's ports: the values' or, by default, `funnel triton`'s (the local config's)
    local_triton = local["applications"][0]["args"]["triton"]
    ports = {k: (ci_values(ci_file).get("triton") or {}).get("ports", {}).get(
        k, local_triton[f"{k}_port"]) for k in ("http", "grpc", "metrics")}
    assert args.feed.ranker.url == f"rel-funnel-triton.feed.svc:{ports['grpc']}"
    assert (args.triton.host, args.triton.http_port, args.triton.grpc_port,
            args.triton.metrics_port) == ("0.0.0.0", ports["http"], ports["grpc"],
                                          ports["metrics"])
    assert cfg["http_options"]["host"] == "0.0.0.0"
    # the rollout: in RolloutController's user_config (applied in place) and the ConfigMap
    controller = next(d for d in cfg["applications"][0]["deployments"]
                      if d["name"] == "RolloutController")
    rollout = controller["user_config"]["rollout"]
    parse_rollout(rollout)
    configmap = one(docs, "ConfigMap", "rel-funnel-rollout")
    assert yaml.safe_load(configmap["data"]["rollout.yaml"]) == rollout
    assert args.rollout.config == "/etc/funnel/rollout/rollout.yaml"
    assert rollout["stages"] == (ci_values(ci_file).get("rollout") or {}).get("stages", {})
    # Triton's `--config` is the same document
    triton_cfg = one(docs, "ConfigMap", "rel-funnel-serve-config")["data"]["serve-config.yaml"]
    assert yaml.safe_load(triton_cfg) == cfg


def test_values_reach_the_deployments_and_the_ingress_mode() -> None:
    cpu, gpu = rendered("cpu-only-values.yaml"), rendered("gpu-values.yaml")
    feed = {d["name"]: d for d in serve_config(cpu)["applications"][0]["deployments"]}
    assert feed["FeedIngress"]["num_replicas"] == 3
    # merged over the local config's: values win, the rest stays
    assert feed["RolloutController"]["ray_actor_options"]["num_cpus"] == 0.1
    assert feed["RolloutController"]["logging_config"] == {"enable_access_log": False}
    assert "grpc_options" in serve_config(cpu)
    # gRPC is a port of KubeRay's serve Service (which follows the serving cluster)
    serve_ports = lambda docs: {p["name"] for p in  # noqa: E731
                                one(docs, "RayService")["spec"]["serveService"]["spec"]["ports"]}
    assert serve_ports(cpu) == {"serve", "serve-grpc"}
    # haproxy: no gRPC anywhere, and Ray's own switches in the Ray pods
    assert "grpc_options" not in serve_config(gpu)
    assert serve_ports(gpu) == {"serve"}
    for where, spec in pod_specs(one(gpu, "RayService")):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1", where
        assert env["FUNNEL_REVIEW_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "rel-funnel-review-db", "key": "database-url"}
        assert env["FUNNEL_IMPRESSIONS_URL"]["value"] == "s3://funnel-data/impressions"
        assert env["FUNNEL_FEATURES_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "rel-funnel-features-redis", "key": "redis-url"}
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert env["PROMETHEUS_MULTIPROC_DIR"]["value"] in mounts, where
    triton = one(gpu, "Deployment", "rel-funnel-triton")["spec"]["template"]["spec"]
    assert triton["containers"][0]["image"].endswith(":0.1.0-cuda12")
    assert triton["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert serve_config(gpu)["applications"][0]["args"]["triton"]["device"] == "cuda"
    # the Redis URL (with its password) only in a Secret, never in the serve config
    secret = one(gpu, "Secret", "rel-funnel-features-redis")
    assert set(secret["data"]) == {"redis-url"}
    assert "change-me@" not in json.dumps(serve_config(gpu))
    assert serve_config(gpu)["applications"][0]["args"]["impressions"]["spool_dir"] == \
        "/tmp/funnel-spool"
    cpu_env = {e["name"]: e for e in next(pod_specs(one(cpu, "RayService")))[1]["containers"][0]
               ["env"]}
    assert cpu_env["FUNNEL_FEATURES_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == \
        "funnel-features-redis"
    assert not [d for d in cpu if d.get("kind") == "Secret"
                and d["metadata"]["name"].endswith("features-redis")]


def test_deployments_the_app_leaves_out_are_left_out_of_the_serve_config() -> None:
    """ShadowScorer runs unless rollout.shadow_scorer is false, ModerationModels unless
    moderation is off: Serve refuses options for a deployment the app does not have."""
    names = lambda docs: {d["name"]: d for d in  # noqa: E731
                          serve_config(docs)["applications"][0]["deployments"]}
    default = names(tuple(render_docs({})))
    assert default["ShadowScorer"]["ray_actor_options"]["num_cpus"] == 1
    assert {"ModerationModels", "RolloutController"} <= set(default)
    off = names(tuple(render_docs({"serve": {"args": {
        "rollout": {"shadow_scorer": False}, "moderation": {"enabled": False}}}})))
    assert set(off) == {"FeedIngress", "RolloutController"}


def test_drift_monitor_and_test_hook() -> None:
    docs = rendered("cpu-only-values.yaml")
    drift = one(docs, "Deployment", "rel-funnel-drift")["spec"]["template"]["spec"]
    cmd = drift["containers"][0]["command"]
    assert cmd[:3] == ["funnel", "drift", "watch"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert flags == {"--every": "1h", "--window": "1h", "--port": "9108", "--host": "0.0.0.0",
                     "--log": "$(FUNNEL_IMPRESSIONS_URL)", "--bundle": "/bundles/latest",
                     "--out": "$(FUNNEL_DRIFT_REPORTS_URL)"}
    assert one(docs, "Service", "rel-funnel-drift")["spec"]["ports"][0]["port"] == 9108
    test = one(docs, "Pod")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test["spec"]["containers"][0]["command"][-1]
    assert '"/readyz"' in script and '"/v1/feed"' in script


# ---- the alert rules ----------------------------------------------------------------------

@pytest.mark.parametrize("base", ["", "https://docs.example.com/funnel/v1/"])
def test_prometheus_rule_is_the_rules_file(base: str) -> None:
    docs = render_docs({"monitoring": {"prometheusRule": {"enabled": True,
                                                          "runbookBaseUrl": base}}})
    groups = one(tuple(docs), "PrometheusRule")["spec"]["groups"]
    expected = yaml.safe_load(RULES.read_text())["groups"]
    for group in expected:
        for rule in group["rules"]:
            if base and "runbook_url" in rule.get("annotations", {}):
                rule["annotations"]["runbook_url"] = base + rule["annotations"]["runbook_url"]
    assert groups == expected
    assert any("{{ $value" in r["annotations"]["description"]
               for g in groups for r in g["rules"])


# ---- bad values ---------------------------------------------------------------------------

CANARY_90 = {"variants": [{"name": "control", "bundle_version": "a", "weight": 80},
                          {"name": "candidate", "bundle_version": "b", "weight": 10}]}
CANARY_OK = {"variants": [{"name": "control", "bundle_version": "a", "weight": 95},
                          {"name": "candidate", "bundle_version": "b", "weight": 5}]}
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "negative serve replicas": (
        {"serve": {"deployments": {"FeedIngress": {"num_replicas": -1}}}},
        "serve.deployments.FeedIngress.num_replicas"),
    "negative triton replicas": ({"triton": {"replicas": -2}}, "triton.replicas"),
    "GPU ranker without a GPU": (
        {"triton": {"gpu": {"enabled": True}}}, "triton.resources.limits.nvidia.com/gpu"),
    "canary weights sum to 90": (
        {"rollout": {"stages": {"ranker": CANARY_90}}}, "rollout.stages.ranker.variants"),
    "unknown ingress mode": ({"ingress": {"mode": "nginx"}}, "ingress.mode"),
    "unknown rollout stage": ({"rollout": {"stages": {"ranking": CANARY_OK}}}, "ranking"),
    "haproxy with gRPC": ({"ingress": {"mode": "haproxy"}}, "serve.grpc.enabled"),
    "ranker canary on autoscaled Triton": (
        {"rollout": {"stages": {"ranker": CANARY_OK}},
         "triton": {"autoscaling": {"enabled": True}}}, "rollout.stages.ranker"),
}


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart with its links resolved and no values.schema.json: what
    `helm template --skip-schema-validation` sees, so validateValues alone must refuse."""
    dest = tmp_path_factory.mktemp("chart") / "funnel"
    shutil.copytree(h.CHART, dest)  # symlinks=False: the linked files are copied
    (dest / "values.schema.json").unlink()
    return dest


@pytest.mark.parametrize("schema", [True, False], ids=["schema", "validateValues"])
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_fail_the_render_naming_the_value(case: str, schema: bool,
                                                     chart_without_schema: Path) -> None:
    values, named = BAD_VALUES[case]
    with pytest.raises(helm_python.HelmError) as e:
        render_docs(values, h.CHART if schema else chart_without_schema)
    message = str(e.value)
    # validateValues names it dotted; Helm's schema check as a JSON pointer
    assert named in message or "/" + named.replace(".", "/") in message, message
