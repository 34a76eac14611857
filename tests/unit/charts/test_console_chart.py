"""The browser console (/console on the serving HTTP port) in the chart: its switch, cookie flag
and identity header in args.console of the Serve config, its session secret from a Secret into
every Ray pod (the chart's, made once when none is given, or an existing one), and the drift
reports the console's drift page reads: the same place the drift monitor writes."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.unit.charts import chart_harness as h
from tests.unit.charts.chart_harness import (
    KUBE_VERSION,
    one,
    pod_specs,
    render_docs,
    render_notes,
    serve_config,
)

CONSOLE_SECRET = "rel-funnel-console"


def console_args(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> dict[str, Any]:
    args: dict[str, Any] = serve_config(docs)["applications"][0]["args"]
    console: dict[str, Any] = args["console"]
    return console


def ray_envs(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]
             ) -> dict[str, dict[str, dict[str, Any]]]:
    """{pod (head, worker group ...): {env name: env entry}} of the Ray pods' container."""
    return {where: {e["name"]: e for e in spec["containers"][0]["env"]}
            for where, spec in pod_specs(one(docs, "RayService"))}


def secrets(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}


def test_args_console_follows_the_values_and_the_app_takes_it() -> None:
    from serve.config import parse_app_args

    def chart_keys(args: dict[str, Any]) -> dict[str, Any]:
        return {k: args.get(k) for k in ("enabled", "secure_cookie", "identity_header")}

    default = render_docs({})
    assert chart_keys(console_args(default)) == {"enabled": True, "secure_cookie": "auto",
                                                 "identity_header": None}
    docs = render_docs({"console": {"identityHeader": "X-Auth-Request-User",
                                    "secureCookie": "always"}})
    assert chart_keys(console_args(docs)) == {"enabled": True, "secure_cookie": "always",
                                              "identity_header": "X-Auth-Request-User"}
    off = render_docs({"console": {"enabled": False}})
    assert console_args(off)["enabled"] is False
    for rendered in (default, docs, off):
        parse_app_args(serve_config(rendered)["applications"][0]["args"])
    # the Triton pods' --config is the same document
    cm = one(docs, "ConfigMap", "rel-funnel-serve-config")["data"]["serve-config.yaml"]
    assert "identity_header: X-Auth-Request-User" in cm


def test_a_session_secret_given_as_a_value_is_kept_in_the_charts_secret() -> None:
    docs = render_docs({"console": {"sessionSecret": {"value": "s3cret-of-the-release"}}})
    secret = secrets(docs)[CONSOLE_SECRET]
    kubernetes_validate.validate(secret, KUBE_VERSION, strict=True)
    assert secret["data"] == {
        "session-secret": base64.b64encode(b"s3cret-of-the-release").decode()}
    envs = ray_envs(docs)
    assert {"head", "worker group cpu"} <= set(envs)
    for where, env in envs.items():
        assert env["FUNNEL_CONSOLE_SECRET"] == {"name": "FUNNEL_CONSOLE_SECRET", "valueFrom": {
            "secretKeyRef": {"name": CONSOLE_SECRET, "key": "session-secret"}}}, where
    # the secret itself never in the Serve config nor in a pod spec
    assert "s3cret-of-the-release" not in repr([d for d in docs if d["kind"] != "Secret"])


def test_without_a_session_secret_the_chart_makes_one() -> None:
    """lookup finds nothing where Helm renders without a cluster (as here): a new random key.
    In a cluster, an upgrade reads the install's back (templates/secret-console.yaml)."""
    docs = render_docs({})
    key = base64.b64decode(secrets(docs)[CONSOLE_SECRET]["data"]["session-secret"]).decode()
    assert len(key) == 48 and key.isalnum(), key
    for where, env in ray_envs(docs).items():
        ref = env["FUNNEL_CONSOLE_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": CONSOLE_SECRET, "key": "session-secret"}, where


