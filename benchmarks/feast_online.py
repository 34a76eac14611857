# Runs in an environment with feast installed; not part of the funnel package.
"""Feast's `get_online_features` against direct redis-py reads, for one feed's features.

One feed needs one user's recent activity (the last 50 clicked posts, the posts seen in the
last 7 days, the reported authors) and the engagement counts of ~100 candidate posts. The
Feast path reads them from the views in integrations/feast (Redis online store); the direct
path reads the same values from a plain layout this script writes beside them:

| Key | Type | Holds |
|---|---|---|
| `h:{user}` | list | the last 50 clicked post ids, newest last |
| `s:{user}` | sorted set | posts seen, scored by time |
| `r:{user}` | set | reported author ids |
| `i:{item}` | hash | `click`, `like`, `comment`, `share`, `hide`, `report`, `dwell` |

and reads them in one pipeline round trip (LRANGE + ZRANGE + SMEMBERS + one HMGET per item).
Both paths return Python values (lists of ints, floats), single thread, same random keys.
Methods alternate in blocks of `--block` calls (order rotated each block) so that noise from
other work on the machine hits all of them alike.

It uses Redis database 9 only: FLUSHDB there at the start and at the end, never another
database. The Feast repository is applied in a temporary copy (registry in a temp dir).

    feast-venv/bin/python benchmarks/feast_online.py            # writes the results JSON
    feast-venv/bin/python benchmarks/feast_online.py --users 1000 --items 10000 --calls 500
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from feast import FeatureStore
from feast.data_source import PushMode

ROOT = Path(__file__).resolve().parents[1]
FEAST_REPO = ROOT / "integrations" / "feast"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "feast_online.json"
DB = 9  # the only database this script touches
CONN_ENV = "FUNNEL_FEAST_REDIS"  # read by integrations/feast/feature_store.yaml

EVENTS = ("click", "like", "comment", "share", "hide", "report", "dwell")
USER_FEATURES = [
    "user_recent_activity:history",
    "user_recent_activity:seen",
    "user_recent_activity:reported_authors",
]
ITEM_FEATURES = [f"item_engagement:{e}" for e in EVENTS]
TS = pa.timestamp("us", tz="UTC")
USER_SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("event_timestamp", TS), ("history", pa.list_(pa.int64())),
    ("seen", pa.list_(pa.int64())), ("reported_authors", pa.list_(pa.int64())),
])
ITEM_SCHEMA = pa.schema(
    [("item_id", pa.int64()), ("event_timestamp", TS)] + [(e, pa.float64()) for e in EVENTS]
)

Reader = Callable[[int, Sequence[int]], dict[str, Any]]


# ---- data ------------------------------------------------------------------------------------
def make_data(args: argparse.Namespace, rng: np.random.Generator
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users 1..N with their lists, items 1..M with 7 decayed counts, all at `now`."""
    now = pd.Timestamp.now(tz="UTC")
    uids = np.arange(1, args.users + 1, dtype=np.int64)
    users = pd.DataFrame({
        "user_id": uids,
        "event_timestamp": now,
        "history": list(rng.integers(1, args.items + 1, (args.users, args.history))),
        # distinct, so a sorted set holds all of them
        "seen": [rng.choice(args.items, args.seen, replace=False) + 1 for _ in uids],
        "reported_authors": list(rng.integers(1, 50_000, (args.users, args.reported))),
    })
    for col in ("history", "seen", "reported_authors"):
        users[col] = users[col].map(lambda a: [int(x) for x in a])
    iids = np.arange(1, args.items + 1, dtype=np.int64)
    counts = rng.gamma(0.5, 4.0, (args.items, len(EVENTS)))
    items = pd.DataFrame({"item_id": iids, "event_timestamp": now})
    for j, e in enumerate(EVENTS):
        items[e] = counts[:, j]
    return users, items


