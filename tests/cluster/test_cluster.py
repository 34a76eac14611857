"""Through the container cluster: training on the worker, the feed, moderation, funnel.v1 over
gRPC, the Open Inference Protocol with stock tritonclient, where the replicas run, the pods'
probes, and a worker killed under load (last: it takes the worker away).

`make cluster-test` runs this after `make image`; FUNNEL_CLUSTER_REPORT names a JSON file for
the measurements (benchmarks/results/cluster.json)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve.grpc_build import ensure_stubs
from tests.cluster import pods
from tests.cluster.conftest import (
    DASHBOARD,
    GRPC,
    SERVE,
    Cluster,
    Serving,
    Trained,
    feed_ok,
    log,
    serve_details,
    wait_for,
)

pytestmark = pytest.mark.cluster
REPORT: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[dict[str, object]]:
    yield REPORT
    path = os.environ.get("FUNNEL_CLUSTER_REPORT")
    out = {"command": "make cluster-test CLUSTER_REPORT=benchmarks/results/cluster.json",
           "date": datetime.now(UTC).date().isoformat(),
           "machine": f"{os.cpu_count()} cores; podman (runc) containers in a loopback-only "
                      "network namespace",
           **REPORT}
    log("report: " + json.dumps(out))
    if path:
        Path(path).write_text(json.dumps(out, indent=2) + "\n")


def test_the_training_job_ran_its_trials_on_the_worker(trained: Trained) -> None:
    assert trained.manifest["version"] and trained.manifest["files"], trained.manifest
    assert trained.trial_nodes, "the training job made no actors"
    assert trained.trial_nodes <= trained.worker_nodes, (trained.trial_nodes,
                                                         trained.worker_nodes)
    assert trained.head_node not in trained.trial_nodes
    REPORT["training"] = {"took_s": round(trained.took_s, 1),
                          "version": trained.manifest.get("version"),
                          "actors_on_worker": True}


def test_the_cluster_serves_the_bundle_the_job_trained(serving: Serving, trained: Trained) -> None:
    health = httpx.get(f"{SERVE}/readyz", timeout=10)
    assert health.status_code == 200, health.text
    r = httpx.post(f"{SERVE}/v1/feed", json={"user_id": 3, "limit": 10}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 10 and not body["degraded"], body
    assert body["model_versions"]["bundle"] == trained.manifest["version"], body["model_versions"]
    REPORT["serving_ready_s"] = round(serving.ready_s, 1)


def test_moderation_over_http(serving: Serving) -> None:
    r = httpx.post(f"{SERVE}/v1/moderate", json={"content_id": "c1", "text": "a quiet evening"},
                   timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["decision"] in ("allow", "review", "block")
    bad = httpx.post(f"{SERVE}/v1/moderate", json={"content_id": "c2"}, timeout=30)
    assert bad.status_code in (400, 422), bad.text


def test_funnel_v1_over_grpc(serving: Serving) -> None:
    import grpc

    ensure_stubs()
    from serve.protos.funnel.v1 import feed_pb2, feed_pb2_grpc, moderation_pb2, moderation_pb2_grpc

    with grpc.insecure_channel(GRPC) as ch:
        grpc.channel_ready_future(ch).result(timeout=60)
        feed = feed_pb2_grpc.FeedStub(ch).GetFeed(feed_pb2.GetFeedRequest(user_id=3, limit=5),
                                                  timeout=30)
        assert len(feed.items) == 5
        mod = moderation_pb2_grpc.ModerationStub(ch).Moderate(
            moderation_pb2.ModerateRequest(content_id="c3", text="hello"), timeout=30)
        assert mod.decision
        with pytest.raises(grpc.RpcError) as e:
            feed_pb2_grpc.FeedStub(ch).GetFeed(feed_pb2.GetFeedRequest(user_id=3, limit=500),
                                               timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_open_inference_protocol_with_stock_tritonclient(serving: Serving) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    for mod, url in ((httpclient, SERVE.removeprefix("http://")), (grpcclient, GRPC)):
        c = mod.InferenceServerClient(url)
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("moderation_text")
        text = mod.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.asarray([b"hello there", b"good morning"], dtype=object))
        scores = c.infer("moderation_text", [text]).as_numpy("scores")
        assert scores.shape[0] == 2 and ((scores >= 0) & (scores <= 1)).all()


def test_ingress_replicas_run_on_the_worker(serving: Serving) -> None:
    workers = serving.cluster.worker_node_ids()
    apps = serve_details()["applications"]
    placed = {}
    for app in apps.values():
        for name, dep in app["deployments"].items():
            placed[name] = {r["node_id"] for r in dep["replicas"]}
    assert placed["FeedIngress"] and placed["FeedIngress"] <= workers, (placed, workers)
    for name, nodes in placed.items():
        assert nodes <= workers, (name, nodes, workers)


def _exec_probes(cluster: Cluster, name: str, container: dict) -> dict[str, int]:
    probes = pods.probe_commands(container)
    results = {}
    for kind, argv in probes.items():
        r = cluster.exec(name, argv)
        assert r.returncode == 0, (name, kind, argv, r.stdout[-500:], r.stderr[-500:])
        results[kind] = r.returncode
    return results


def test_the_pods_probes_pass_inside_the_running_containers(serving: Serving) -> None:
    """The exec probes the chart gives the Ray pods (so KubeRay injects none), run in the
    containers; Triton's httpGet probes, on its port."""
    c = serving.cluster
    head = next(n for n in c.containers if n.endswith("-head"))
    head_probes = _exec_probes(c, head, c.chart.head_group["template"]["spec"]["containers"][0])
    worker_probes = _exec_probes(c, serving.worker,
                                 c.chart.worker_group["template"]["spec"]["containers"][0])
    assert {"readinessProbe", "livenessProbe"} <= head_probes.keys()
    assert {"readinessProbe", "livenessProbe"} <= worker_probes.keys()
    tc = c.chart.triton["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in tc["ports"]}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = tc[kind]["httpGet"]
        port = ports.get(get["port"], get["port"])
        assert httpx.get(f"http://127.0.0.1:{port}{get['path']}", timeout=5).status_code == 200
    REPORT["probes"] = {"head": sorted(head_probes), "worker": sorted(worker_probes),
                        "triton": ["startupProbe", "readinessProbe", "livenessProbe"]}


def test_a_killed_worker_is_replaced_and_the_feed_serves_again(serving: Serving) -> None:
    """SIGKILL the only serving worker under a steady 4 feeds/s; start its replacement at once
    (the pod KubeRay would recreate). Counted: answered, failed, and the seconds from the kill
    to the first answer to a request sent after it."""
    c = serving.cluster
    rate, stop = 4.0, threading.Event()
    results: list[tuple[float, float, bool]] = []  # (sent, finished, ok)
    lock = threading.Lock()

    def one(sent: float) -> None:
        try:
            ok = feed_ok(timeout=10)
        except httpx.HTTPError:
            ok = False
        with lock:
            results.append((sent, time.monotonic(), ok))

    def load() -> None:
        nxt = time.monotonic()
        while not stop.is_set():
            threading.Thread(target=one, args=(time.monotonic(),), daemon=True).start()
            nxt += 1 / rate
            time.sleep(max(0.0, nxt - time.monotonic()))

    threading.Thread(target=load, daemon=True).start()
    time.sleep(10)  # a steady state before the kill
    killed_at = time.monotonic()
    c.stop(serving.worker, kill=True)
    log("worker killed; starting its replacement")
    c.start_worker("worker-2", bundles_writable=False)

    def served_again() -> float | None:
        with lock:
            after = [f for s, f, ok in results if ok and s > killed_at]
        return min(after) if after else None

    try:
        first = wait_for("a ranked feed after the kill", served_again, 600, every_s=1)
        time.sleep(10)  # and it keeps serving
    finally:
        stop.set()
        time.sleep(11)  # in-flight requests finish (10 s timeout)
    with lock:
        done = list(results)
    answered = sum(ok for _, _, ok in done)
    failed = len(done) - answered
    after = [ok for s, _, ok in done if s > first]
    last = [ok for s, _, ok in done if s > max(s for s, _, _ in done) - 5]
    REPORT["worker_kill"] = {
        "load_rps": rate, "requests": len(done), "answered": answered, "failed": failed,
        "serving_again_s": round(first - killed_at, 1),
        "failed_after_serving_again": after.count(False),
        "note": "one serving worker, killed with SIGKILL, its replacement started at once; "
                "failed = a non-200, degraded or timed-out (10 s) feed",
    }
    assert last and all(last), "the feed does not serve steadily after the replacement"
    assert wait_for("the dashboard lists the new worker", c.worker_node_ids, 60)
    # the replicas now run on the replacement
    apps = serve_details()["applications"]
    nodes = {r["node_id"] for a in apps.values() for d in a["deployments"].values()
             for r in d["replicas"] if r["state"] == "RUNNING"}
    assert nodes <= c.worker_node_ids(), nodes
    assert httpx.get(f"{DASHBOARD}/api/gcs_healthz", timeout=5).status_code == 200