def test_an_existing_secret_is_referenced_and_the_chart_makes_none() -> None:
    docs = render_docs({"console": {"sessionSecret": {
        "value": "ignored", "existingSecret": "console-keys", "existingSecretKey": "cookie-key"}}})
    assert not [n for n in secrets(docs) if "console" in n]
    for where, env in ray_envs(docs).items():
        ref = env["FUNNEL_CONSOLE_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "console-keys", "key": "cookie-key"}, where


def test_a_disabled_console_gets_no_secret_no_env_and_no_notes() -> None:
    values = {"console": {"enabled": False, "sessionSecret": {"value": "unused"}}}
    docs = render_docs(values)
    assert CONSOLE_SECRET not in secrets(docs)
    for where, env in ray_envs(docs).items():
        assert "FUNNEL_CONSOLE_SECRET" not in env, where
    assert "/console" not in render_notes(values)
    # serve.args.console wins over console.*, for the Secret and the environment too
    docs = render_docs({"serve": {"args": {"console": {"enabled": False}}}})
    assert console_args(docs)["enabled"] is False and CONSOLE_SECRET not in secrets(docs)


def test_the_secrets_variable_follows_the_apps_session_secret_env() -> None:
    docs = render_docs({"serve": {"args": {"console": {"session_secret_env": "CONSOLE_KEY"}}}})
    for where, env in ray_envs(docs).items():
        assert "FUNNEL_CONSOLE_SECRET" not in env, where
        assert env["CONSOLE_KEY"]["valueFrom"]["secretKeyRef"]["name"] == CONSOLE_SECRET


def test_notes_point_at_the_console_and_at_funnel_users() -> None:
    notes = render_notes({})
    assert "http://localhost:8000/console" in notes
    assert "funnel users add NAME --role reviewer|admin" in notes
    assert "app.kubernetes.io/component=ray-head" in notes


@pytest.mark.parametrize("ci_file", ["cpu-only-values.yaml", "gpu-values.yaml"])
def test_the_ray_pods_read_the_drift_reports_where_the_monitor_writes(ci_file: str) -> None:
    """The console's drift page reads FUNNEL_DRIFT_REPORTS_URL (ConsoleSettings'
    drift_reports_url_env): the drift monitor's --out, with its volume or its object store's
    credentials."""
    docs = h.rendered(ci_file)
    drift = one(docs, "Deployment", "rel-funnel-drift")["spec"]["template"]["spec"]
    writer = drift["containers"][0]
    assert "$(FUNNEL_DRIFT_REPORTS_URL)" in writer["command"]
    url = {e["name"]: e for e in writer["env"]}["FUNNEL_DRIFT_REPORTS_URL"]["value"]
    claims = lambda spec: {v["name"]: v["persistentVolumeClaim"]["claimName"]  # noqa: E731
                           for v in spec["volumes"] if "persistentVolumeClaim" in v}
    for where, spec in pod_specs(one(docs, "RayService")):
        reader = spec["containers"][0]
        env = {e["name"]: e for e in reader["env"]}
        assert env["FUNNEL_DRIFT_REPORTS_URL"]["value"] == url, where
        if "://" in url:
            assert reader.get("envFrom") == writer.get("envFrom"), where
        else:
            mounts = {m["name"]: m["mountPath"] for m in reader["volumeMounts"]}
            assert url.startswith(mounts["data"] + "/"), where
            assert claims(spec)["data"] == claims(drift)["data"], where




@pytest.mark.parametrize(("values", "pointer"), [
    ({"console": {"enabled": "yes"}}, "/console/enabled"),
    ({"console": {"sessionSecret": "s3cret"}}, "/console/sessionSecret"),
    ({"console": {"sessionSecret": {"existingSecretKey": ""}}},
     "/console/sessionSecret/existingSecretKey"),
    ({"console": {"identityHeader": 5}}, "/console/identityHeader"),
    ({"console": {"identityHeader": "X-User: admin"}}, "/console/identityHeader"),
    ({"console": {"secureCookie": "sometimes"}}, "/console/secureCookie"),
    ({"console": {"sessionKey": "s3cret"}}, "/console"),
])
def test_the_schema_refuses_wrong_console_values(values: dict[str, Any], pointer: str) -> None:
    with pytest.raises(helm_python.HelmError) as e:
        render_docs(values)
    assert pointer in str(e.value), str(e.value)


@pytest.mark.parametrize(("values", "named"), [
    ({"console": {"identityHeader": "X-User: admin"}}, "console.identityHeader"),
    ({"console": {"secureCookie": "sometimes"}}, "console.secureCookie"),
])
def test_validate_values_refuses_them_without_the_schema(values: dict[str, Any], named: str,
                                                         chart_without_schema: Path) -> None:
    with pytest.raises(helm_python.HelmError) as e:
        render_docs(values, chart_without_schema)
    assert named in str(e.value), str(e.value)