def write_feast(store: FeatureStore, users: pd.DataFrame, items: pd.DataFrame,
                chunk: int = 2_000) -> float:
    """Push both frames through the views' push sources (online only); seconds taken."""
    t0 = time.perf_counter()
    for name, df in (("user_recent_activity_push", users), ("item_engagement_push", items)):
        for start in range(0, len(df), chunk):
            store.push(name, df.iloc[start:start + chunk], to=PushMode.ONLINE)
    return time.perf_counter() - t0


def write_direct(r: redis.Redis, users: pd.DataFrame, items: pd.DataFrame,
                 chunk: int = 1_000) -> float:
    """The plain layout (module docstring); seconds taken."""
    t0 = time.perf_counter()
    now = time.time()
    rows = users.to_dict("records")
    for start in range(0, len(rows), chunk):
        pipe = r.pipeline(transaction=False)
        for row in rows[start:start + chunk]:
            uid = row["user_id"]
            pipe.rpush(f"h:{uid}", *row["history"])
            seen = row["seen"]
            # scored by time, oldest first, as a stream of events would leave them
            pipe.zadd(f"s:{uid}", {p: now - (len(seen) - k) for k, p in enumerate(seen)})
            pipe.sadd(f"r:{uid}", *row["reported_authors"])
        pipe.execute()
    values = items[list(EVENTS)].to_numpy()
    ids = items["item_id"].to_numpy()
    for start in range(0, len(ids), chunk):
        pipe = r.pipeline(transaction=False)
        for k in range(start, min(start + chunk, len(ids))):
            fields = {e: float(v) for e, v in zip(EVENTS, values[k], strict=True)}
            pipe.hset(f"i:{ids[k]}", mapping=fields)
        pipe.execute()
    return time.perf_counter() - t0


# ---- readers ---------------------------------------------------------------------------------
def feast_readers(store: FeatureStore) -> dict[str, Reader]:
    def user_only(uid: int, _items: Sequence[int]) -> dict[str, Any]:
        return store.get_online_features(
            features=USER_FEATURES, entity_rows=[{"user_id": uid}]).to_dict()

    def items_only(items: Sequence[int]) -> dict[str, Any]:
        return store.get_online_features(
            features=ITEM_FEATURES, entity_rows={"item_id": list(items)}).to_dict()

    def feed(uid: int, items: Sequence[int]) -> dict[str, Any]:
        return {**user_only(uid, items), **items_only(items)}

    def feed_one_call(uid: int, items: Sequence[int]) -> dict[str, Any]:
        # both views in one call: the user's lists come back once per item row
        return store.get_online_features(
            features=USER_FEATURES + ITEM_FEATURES,
            entity_rows={"user_id": [uid] * len(items), "item_id": list(items)},
        ).to_dict()

    return {"user_only": user_only, "feed": feed, "feed_one_call": feed_one_call}


def direct_readers(r: redis.Redis) -> dict[str, Reader]:
    def user_cmds(pipe: Any, uid: int) -> None:
        pipe.lrange(f"h:{uid}", 0, -1)
        pipe.zrange(f"s:{uid}", 0, -1)
        pipe.smembers(f"r:{uid}")

    def user_values(res: Sequence[Any]) -> dict[str, Any]:
        history, seen, reported = res
        return {"history": [int(x) for x in history], "seen": [int(x) for x in seen],
                "reported_authors": [int(x) for x in reported]}

    def user_only(uid: int, _items: Sequence[int]) -> dict[str, Any]:
        pipe = r.pipeline(transaction=False)
        user_cmds(pipe, uid)
        return user_values(pipe.execute())

    def feed(uid: int, items: Sequence[int]) -> dict[str, Any]:
        pipe = r.pipeline(transaction=False)
        user_cmds(pipe, uid)
        for iid in items:
            pipe.hmget(f"i:{iid}", list(EVENTS))
        res = pipe.execute()
        out = user_values(res[:3])
        out["item_id"] = list(items)
        for j, e in enumerate(EVENTS):
            out[e] = [None if v[j] is None else float(v[j]) for v in res[3:]]
        return out

    return {"user_only": user_only, "feed": feed}


