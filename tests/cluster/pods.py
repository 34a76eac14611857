"""Pods the chart renders, run as podman containers the way Kubernetes and KubeRay run them.

Pure translation (no podman calls), so what a container gets is readable in one place:
- the container's env, with `valueFrom` resolved against the Secrets and ConfigMaps the chart
  rendered (the admin token, ...), and `fieldRef`s to the pod's IP as loopback;
- its volumeMounts: an emptyDir is a fresh host folder (memory-backed ones become tmpfs), a
  ConfigMap or Secret is a folder holding its keys as files, a PersistentVolumeClaim is the
  host folder given for that claim; `readOnly` mounts are read-only;
- its securityContext: runAsUser/runAsGroup, a read-only root filesystem, no capabilities, no
  privilege escalation;
- the Ray containers' command is KubeRay's: `ray start --head|--address=… --block` with the
  group's rayStartParams as `--key=value` (ray-operator/controllers/ray/common/pod.go,
  generateRayStartCommand), num-cpus and memory from the container's limits when not given.

Every container shares the network namespace of the test (`--network host`), which
`make cluster-test` makes with only a loopback interface: the cluster's addresses are
127.0.0.1, and the chart's ci/containers-values.yaml gives each Ray node the fixed ports a
second node on one address needs. Resource limits are not enforced here (the
machine's cgroups do not allow it); the test measures, it does not size.
"""

from __future__ import annotations

import base64
import math
import os
import shlex
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _limit(kind: int, cap: int = 16384) -> int:
    import resource

    hard = resource.getrlimit(kind)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


def podman_run() -> list[str]:
    """Debian's podman 4.3 on this kind of machine: crun refuses its cgroup setup, runc works;
    the ulimits must be explicit and within this process's hard limits (KubeRay's pods get
    the node's; Ray wants many open files)."""
    import resource

    nofile, nproc = _limit(resource.RLIMIT_NOFILE), _limit(resource.RLIMIT_NPROC)
    return ["podman", "run", "--runtime", "runc", "--network", "host",
            "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
LABEL = "funnel-cluster-test"


@dataclass
class Objects:
    """What the chart rendered, by kind and name."""

    docs: list[dict[str, Any]]

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind
                 and (name is None or d["metadata"]["name"] == name)]
        assert len(found) == 1, f"{len(found)} {kind} named {name!r}"
        return found[0]

    def service_hosts(self, namespace: str) -> list[str]:
        """The DNS names cluster DNS gives the rendered Services (and the serve Service KubeRay
        makes): in the containers they all resolve to loopback, where every pod listens."""
        names = [d["metadata"]["name"] for d in self.docs if d["kind"] == "Service"]
        names += [d["spec"]["serveService"]["metadata"]["name"] for d in self.docs
                  if d["kind"] == "RayService" and "serveService" in d["spec"]]
        return [h for n in names for h in (n, f"{n}.{namespace}", f"{n}.{namespace}.svc",
                                           f"{n}.{namespace}.svc.cluster.local")]

    def data(self, kind: str, name: str) -> dict[str, str]:
        doc = self.get(kind, name)
        out = dict(doc.get("data") or {})
        if kind == "Secret":
            out = {k: base64.b64decode(v).decode() for k, v in out.items()}
            out.update(doc.get("stringData") or {})
        return out


@dataclass
class Mounts:
    """Host folders for a container's volumes: claims by name, the rest made under `root`."""

    root: Path
    claims: dict[str, Path]
    made: list[Path] = field(default_factory=list)


def env_args(container: dict[str, Any], objects: Objects) -> list[str]:
    out: list[str] = []
    for e in container.get("env", []):
        if "value" in e:
            value = str(e["value"])
        else:
            ref = e["valueFrom"]
            if "secretKeyRef" in ref:
                r = ref["secretKeyRef"]
                value = objects.data("Secret", r["name"])[r["key"]]
            elif "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                value = objects.data("ConfigMap", r["name"])[r["key"]]
            elif "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                value = "127.0.0.1" if path in ("status.podIP", "status.hostIP") else path
            else:
                raise AssertionError(f"env {e['name']}: unsupported {ref}")
        out += ["--env", f"{e['name']}={value}"]
    for src in container.get("envFrom", []):
        kind = "Secret" if "secretRef" in src else "ConfigMap"
        ref = src.get("secretRef") or src.get("configMapRef")
        for k, v in objects.data(kind, ref["name"]).items():
            out += ["--env", f"{k}={v}"]
    return out


