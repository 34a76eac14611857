"""Drift monitor benchmark: detection power, false alarms, and the cost of one run.

    funnel bench drift [--bundle artifacts/latest] [--profile demo] [--windows 50]
                       [--requests 5000] [--timing-rows 100000]

1. Detection. The synthetic generator's `profile` (seed 0) goes through training's feature
   code (`FeatureTransform.fit` on the first 70 % of the time range, point-in-time counters,
   `ranker_inputs`); the retrieval score and the ranker's p_* / score come from the bundle's
   TorchScript towers and ranker applied to those rows. A request is one `request_id` of the
   generated log: one user at one time, 10 ranked items. The reference is 5,000 random
   requests; each live window is 5,000 other random requests (disjoint from the reference,
   drawn anew per window), so "no drift" means the same distribution. Scenarios, `windows`
   windows each:
   - shift: one numeric feature (rotating over the 14 dense features) moved by 0.25 of its
     reference standard deviation;
   - topic: one topic's share (rotating over the 12 topics) raised by 10 percentage points,
     by replacing rows of other topics with pool rows of that topic;
   - none: no change.
   Scores are Evidently's own stat tests (normed Wasserstein, PSI: the functions its
   ValueDrift metric calls), computed once per window and column; the first window of each
   scenario also goes through the monitor's full Evidently report (`monitoring.drift.compare`)
   to check both give the same scores. Rates are then read at the shipped thresholds and on a
   grid (the calibration). A false alarm is ANY column of the group flagged in a no-drift
   window (strict); the per-column rate is also given. The `none_small_reference` scenario
   repeats `none` with a reference of 5,000 rows (what a demo bundle ships) instead.
2. Timing. A log of `timing_rows` feed rows in one hour (38 columns compared: 32 features —
   the 14 served dense features, 16 more numeric ones, topic and modality — and 6
   predictions) plus 10,000 moderation calls, and a matching reference; `funnel drift run`
   runs in a child process, at the default `--max-rows` and unsampled (`--max-rows 0`);
   wall time and the child's peak RSS (VmHWM).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.drift import (
    DEFAULT_CAT_THRESHOLD,
    DEFAULT_MAX_ROWS,
    DEFAULT_NUM_THRESHOLD,
    ColumnSpec,
    DriftSettings,
    compare,
)

Say = Callable[[str], None]
SHIFT_SD = 0.25
TOPIC_POINTS = 0.10
NUM_GRID = (0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.12, 0.15, 0.2)
CAT_GRID = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1)
LABELS = ("abuse", "hate", "nudity", "violence", "misinformation", "spam")


# ---- 1. detection ----------------------------------------------------------------------
def synthetic_rows(bundle: str, profile: str, say: Say) -> pd.DataFrame:
    """Every impression of the generated log with the ranker's inputs and outputs."""
    import torch

    from funnel.contracts.bundle import verify_bundle
    from funnel.contracts.model_io import ITEM_KEYS, RANKER_DENSE, RANKER_KEYS, TASKS, USER_KEYS
    from training.data.synthetic import generate
    from training.features import Counts, FeatureTransform, join_rows
    from training.features import point_in_time_counts as pit
    from training.loops import embed
    from training.pipeline import SCORE_WEIGHTS
    from training.text import MiniLMEncoder

    b = verify_bundle(bundle)
    say(f"generating the synthetic '{profile}' dataset")
    ds = generate(profile, seed=0)
    ts = ds.impressions["timestamp"].astype("int64").to_numpy()
    say("fitting features (first 70 % of the time range), all-MiniLM-L6-v2 for texts")
    ft = FeatureTransform.fit(ds, ts < np.quantile(ts, 0.7), MiniLMEncoder())
    rows = join_rows(ds, ds.impressions, ft)
    counts = pit(rows)
    users = ds.users.sort_values("user_id").reset_index(drop=True)
    posts = ds.posts.sort_values("post_id").reset_index(drop=True)
    say(f"scoring {len(rows):,} rows with bundle {b.version}'s towers and ranker")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with torch.no_grad():
        u_vec = embed(torch.jit.load(str(b.file("models/user_tower.pt"))),
                      ft.user_features(users), USER_KEYS)
        i_vec = embed(torch.jit.load(str(b.file("models/item_tower.pt"))),
                      ft.item_features(posts), ITEM_KEYS)
        ranker = torch.jit.load(str(b.file("triton/ranker/1/model.pt"))).eval()
        u_i = pd.Index(users["user_id"]).get_indexer(rows["user_id"])
        p_i = pd.Index(posts["post_id"]).get_indexer(rows["post_id"])
        retrieval = np.einsum("ij,ij->i", u_vec[u_i], i_vec[p_i]).astype(np.float32)
        dense, probs = [], []
        step = 50_000  # ranker_inputs holds two [rows, 384] text matrices: chunked
        for s in range(0, len(rows), step):
            sl = slice(s, s + step)
            c = Counts({k: v[sl] for k, v in counts.imps.items()},
                       {k: v[sl] for k, v in counts.clicks.items()})
            inp = ft.ranker_inputs(rows.iloc[sl], c, retrieval[sl])
            logits = ranker(*(torch.from_numpy(inp[k]) for k in RANKER_KEYS)).numpy()
            dense.append(inp["dense"])
            probs.append(1.0 / (1.0 + np.exp(-logits)))
    out = pd.DataFrame(np.concatenate(dense), columns=list(RANKER_DENSE))
    p = np.concatenate(probs)
    for j, t in enumerate(TASKS):
        out[f"p_{t}"] = p[:, j]
    out["score"] = p @ np.asarray([SCORE_WEIGHTS[t] for t in TASKS], np.float32)
    out["topic"] = rows["topic"].astype(str).to_numpy()
    out["modality"] = rows["modality"].astype(str).to_numpy()
    out["request_id"] = rows["request_id"].to_numpy()
    return out