def check_same(feast: dict[str, Reader], direct: dict[str, Reader], uid: int,
               items: Sequence[int]) -> None:
    """Both paths return the same values for one feed (seen and reported as sets)."""
    a, b = feast["feed"](uid, items), direct["feed"](uid, items)
    assert a["history"] == [b["history"]], "history differs"
    assert sorted(a["seen"][0]) == sorted(b["seen"]), "seen differs"
    assert sorted(a["reported_authors"][0]) == sorted(b["reported_authors"]), "reported differs"
    for e in EVENTS:
        assert np.allclose(a[e], b[e]), f"{e} differs"


# ---- timing ----------------------------------------------------------------------------------
def run_scenario(methods: dict[str, Reader], args: argparse.Namespace,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Warm each method up, then time `args.calls` calls of each in alternating blocks."""
    def draw() -> tuple[int, list[int]]:
        uid = int(rng.integers(1, args.users + 1))
        return uid, [int(x) for x in rng.choice(args.items, args.feed_items, replace=False) + 1]

    for fn in methods.values():
        for _ in range(args.warmup):
            fn(*draw())
    names = list(methods)
    times: dict[str, list[int]] = {n: [] for n in names}
    for block in range(-(-args.calls // args.block)):
        inputs = [draw() for _ in range(min(args.block, args.calls - block * args.block))]
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            fn, out = methods[name], times[name]
            for uid, items in inputs:
                t0 = time.perf_counter_ns()
                fn(uid, items)
                out.append(time.perf_counter_ns() - t0)
    return {n: np.asarray(t, dtype=np.float64) / 1e6 for n, t in times.items()}


def summary(ms: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"n": len(ms), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(ms.mean()), 3),
            "max_ms": round(float(ms.max()), 3)}


# ---- setup -----------------------------------------------------------------------------------
def apply_repo(tmp: Path) -> FeatureStore:
    """A copy of integrations/feast in `tmp`, with empty batch files so `feast apply` validates
    its sources, applied with the Feast CLI."""
    repo = tmp / "repo"
    shutil.copytree(FEAST_REPO, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (repo / "data").mkdir()
    pq.write_table(USER_SCHEMA.empty_table(), repo / "data" / "user_recent_activity.parquet")
    pq.write_table(ITEM_SCHEMA.empty_table(), repo / "data" / "item_engagement.parquet")
    subprocess.run([sys.executable, "-m", "feast.cli.cli", "-c", str(repo), "apply"],
                   check=True, env=os.environ.copy(), stdout=subprocess.DEVNULL)
    return FeatureStore(repo_path=str(repo))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1m_start": round(os.getloadavg()[0], 2)}


def server_info(r: redis.Redis, section: str) -> dict[str, Any]:
    return cast(dict[str, Any], r.info(section))


def used_memory(r: redis.Redis) -> int:
    return int(server_info(r, "memory")["used_memory"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--seen", type=int, default=300)
    ap.add_argument("--reported", type=int, default=3)
    ap.add_argument("--feed-items", type=int, default=100)
    ap.add_argument("--calls", type=int, default=2_000, help="timed calls per method")
    ap.add_argument("--warmup", type=int, default=200, help="untimed calls per method first")
    ap.add_argument("--block", type=int, default=100, help="calls per method per turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    r = redis.Redis(host=args.host, port=args.port, db=DB)
    if not redis.utils.HIREDIS_AVAILABLE:
        raise SystemExit("hiredis is not installed: pip install 'redis[hiredis]'")
    os.environ[CONN_ENV] = f"{args.host}:{args.port},db={DB}"
    rng = np.random.default_rng(args.seed)
    info: dict[str, Any] = {"machine": machine()}
    r.flushdb()
    try:
        with tempfile.TemporaryDirectory(prefix="feast-online-") as tmp:
            store = apply_repo(Path(tmp))
            users, items = make_data(args, rng)
            m0 = used_memory(r)
            feast_write_s = write_feast(store, users, items)
            m1 = used_memory(r)
            direct_write_s = write_direct(r, users, items)
            m2 = used_memory(r)
            key_bytes = {k: {"bytes": r.memory_usage(k, samples=0),
                             "encoding": cast(bytes, r.object("encoding", k)).decode()}
                         for k in ("h:1", "s:1", "r:1", "i:1")}
            del users, items
            feast, direct = feast_readers(store), direct_readers(r)
            check_same(feast, direct, 1, list(range(1, args.feed_items + 1)))
            results: dict[str, dict[str, Any]] = {}
            for scenario, methods in (
                ("user_only", {"feast": feast["user_only"], "redis_py": direct["user_only"]}),
                ("feed", {"feast": feast["feed"], "feast_one_call": feast["feed_one_call"],
                          "redis_py": direct["feed"]}),
            ):
                ms = run_scenario(methods, args, rng)
                results[scenario] = {name: summary(v) for name, v in ms.items()}
                results[scenario]["feast_over_redis_py_p99"] = round(
                    results[scenario]["feast"]["p99_ms"]
                    / results[scenario]["redis_py"]["p99_ms"], 1)
            info["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    finally:
        r.flushdb()

    budget_ms = 2.0
    report = {
        "command": "python benchmarks/feast_online.py"
                   + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "note": "run with the python of an environment that has feast[redis] and "
                "redis[hiredis]; Funnel's own environment does not install Feast",
        **info,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "feast": importlib.metadata.version("feast"),
            "redis_py": importlib.metadata.version("redis"),
            "hiredis": importlib.metadata.version("hiredis"),
            "redis_server": server_info(r, "server")["redis_version"],
        },
        "data": {"users": args.users, "items": args.items, "history": args.history,
                 "seen": args.seen, "reported": args.reported, "feed_items": args.feed_items,
                 "redis_db": DB},
        "write": {"feast_push_s": round(feast_write_s, 1),
                  "redis_py_s": round(direct_write_s, 1),
                  "feast_used_memory_mb": round((m1 - m0) / 2**20, 1),
                  "redis_py_used_memory_mb": round((m2 - m1) / 2**20, 1),
                  "redis_py_key_bytes": key_bytes},
        "timing": {"calls_per_method": args.calls, "warmup_per_method": args.warmup,
                   "block": args.block, "threads": 1,
                   "feed": f"user_recent_activity for 1 user + item_engagement for "
                           f"{args.feed_items} items; feast = 2 get_online_features calls, "
                           "feast_one_call = 1 call over both views, redis_py = 1 pipeline"},
        "results": results,
        "budget_p99_ms_per_feed": budget_ms,
        "feast_meets_budget": results["feed"]["feast"]["p99_ms"] <= budget_ms,
        "redis_py_meets_budget": results["feed"]["redis_py"]["p99_ms"] <= budget_ms,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return report


def print_table(report: dict[str, Any]) -> None:
    print(f"feast {report['versions']['feast']}, redis {report['versions']['redis_server']}, "
          f"{report['machine']['cpu']} x{report['machine']['cores']}")
    print(f"{'scenario':<10} {'method':<15} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8}  (ms)")
    for scenario, methods in report["results"].items():
        for name, s in methods.items():
            if isinstance(s, dict):
                print(f"{scenario:<10} {name:<15} {s['p50_ms']:>8.3f} {s['p90_ms']:>8.3f} "
                      f"{s['p99_ms']:>8.3f} {s['mean_ms']:>8.3f}")
        print(f"{scenario:<10} feast/redis_py p99: {methods['feast_over_redis_py_p99']}x")
    print(f"feed budget {report['budget_p99_ms_per_feed']} ms p99: "
          f"feast {'meets' if report['feast_meets_budget'] else 'misses'} it, "
          f"redis-py {'meets' if report['redis_py_meets_budget'] else 'misses'} it")


if __name__ == "__main__":
    main()
