"""tests/cluster/pods.py: a rendered pod as a `podman run`, the way Kubernetes and KubeRay run
it (pure translation; `make cluster-test` runs the result)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.cluster import pods

SECRET = {"kind": "Secret", "metadata": {"name": "admin"},
          "data": {"admin-token": base64.b64encode(b"s3cret").decode()}}
CONFIG = {"kind": "ConfigMap", "metadata": {"name": "rollout"},
          "data": {"rollout.yaml": "salt: x\n", "other": "y"}}
POD = {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
       "volumes": [{"name": "tmp", "emptyDir": {}},
                   {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                   {"name": "bundles", "persistentVolumeClaim": {"claimName": "rel-bundles"}},
                   {"name": "rollout", "configMap": {"name": "rollout",
                                                     "items": [{"key": "rollout.yaml",
                                                                "path": "r.yaml"}]}}]}
CONTAINER = {
    "env": [{"name": "A", "value": 1},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "admin",
                                                              "key": "admin-token"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]}},
    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                     {"name": "dshm", "mountPath": "/dev/shm"},
                     {"name": "bundles", "mountPath": "/bundles", "readOnly": True},
                     {"name": "rollout", "mountPath": "/etc/rollout", "readOnly": True}],
    "resources": {"limits": {"cpu": "3500m", "memory": "8Gi"}},
}


def test_env_resolves_secrets_and_the_pods_ip_as_loopback() -> None:
    args = pods.env_args(CONTAINER, pods.Objects([SECRET]))
    assert args == ["--env", "A=1", "--env", "TOKEN=s3cret", "--env", "IP=127.0.0.1"]


def test_volumes_are_folders_files_and_claims_with_their_read_only_flag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pods, "_own", lambda path, uid: None)
    claims = {"rel-bundles": tmp_path / "bundles"}
    mounts = pods.Mounts(tmp_path / "v", claims)
    args = pods.volume_args("c", POD, CONTAINER, pods.Objects([CONFIG]), mounts, 1000)
    vols = [args[i + 1] for i, a in enumerate(args) if a == "--volume"]
    assert vols == [f"{tmp_path}/v/c/tmp:/tmp:rw", f"{tmp_path}/bundles:/bundles:ro",
                    f"{tmp_path}/v/c/rollout:/etc/rollout:ro"]
    assert "--tmpfs" not in args  # /dev/shm is podman's --shm-size
    assert (tmp_path / "v/c/rollout/r.yaml").read_text() == "salt: x\n"
    assert not (tmp_path / "v/c/rollout/other").exists()  # only the listed items
    writable = pods.volume_args("c", POD, CONTAINER, pods.Objects([CONFIG]), mounts, 1000,
                                writable={"bundles"})
    assert f"{tmp_path}/bundles:/bundles:rw" in writable


def test_the_security_context_becomes_podman_flags() -> None:
    assert pods.security_args(POD, CONTAINER) == [
        "--user", "1000:1000", "--read-only", "--cap-drop=all",
        "--security-opt", "no-new-privileges"]


def test_ray_start_is_kuberays_with_cpus_and_memory_from_the_limits() -> None:
    group = {"rayStartParams": {"dashboard-agent-listen-port": "52366"}}
    head = pods.ray_start({"rayStartParams": {"num-cpus": "0"}}, CONTAINER, head=True,
                          head_address="")
    assert head == ["ray", "start", "--block", "--head", "--memory=8589934592", "--num-cpus=0"]
    worker = pods.ray_start(group, CONTAINER, head=False, head_address="127.0.0.1:6379")
    assert worker == ["ray", "start", "--block", "--address=127.0.0.1:6379",
                      "--dashboard-agent-listen-port=52366", "--memory=8589934592",
                      "--num-cpus=4"]


def test_every_service_name_cluster_dns_gives_resolves_in_the_containers() -> None:
    objects = pods.Objects([
        {"kind": "Service", "metadata": {"name": "rel-triton"}},
        {"kind": "RayService", "metadata": {"name": "rel"},
         "spec": {"serveService": {"metadata": {"name": "rel-serve"}}}}])
    hosts = objects.service_hosts("feed")
    assert "rel-triton.feed.svc" in hosts and "rel-serve.feed.svc.cluster.local" in hosts
    assert len(hosts) == 8