def volume_args(name: str, pod: dict[str, Any], container: dict[str, Any], objects: Objects,
                mounts: Mounts, uid: int, *, writable: Set[str] = frozenset()) -> list[str]:
    """`writable`: volume names mounted read-write whatever the pod says (the training job's
    view of the bundle volume, see tests/cluster/conftest.py)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    out: list[str] = []
    for m in container.get("volumeMounts", []):
        v = volumes[m["name"]]
        ro = bool(m.get("readOnly")) and m["name"] not in writable
        if "emptyDir" in v:
            if v["emptyDir"].get("medium") == "Memory":
                if m["mountPath"] != "/dev/shm":  # that one is podman's --shm-size
                    out += ["--tmpfs", f"{m['mountPath']}:rw,size=2g,mode=1777"]
                continue
            host = mounts.root / name / m["name"]
            host.mkdir(parents=True, exist_ok=True)
            _own(host, uid)
        elif "configMap" in v or "secret" in v:
            kind, ref = (("ConfigMap", v["configMap"]["name"]) if "configMap" in v
                         else ("Secret", v["secret"]["secretName"]))
            host = mounts.root / name / m["name"]
            host.mkdir(parents=True, exist_ok=True)
            data = objects.data(kind, ref)
            items = (v.get("configMap") or v.get("secret") or {}).get("items")
            for key, path in ([(i["key"], i["path"]) for i in items] if items
                              else [(k, k) for k in data]):
                (host / path).write_text(data[key])
            ro = True
        elif "persistentVolumeClaim" in v:
            host = mounts.claims[v["persistentVolumeClaim"]["claimName"]]
        else:
            raise AssertionError(f"{name}: volume {m['name']}: unsupported {v}")
        out += ["--volume", f"{host}:{m['mountPath']}:{'ro' if ro else 'rw'}"]
    return out


def _own(path: Path, uid: int) -> None:
    os.chown(path, uid, uid)


def security_args(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    sc = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    out = ["--user", f"{sc.get('runAsUser', 1000)}:{sc.get('runAsGroup', 1000)}"]
    if sc.get("readOnlyRootFilesystem"):
        out.append("--read-only")
    if "ALL" in sc.get("capabilities", {}).get("drop", []):
        out.append("--cap-drop=all")
    if sc.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]
    return out


def uid_of(pod: dict[str, Any], container: dict[str, Any]) -> int:
    sc = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    return int(sc.get("runAsUser", 1000))


def ray_start(group: dict[str, Any], container: dict[str, Any], *, head: bool,
              head_address: str) -> list[str]:
    """KubeRay's `ray start` for a group: its rayStartParams as flags; num-cpus from the CPU
    limit when the params do not say (as KubeRay does); workers join the head's GCS."""
    params = dict(group.get("rayStartParams") or {})
    if "num-cpus" not in params:
        cpu = (container.get("resources", {}).get("limits", {}) or {}).get("cpu")
        if cpu is not None:
            c = str(cpu)
            params["num-cpus"] = str(math.ceil(int(c[:-1]) / 1000) if c.endswith("m")
                                     else math.ceil(float(c)))
    mem = (container.get("resources", {}).get("limits", {}) or {}).get("memory")
    if "memory" not in params and mem is not None:
        params["memory"] = str(_bytes(str(mem)))
    cmd = ["ray", "start", "--block"]
    cmd += ["--head"] if head else [f"--address={head_address}"]
    for k, v in sorted(params.items()):
        cmd.append(f"--{k}={v}")
    return cmd


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (8Gi, 512Mi, 1G, 1000) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def probe_commands(container: dict[str, Any]) -> dict[str, list[str]]:
    """The container's exec probes: {readinessProbe: argv, ...}."""
    out = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe and "exec" in probe:
            out[kind] = list(probe["exec"]["command"])
    return out


def run_args(name: str, image: str, *, pod: dict[str, Any], container: dict[str, Any],
             objects: Objects, mounts: Mounts, command: list[str], lifetime_s: int,
             writable: Set[str] = frozenset(),
             extra_env: dict[str, str] | None = None, hosts: Sequence[str] = ()) -> list[str]:
    """`podman run` for one container. It stops by itself after `lifetime_s` (coreutils
    timeout around the command), whatever happens to the test that started it."""
    uid = uid_of(pod, container)
    args = [*podman_run(), "--detach", "--rm", "--name", name, "--label", LABEL, "--init",
            "--shm-size", "8g", *security_args(pod, container),
            *env_args(container, objects),
            *volume_args(name, pod, container, objects, mounts, uid, writable=writable)]
    for host in hosts:
        args += ["--add-host", f"{host}:127.0.0.1"]
    for k, v in (extra_env or {}).items():
        args += ["--env", f"{k}={v}"]
    wd = container.get("workingDir")
    if wd:
        args += ["--workdir", wd]
    args += ["--entrypoint", "timeout", image, "--signal=TERM", "--kill-after=30",
             str(lifetime_s), *command]
    return args


def shown(args: list[str]) -> str:
    return shlex.join(args)