def _specs(frame: pd.DataFrame) -> list[ColumnSpec]:
    from funnel.contracts.model_io import RANKER_DENSE

    specs = [ColumnSpec(c, "features", "numerical") for c in RANKER_DENSE]
    specs += [ColumnSpec(c, "features", "categorical") for c in ("topic", "modality")]
    specs += [ColumnSpec(c, "predictions", "numerical") for c in frame.columns
              if c.startswith("p_") or c == "score"]
    return specs


def _scores(ref: pd.DataFrame, cur: pd.DataFrame, specs: Sequence[ColumnSpec]
            ) -> dict[str, float]:
    """Evidently's stat tests, as its ValueDrift metric calls them (nulls dropped)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently.legacy.calculations.stattests import psi_stat_test, wasserstein_stat_test
    from evidently.legacy.core import ColumnType

    out = {}
    for s in specs:
        if s.kind == "numerical":
            r = wasserstein_stat_test(ref[s.name].astype(np.float64),
                                      cur[s.name].astype(np.float64), ColumnType.Numerical,
                                      None)
        else:
            r = psi_stat_test(ref[s.name], cur[s.name], ColumnType.Categorical, None)
        out[s.name] = float(r.drift_score)
    return out


def _requests(pool: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    codes, uniq = pd.factorize(pool["request_id"])
    return np.asarray(codes), np.arange(len(uniq))


def detection(pool: pd.DataFrame, *, windows: int, requests: int, seed: int,
              say: Say) -> dict[str, Any]:
    from funnel.contracts.model_io import RANKER_DENSE

    rng = np.random.default_rng(seed)
    codes, all_req = _requests(pool)
    if 2 * requests > len(all_req):
        raise ValueError(f"the pool has {len(all_req):,} requests; a reference and a window "
                         f"of {requests:,} each need {2 * requests:,}")
    ref_req = rng.choice(all_req, requests, replace=False)
    in_ref = np.isin(codes, ref_req)
    ref = pool[in_ref].reset_index(drop=True)
    rest_req = np.setdiff1d(all_req, ref_req)
    rest = pool[~in_ref].reset_index(drop=True)
    rest_codes = codes[~in_ref]
    small_ref = ref.sample(5000, random_state=seed).reset_index(drop=True)
    specs = _specs(pool)
    topics = sorted(pool["topic"].unique())
    numeric = list(RANKER_DENSE)
    say(f"reference: {requests:,} requests ({len(ref):,} rows); pool for live windows: "
        f"{len(rest_req):,} requests")
    scores: dict[str, list[dict[str, float]]] = {}
    # per window, the column whose drift must be detected; and the topic raised
    targets: dict[str, list[str]] = {"shift": [], "topic": [], "raised_topic": []}
    checks = []
    for scenario in ("none", "shift", "topic", "none_small_reference"):
        scores[scenario] = []
        t0 = time.perf_counter()
        for i in range(windows):
            pick = rng.choice(rest_req, requests, replace=False)
            cur = rest[np.isin(rest_codes, pick)].reset_index(drop=True)
            base = small_ref if scenario == "none_small_reference" else ref
            if scenario == "shift":
                col = numeric[i % len(numeric)]
                cur[col] = cur[col].to_numpy() + np.float32(SHIFT_SD * float(np.std(ref[col])))
                targets["shift"].append(col)
            elif scenario == "topic":
                topic = topics[i % len(topics)]
                cur = _raise_share(cur, rest, topic, TOPIC_POINTS, rng)
                targets["topic"].append("topic")
                targets["raised_topic"].append(topic)
            s = _scores(base, cur, specs)
            scores[scenario].append(s)
            if i == 0:
                full, _ = compare(base, cur, specs, DriftSettings())
                diff = max(abs(r.score - s[r.column]) for r in full)
                checks.append({"scenario": scenario, "max_abs_score_difference": diff})
        say(f"{scenario}: {windows} windows in {time.perf_counter() - t0:.0f}s")
    return _rates(scores, targets, specs, checks, ref_rows=len(ref), window_requests=requests)


def _raise_share(cur: pd.DataFrame, pool: pd.DataFrame, topic: str, points: float,
                 rng: np.random.Generator) -> pd.DataFrame:
    """Replace round(points * n) rows of other topics with pool rows of `topic`."""
    n_add = round(points * len(cur))
    others = np.flatnonzero(cur["topic"].to_numpy() != topic)
    donors = np.flatnonzero(pool["topic"].to_numpy() == topic)
    dropped = cur.drop(index=cur.index[rng.choice(others, n_add, replace=False)])
    added = pool.iloc[rng.choice(donors, n_add, replace=False)]
    return pd.concat([dropped, added], ignore_index=True)


def _flag_rates(windows: list[dict[str, float]], specs: Sequence[ColumnSpec], group: str,
                num_t: float, cat_t: float) -> dict[str, float]:
    cols = [s for s in specs if s.group == group]
    flags = np.array([[w[s.name] >= (num_t if s.kind == "numerical" else cat_t)
                       for s in cols] for w in windows])
    return {"any_column": float(flags.any(axis=1).mean()),
            "per_column": float(flags.mean()),
            "dataset_drift": float((flags.mean(axis=1) >= 0.5).mean())}


def _rates(scores: dict[str, list[dict[str, float]]], targets: dict[str, list[str]],
           specs: Sequence[ColumnSpec], checks: list[dict[str, Any]], *, ref_rows: int,
           window_requests: int) -> dict[str, Any]:
    kind = {s.name: s.kind for s in specs}

    def detected(scenario: str, num_t: float, cat_t: float) -> float:
        hits = [scores[scenario][i][c] >= (num_t if kind[c] == "numerical" else cat_t)
                for i, c in enumerate(targets[scenario])]
        return float(np.mean(hits))

    def at(num_t: float, cat_t: float) -> dict[str, Any]:
        return {
            "num_threshold": num_t, "cat_threshold": cat_t,
            "detection_shift": detected("shift", num_t, cat_t),
            "detection_topic": detected("topic", num_t, cat_t),
            "false_alarm_features": _flag_rates(scores["none"], specs, "features", num_t,
                                                cat_t),
            "false_alarm_predictions": _flag_rates(scores["none"], specs, "predictions",
                                                   num_t, cat_t),
            "false_alarm_features_small_reference": _flag_rates(
                scores["none_small_reference"], specs, "features", num_t, cat_t),
        }

    null = scores["none"]
    shifted = [scores["shift"][i][c] for i, c in enumerate(targets["shift"])]
    topic_psi = [w["topic"] for w in scores["topic"]]
    per_topic: dict[str, list[float]] = {}
    for t, v in zip(targets["raised_topic"], topic_psi, strict=True):
        per_topic.setdefault(t, []).append(v)
    return {
        "reference_rows": ref_rows, "window_requests": window_requests,
        "windows_per_scenario": len(null),
        "shipped": at(DEFAULT_NUM_THRESHOLD, DEFAULT_CAT_THRESHOLD),
        "grid_num": [at(t, DEFAULT_CAT_THRESHOLD) for t in NUM_GRID],
        "grid_cat": [at(DEFAULT_NUM_THRESHOLD, t) for t in CAT_GRID],
        "score_distributions": {
            "no_drift_max_per_window": {
                "numerical": _quantiles([max(w[s.name] for s in specs
                                             if s.kind == "numerical" and s.group == "features")
                                         for w in null]),
                "categorical": _quantiles([max(w["topic"], w["modality"]) for w in null]),
                "predictions": _quantiles([max(w[s.name] for s in specs
                                               if s.group == "predictions") for w in null]),
            },
            "no_drift_small_reference_max_numerical": _quantiles(
                [max(w[s.name] for s in specs if s.kind == "numerical"
                     and s.group == "features") for w in scores["none_small_reference"]]),
            "shifted_column": _quantiles(shifted),
            "topic_psi": _quantiles(topic_psi),
            "topic_psi_by_topic": {t: round(float(np.mean(v)), 4)
                                   for t, v in sorted(per_topic.items())},
        },
        "report_check": checks,
    }


def _quantiles(v: Sequence[float]) -> dict[str, float]:
    a = np.asarray(v, np.float64)
    return {"min": round(float(a.min()), 4), "p50": round(float(np.median(a)), 4),
            "p95": round(float(np.quantile(a, 0.95)), 4), "max": round(float(a.max()), 4)}


# ---- 2. timing -------------------------------------------------------------------------
_CHILD = """
import os, resource, sys, time
t0 = time.perf_counter()
from funnel.cli import main
try:
    main()
