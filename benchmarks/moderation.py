"""Moderation benchmark: text throughput batched vs one by one, and /v1/moderate latency.

    funnel bench moderation [--bundle artifacts/latest] [--out benchmarks/results/moderation.json]

1. Model, in this process (the class the Serve replica runs, one intra-op thread as served):
   distinct texts scored one per call, then in batches of 8, 32 and 64; texts/s for each.
2. Endpoint, a real `funnel serve` (Ray Serve, the moderation deployment, Triton, SQLite
   review queue) on free ports, run twice: with the shipped batching (text_max_batch_size 32)
   and with batches of 1. For each: p50/p99 of sequential `/v1/moderate` calls for text and
   for a 512x512 JPEG, then `callers` concurrent text callers for `duration_s` (texts/s).
Texts are the synthetic generator's post texts, made distinct (the encoder de-duplicates,
which would flatter batches).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.triton_batching import DEFAULT_CONFIG, free_port

Say = Callable[[str], None]


def distinct_texts(n: int, seed: int = 0) -> list[str]:
    from training.data.synthetic import generate

    texts = [str(t) for t in dict.fromkeys(generate("tiny", seed=seed).posts["text"])]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):  # suffixes keep repeated wording distinct, as real posts are
        out.append(f"{texts[i % len(texts)]} #{rng.integers(10**6)}" if i >= len(texts)
                   else texts[i])
    return out


def noise_jpeg(side: int = 512, seed: int = 0) -> bytes:
    from PIL import Image

    px = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(px).save(b, "JPEG", quality=85)
    return b.getvalue()


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "n": len(xs)}


def model_throughput(bundle: str, texts: list[str], say: Say) -> dict[str, Any]:
    from serve.moderation.models import TextModerationModel

    m = TextModerationModel(bundle=bundle, intra_op_threads=1)
    m.load()
    out: dict[str, Any] = {}
    for batch in (1, 8, 32, 64):
        m.score_texts(texts[:batch])  # warm this shape
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            m.score_texts(texts[i:i + batch])
        rate = len(texts) / (time.perf_counter() - t0)
        out[str(batch)] = round(rate, 1)
        say(f"model: batch {batch}: {rate:.1f} texts/s")
    out["speedup_32_vs_1"] = round(out["32"] / out["1"], 2)
    return out


@contextlib.contextmanager
def serve_stack(bundle: str, *, text_batch: int, work: Path, say: Say) -> Iterator[str]:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    port, grpc = free_port(), free_port()
    doc["http_options"]["port"] = port
    doc["grpc_options"]["port"] = free_port()
    args = doc["applications"][0]["args"]
    args["triton"].update(http_port=free_port(), grpc_port=grpc, metrics_port=free_port())
    args["feed"]["ranker"]["url"] = f"127.0.0.1:{grpc}"
    args["moderation"]["text_max_batch_size"] = text_batch
    args["review"]["database_url"] = f"sqlite:///{work / f'review-{text_batch}.sqlite3'}"
    cfg = work / f"serve-{text_batch}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    ready = work / f"ready-{text_batch}.json"
    log = (work / f"serve-{text_batch}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "funnel", "serve", "--bundle", bundle,
                             "--config", str(cfg), "--ready-file", str(ready)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"funnel serve did not start; see {log.name}")
            time.sleep(0.5)
        url = json.loads(ready.read_text())["url"]
        say(f"stack up at {url} (text_max_batch_size {text_batch})")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


async def _endpoint(url: str, texts: list[str], image_b64: str, *, callers: int,
                    duration_s: float, sequential: bool) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=60) as c:
        async def post(body: dict[str, Any]) -> float:
            t0 = time.perf_counter()
            r = await c.post(f"{url}/v1/moderate", json=body)
            if r.status_code != 200 or r.json()["degraded"]:
                raise RuntimeError(f"/v1/moderate answered {r.status_code}: {r.text[:300]}")
            return time.perf_counter() - t0

        for i in range(5):  # warm-up
            await post({"content_id": f"w{i}", "text": texts[i], "image_base64": image_b64})
        if sequential:
            out["text"] = _pct([await post({"content_id": f"t{i}", "text": texts[i]})
                                for i in range(200)])
            out["image_512"] = _pct([await post({"content_id": f"i{i}",
                                                 "image_base64": image_b64})
                                     for i in range(100)])
        done = 0
        stop = time.perf_counter() + duration_s
        lat: list[float] = []

        async def caller(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                lat.append(await post({"content_id": f"c{i}", "text": texts[i % len(texts)]}))
                done += 1
                i += callers

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        out["concurrent_text"] = {"callers": callers,
                                  "texts_per_s": round(done / (time.perf_counter() - t0), 1),
                                  **_pct(lat)}
    return out


def run(*, bundle: str, callers: int, duration_s: float, say: Say = print) -> dict[str, Any]:
    from funnel.contracts.bundle import verify_bundle

    b = verify_bundle(bundle)
    texts = distinct_texts(1024)
    image_b64 = base64.b64encode(noise_jpeg()).decode()
    result: dict[str, Any] = {
        "command": "funnel bench moderation", "bundle": b.version,
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model_texts_per_s": model_throughput(str(b.path), texts[:512], say)}
    endpoint: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="funnel-bench-mod-") as d:
        for batch in (32, 1):
            with serve_stack(str(b.path), text_batch=batch, work=Path(d), say=say) as url:
                endpoint[f"text_batch_{batch}"] = asyncio.run(_endpoint(
                    url, texts, image_b64, callers=callers, duration_s=duration_s,
                    sequential=batch == 32))
                say(f"endpoint (text batch {batch}): {endpoint[f'text_batch_{batch}']}")
    result["endpoint"] = endpoint
    result["endpoint_speedup_batched_vs_1"] = round(
        endpoint["text_batch_32"]["concurrent_text"]["texts_per_s"]
        / endpoint["text_batch_1"]["concurrent_text"]["texts_per_s"], 2)
    return result