finally:
    # VmHWM: this process image's peak RSS. ru_maxrss would not do: Linux carries the
    # parent's peak (at fork) across exec, and the bench process holds the detection pool.
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak_kb = int(line.split()[1])
    with open(os.environ["DRIFT_BENCH_STATS"], "w") as f:
        f.write("%f %d" % (time.perf_counter() - t0, peak_kb))
"""


def timing_fixture(root: Path, *, rows: int, seed: int = 0) -> tuple[Path, Path, list[str]]:
    """A reference-only bundle and a one-hour log of `rows` feed rows (files of 2,000 rows,
    as the writer flushes) and 10,000 moderation calls."""
    from funnel.contracts.bundle import write_manifest
    from funnel.contracts.model_io import RANKER_DENSE
    from training.export import write_moderation_reference, write_reference

    rng = np.random.default_rng(seed)
    numeric = [*RANKER_DENSE, *[f"extra_{i:02d}" for i in range(16)]]
    preds = ["p_click", "p_like", "p_comment", "p_share", "p_hide", "score"]
    topics = np.array([f"topic_{i}" for i in range(12)])

    def feed(n: int, shift: float) -> pd.DataFrame:
        d: dict[str, Any] = {c: rng.normal(shift if j == 0 else 0.0, 1.0, n).astype(np.float32)
                             for j, c in enumerate([*numeric, *preds])}
        d["topic"] = topics[rng.integers(0, 12, n)]
        d["modality"] = np.array(["text", "image", "video"])[rng.choice(3, n, p=[.55, .35, .1])]
        return pd.DataFrame(d)

    bundle = root / "bundle"
    write_reference(bundle / "reference", feed(5000, 0.0))
    write_moderation_reference(bundle / "reference/moderation.parquet",
                               rng.beta(0.5, 8, (5000, len(LABELS))), LABELS, max_rows=5000,
                               seed=seed)
    write_manifest(bundle, {"version": "bench-reference"})
    log = root / "log"
    hour = pd.Timestamp("2026-12-01T10:00:00Z")
    live = feed(rows, 0.3)
    live["ts"] = hour + pd.to_timedelta(np.sort(rng.uniform(0, 3600, rows)), unit="s")
    d = log / "feed/date=2026-12-01/hour=10"
    d.mkdir(parents=True)
    for i, s in enumerate(range(0, rows, 2000)):
        live.iloc[s:s + 2000].to_parquet(d / f"bench-{i:05d}.parquet", index=False)
    m = 10_000
    mod = pd.DataFrame({f"score_{lb}": rng.beta(0.5, 8, m) for lb in LABELS})
    for lb in LABELS:
        mod[f"outcome_{lb}"] = np.where(mod[f"score_{lb}"] > 0.5, "block", "allow")
    mod["content"] = "text"
    mod["decision"] = "allow"
    mod["ts"] = hour + pd.to_timedelta(np.sort(rng.uniform(0, 3600, m)), unit="s")
    d = log / "moderation/date=2026-12-01/hour=10"
    d.mkdir(parents=True)
    mod.to_parquet(d / "bench-00000.parquet", index=False)
    return bundle, log, [*numeric, "topic", "modality", *preds]


def timing(*, rows: int, say: Say) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        root = Path(tmp)
        say(f"timing: writing a one-hour log of {rows:,} feed rows")
        bundle, log, columns = timing_fixture(root, rows=rows)
        out: dict[str, Any] = {"feed_rows": rows, "moderation_calls": 10_000,
                               "feature_columns": len(columns) - 6,
                               "columns_compared": len(columns) + len(LABELS),
                               "reference_rows": 5000, "runs": []}
        for label, max_rows in (("default", None), ("unsampled", 0)):
            stats = root / f"stats-{label}"
            cmd = [sys.executable, "-c", _CHILD, "drift", "run", "--window", "1h", "--end",
                   "2026-12-01T11:00:00Z", "--log", str(log), "--bundle", str(bundle),
                   "--out", str(root / f"reports-{label}")]
            if max_rows is not None:
                cmd += ["--max-rows", str(max_rows)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "DRIFT_BENCH_STATS": str(stats)},
                                  check=False)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"funnel drift run failed ({proc.returncode}): "
                                   f"{proc.stderr[-2000:]}")
            inner, rss_kb = stats.read_text().split()
            summary = json.loads(next((root / f"reports-{label}").glob("*/summary.json"))
                                 .read_text())
            run = {"max_rows": DEFAULT_MAX_ROWS if max_rows is None else "all",
                   "wall_s": round(wall, 2), "in_process_s": round(float(inner), 2),
                   "peak_rss_mib": round(int(rss_kb) / 1024, 1),
                   "rows_compared": summary["rows_compared"],
                   "drifted_features": summary["groups"]["features"]["drifted_columns"],
                   "report_bytes": (root / f"reports-{label}/20261201T110000Z/report.html")
                   .stat().st_size}
            out["runs"].append(run)
            say(f"timing ({label}): {run['wall_s']}s, peak RSS {run['peak_rss_mib']} MiB, "
                f"{run['rows_compared']['feed']:,} feed rows compared")
        return out


def run(*, bundle: str, profile: str, windows: int, requests: int, timing_rows: int,
        parts: Sequence[str], say: Say) -> dict[str, Any]:
    bad = sorted(set(parts) - {"detection", "timing"})
    if bad:
        raise ValueError(f"unknown part(s) {bad}; allowed: detection, timing")
    result: dict[str, Any] = {
        "benchmark": "drift", "date": datetime.now(UTC).date().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "defaults": {"num_method": "wasserstein", "cat_method": "psi",
                     "num_threshold": DEFAULT_NUM_THRESHOLD,
                     "cat_threshold": DEFAULT_CAT_THRESHOLD, "max_rows": DEFAULT_MAX_ROWS},
    }
    if "detection" in parts:
        t0 = time.perf_counter()
        pool = synthetic_rows(bundle, profile, say)
        result["detection"] = {"profile": profile, "pool_rows": len(pool),
                               **detection(pool, windows=windows, requests=requests, seed=0,
                                           say=say)}
        result["detection"]["seconds"] = round(time.perf_counter() - t0, 1)
        s = result["detection"]["shipped"]
        say(f"shipped thresholds: shift detected {s['detection_shift']:.0%}, topic "
            f"{s['detection_topic']:.0%}, false alarms (any feature) "
            f"{s['false_alarm_features']['any_column']:.0%}")
    if "timing" in parts:
        result["timing"] = timing(rows=timing_rows, say=say)
    return result
