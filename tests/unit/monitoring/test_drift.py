"""The drift monitor: window reading, Evidently verdicts, summaries, the CLI and the gauges.

Real Evidently on small frames; a tiny reference-only bundle built per test session."""

from __future__ import annotations

import json
import re
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from funnel.contracts.bundle import write_manifest
from funnel.contracts.errors import BundleError
from monitoring.drift import (
    ColumnSpec,
    DriftRun,
    DriftSettings,
    compare,
    latest_summaries,
    load_reference,
    run_drift,
    write_run,
)
from monitoring.drift_cli import drift_app
from monitoring.drift_watch import DriftMetrics, last_complete_end, watch
from monitoring.drift_window import (
    Window,
    WindowError,
    open_log,
    parse_duration,
    parse_time,
    read_window,
)
from training.export import write_moderation_reference, write_reference

T10 = datetime(2026, 12, 1, 10, tzinfo=UTC)
LABELS = ("abuse", "spam")


def _feed(n: int, rng: np.random.Generator, *, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({
        "post_ctr": rng.normal(0.2 + shift * 0.05, 0.05, n).astype(np.float32),
        "user_ctr": rng.normal(0.2, 0.05, n).astype(np.float32),
        "p_click": rng.beta(2, 20, n).astype(np.float32),
        "score": rng.normal(0.15, 0.1, n),
        "topic": rng.choice(["music", "sports", "tech"], n),
    })


def _write_log(root: Path, kind: str, frame: pd.DataFrame, *, per_file: int = 200) -> None:
    hours = frame["ts"].dt.floor("h")
    for h, part in frame.groupby(hours):
        d = root / kind / f"date={h:%Y-%m-%d}" / f"hour={h:%H}"
        d.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(range(0, len(part), per_file)):
            table = pa.Table.from_pandas(part.iloc[s:s + per_file], preserve_index=False)
            table = table.set_column(table.schema.get_field_index("ts"), "ts",
                                     table.column("ts").cast(pa.timestamp("us", tz="UTC")))
            pq.write_table(table, d / f"replica-{i:03d}.parquet")


def _times(n: int, start: datetime, seconds: float, rng: np.random.Generator) -> pd.Series:
    offsets = pd.to_timedelta(np.sort(rng.uniform(0, seconds, n)), unit="s")
    return pd.Series(pd.Timestamp(start) + offsets).dt.floor("us")  # as the log stores them


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle holding only what the monitor reads: the reference files and a manifest."""
    root = tmp_path_factory.mktemp("artifacts") / "v-test"
    rng = np.random.default_rng(0)
    write_reference(root / "reference", _feed(1000, rng))
    write_moderation_reference(root / "reference/moderation.parquet",
                               rng.beta(0.5, 8, (3000, 2)), LABELS, max_rows=800, seed=0)
    write_manifest(root, {"version": "v-test"})
    return root


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """10:00-11:00: 600 feed rows with post_ctr shifted by one reference sd, 300 moderation
    calls (200 text, 100 image); 11:00-11:30: 100 more feed rows (outside the window)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "log"
    feed = _feed(600, rng, shift=1.0)
    feed["ts"] = _times(600, T10, 3600, rng)
    later = _feed(100, rng)
    later["ts"] = _times(100, T10 + timedelta(hours=1), 1800, rng)
    _write_log(root, "feed", pd.concat([feed, later], ignore_index=True))
    mod = pd.DataFrame({f"score_{lb}": rng.beta(0.5, 8, 300) for lb in LABELS})
    for lb in LABELS:
        mod[f"outcome_{lb}"] = np.where(mod[f"score_{lb}"] > 0.3, "review", "allow")
    mod.loc[:9, "outcome_spam"] = "block"
    mod["content"] = ["text"] * 200 + ["image"] * 100
    mod["decision"] = "allow"
    mod["ts"] = _times(300, T10, 3600, rng)
    _write_log(root, "moderation", mod)
    return root


# ---- windows -------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("1h", timedelta(hours=1)), ("30m", timedelta(minutes=30)),
    ("1h30m", timedelta(minutes=90)), ("2d", timedelta(days=2)), ("45s", timedelta(seconds=45)),
])
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1x", "h", "0h", "-1h", "1.5h"])
def test_bad_durations_quote_the_value(text: str) -> None:
    with pytest.raises(WindowError, match=re.escape(repr(text))):
        parse_duration(text)


def test_times_default_to_utc() -> None:
    assert parse_time("2026-12-01T10:00:00") == T10
    assert parse_time("2026-12-01T11:00:00+01:00") == T10
    with pytest.raises(WindowError, match="'yesterday'"):
        parse_time("yesterday")


def test_window_reads_only_its_rows_across_hours(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": np.arange(900, dtype=np.int64)})
    frame["ts"] = _times(900, T10 - timedelta(minutes=30), 3 * 3600, rng)  # 09:30-12:30
    _write_log(tmp_path, "feed", frame, per_file=100)
    hidden = tmp_path / "feed/date=2026-12-01/hour=10/_being-written.parquet"
    pq.write_table(pa.table({"x": [-1], "ts": pa.array([T10], pa.timestamp("us", tz="UTC"))}),
                   hidden)
    window = Window(T10 - timedelta(minutes=15), T10 + timedelta(hours=1, minutes=15))
    fs, root = open_log(str(tmp_path))
    got = read_window(fs, root, "feed", window, columns=["x"])
    ts = frame["ts"]
    inside = frame[(ts >= pd.Timestamp(window.start)) & (ts < pd.Timestamp(window.end))]
    assert got.rows_in_window == len(inside)
    assert sorted(got.frame["x"]) == sorted(inside["x"])
    assert not got.sampled
    assert set(got.frame.columns) == {"x", "ts"}

    a = read_window(fs, root, "feed", window, columns=["x"], max_rows=50, seed=7)
    b = read_window(fs, root, "feed", window, columns=["x"], max_rows=50, seed=7)
    assert len(a.frame) == 50 and a.sampled and a.rows_in_window == len(inside)
    assert a.frame["x"].is_unique and set(a.frame["x"]) <= set(inside["x"])
    assert list(a.frame["x"]) == list(b.frame["x"])


def test_a_missing_log_is_an_input_error(tmp_path: Path) -> None:
    from monitoring.drift_window import LogReadError

    with pytest.raises(LogReadError, match="no impression log"):
        open_log(str(tmp_path / "nowhere"))


# ---- Evidently verdicts --------------------------------------------------------------
def test_a_shifted_column_is_flagged_and_the_others_are_not() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(0, 1, 2000), "b": rng.normal(0, 1, 2000),
                        "t": rng.choice(["x", "y"], 2000, p=[0.5, 0.5])})
    cur = pd.DataFrame({"a": rng.normal(0.5, 1, 2000), "b": rng.normal(0, 1, 2000),
                        "t": rng.choice(["x", "y"], 2000, p=[0.5, 0.5])})
    specs = [ColumnSpec("a", "features", "numerical"), ColumnSpec("b", "features", "numerical"),
             ColumnSpec("t", "features", "categorical")]
    results, snap = compare(ref, cur, specs, DriftSettings())
    by = {r.column: r for r in results}
    assert by["a"].drifted and by["a"].score == pytest.approx(0.5, abs=0.08)
    assert by["a"].method == "wasserstein" and by["a"].threshold == pytest.approx(0.1)
    assert not by["b"].drifted and by["b"].score < 0.1
    assert not by["t"].drifted and by["t"].method == "psi"
    assert snap is not None


def test_reference_checksums_are_verified(bundle: Path, tmp_path: Path) -> None:
    ref = load_reference(bundle)
    assert ref.version == "v-test" and ref.moderation is not None
    assert list(ref.moderation.columns) == ["score_abuse", "score_spam"]
    assert len(ref.moderation) == 800  # capped by max_rows
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / "reference/sample.parquet").write_bytes(b"not parquet")
    with pytest.raises(BundleError, match=r"sample\.parquet: checksum mismatch"):
        load_reference(copy)
    with pytest.raises(BundleError, match="not a bundle"):
        load_reference(tmp_path / "nope")


# The fixtures' windows are small (600 feed rows, 200 text-only calls): these tests judge them
# with a lower minimum than the default, which insufficient-data tests below cover.
SMALL = DriftSettings(min_rows=100)


def test_run_summary_and_reports(bundle: Path, log: Path, tmp_path: Path) -> None:
    run = run_drift(log_url=str(log), reference=load_reference(bundle),
                    window=Window(T10, T10 + timedelta(hours=1)), settings=SMALL)
    assert run.status == "ok"
    assert run.rows_read == {"feed": 600, "moderation": 300}
    assert run.rows_compared == {"feed": 600, "moderation": 200}  # text-only calls
    by = {c.column: c for c in run.columns}
    assert by["post_ctr"].drifted and by["post_ctr"].group == "features"
    assert not by["user_ctr"].drifted
    assert by["topic"].method == "psi" and by["p_click"].group == "predictions"
    assert {by[f"score_{lb}"].group for lb in LABELS} == {"moderation"}
    feats = run.groups["features"]
    assert (feats.columns, feats.drifted_columns) == (3, 1)
    assert feats.any_drifted and not feats.dataset_drifted
    assert run.moderation["labels"]["spam"]["block_rate"] == pytest.approx(10 / 300)

    paths = write_run(run, str(tmp_path / "out"))
    assert paths["report"].endswith("20261201T110000Z/report.html")
    html = Path(paths["report"]).read_text()
    assert "<html" in html[:200] and "post_ctr" in html
    summary = json.loads(Path(paths["summary"]).read_text())
    assert summary["window"] == {"start": "2026-12-01T10:00:00+00:00",
                                 "end": "2026-12-01T11:00:00+00:00"}
    assert set(summary["columns"][0]) == {"column", "group", "method", "threshold", "score",
                                          "drifted", "rows"}
    assert set(summary["groups"]["features"]) == {
        "group", "columns", "drifted_columns", "drifted_share", "dataset_drifted",
        "any_drifted", "rows", "reference_rows", "status"}
    assert summary["groups"]["features"]["status"] == "ok"
    assert summary["groups"]["moderation"]["reference_rows"] == 800
    assert summary["rows_read"] == {"feed": 600, "moderation": 300}
    assert summary["settings"]["num_threshold"] == pytest.approx(0.1)
    assert [s["stamp"] for s in latest_summaries(str(tmp_path / "out"), last=5)] == [
        "20261201T110000Z"]


def test_excluded_columns_are_not_compared_and_the_summary_says_so(bundle: Path,
                                                                    log: Path) -> None:
    ref = load_reference(bundle)
    window = Window(T10, T10 + timedelta(hours=1))
    run = run_drift(log_url=str(log), reference=ref, window=window,
                    settings=DriftSettings(exclude=("post_ctr",), min_rows=100))
    assert "post_ctr" not in {c.column for c in run.columns}
    assert run.groups["features"].drifted_columns == 0
    assert "not compared (settings.exclude): post_ctr" in run.notes
    # the default leaves out the cyclic time encodings, which a short window cannot match
    assert {"hour_sin", "hour_cos", "dow_sin", "dow_cos"} <= set(DriftSettings().exclude)
    code, out = _cli("run", "--window", "1h", "--end", "2026-12-01T11:00", "--log", str(log),
                     "--bundle", str(bundle), "--out", str(log.parent / "o"),
                     "--exclude", "", "--min-rows", "100")
    assert code == 0, out
    assert "post_ctr" in out


def test_a_baseline_compares_with_an_earlier_window_of_the_log(bundle: Path, log: Path,
                                                              tmp_path: Path) -> None:
    """11:00-11:30 holds unshifted rows, 10:00-10:30 shifted ones: against the 10:00
    baseline post_ctr drifted; against the bundle (unshifted, like 11:00) it did not."""
    common = ["--window", "30m", "--end", "2026-12-01T11:30", "--log", str(log), "--bundle",
              str(bundle), "--exclude", "", "--min-rows", "100"]
    code, out = _cli("run", *common, "--out", str(tmp_path / "a"), "--baseline", "1h")
    assert code == 0, out
    summary = json.loads(next((tmp_path / "a").rglob("summary.json")).read_text())
    by = {c["column"]: c for c in summary["columns"]}
    assert by["post_ctr"]["drifted"] and by["post_ctr"]["score"] > 0.5  # a 1-sd shift
    assert summary["bundle_version"] == "log 2026-12-01T10:00..10:30Z"
    code, out = _cli("run", *common, "--out", str(tmp_path / "b"))
    assert code == 0, out
    summary = json.loads(next((tmp_path / "b").rglob("summary.json")).read_text())
    # 100 rows against the bundle's 1,000: only sampling noise
    assert {c["column"]: c for c in summary["columns"]}["post_ctr"]["score"] < 0.3
    code, out = _cli("run", *common, "--out", str(tmp_path / "c"), "--baseline", "1d")
    assert code == 2 and "--baseline" in out and "no feed records" in out


# ---- the CLI -------------------------------------------------------------------------
def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(drift_app, list(args), env={"COLUMNS": "200"})
    return r.exit_code, r.output


def test_cli_run_then_status(bundle: Path, log: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "reports")
    code, text = _cli("run", "--window", "30m", "--end", "2026-12-01T10:30:00Z", "--log",
                      str(log), "--bundle", str(bundle), "--out", out, "--max-rows", "100",
                      "--min-rows", "100")
    assert code == 0, text
    assert "post_ctr" in text and "report: " in text and "summary: " in text
    summary = json.loads((tmp_path / "reports/20261201T103000Z/summary.json").read_text())
    assert summary["rows_compared"]["feed"] == 100 < summary["rows_read"]["feed"]
    code, text = _cli("status", "--out", out, "--last", "5")
    assert code == 0, text
    assert "window 2026-12-01 10:00Z to 2026-12-01 10:30Z" in text
    assert "post_ctr" in text and "wasserstein" in text


def test_cli_empty_window_is_reported_and_exits_0(bundle: Path, log: Path,
                                                  tmp_path: Path) -> None:
    code, text = _cli("run", "--end", "2026-11-01T00:00:00Z", "--log", str(log), "--bundle",
                      str(bundle), "--out", str(tmp_path / "r"))
    assert code == 0, text
    assert "no records in window" in text
    summary = json.loads((tmp_path / "r/20261101T000000Z/summary.json").read_text())
    assert summary["status"] == "empty" and summary["columns"] == []
    assert not (tmp_path / "r/20261101T000000Z/report.html").exists()


@pytest.mark.parametrize(("args", "flag"), [
    (["--window", "an hour"], "--window"),
    (["--end", "noon"], "--end"),
    (["--bundle", "/no/such/bundle"], "--bundle"),
    (["--log", "/no/such/log"], "--log"),
    (["--max-rows", "5"], "--max-rows"),
    (["--num-threshold", "-1"], "--num-threshold"),
])
def test_cli_bad_input_exits_2_naming_the_flag(args: list[str], flag: str, bundle: Path,
                                               log: Path, tmp_path: Path) -> None:
    base = {"--log": str(log), "--bundle": str(bundle), "--out": str(tmp_path / "r")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    code, text = _cli("run", *[x for kv in base.items() for x in kv])
    assert code == 2, text
    assert flag in text and "Traceback" not in text


# ---- metrics and the watch loop ------------------------------------------------------
def test_metrics_render_the_alerted_names(bundle: Path, log: Path) -> None:
    m = DriftMetrics()
    before = m.render().decode()
    for o in ("ok", "empty", "failed"):
        assert f'funnel_drift_runs_total{{outcome="{o}"}} 0.0' in before
    run = run_drift(log_url=str(log), reference=load_reference(bundle),
                    window=Window(T10, T10 + timedelta(hours=1)), settings=SMALL)
    m.observe(run, duration_s=1.5, now_s=1_700_000_000)
    text = m.render().decode()
    assert 'funnel_drift_score{column="post_ctr",group="features",method="wasserstein"}' in text
    assert 'funnel_drift_column_drifted{column="post_ctr",group="features"} 1.0' in text
    assert 'funnel_drift_column_drifted{column="user_ctr",group="features"} 0.0' in text
    assert 'funnel_drift_share{group="features"} 0.333' in text
    assert 'funnel_drift_dataset_drifted{group="features"} 0.0' in text
    assert 'funnel_drift_window_rows{group="moderation"} 200.0' in text
    assert "funnel_drift_last_success_timestamp_seconds 1.7e+09" in text
    assert "funnel_drift_run_duration_seconds 1.5" in text
    assert 'funnel_drift_runs_total{outcome="ok"} 1.0' in text


def test_watch_counts_a_failed_run_and_goes_on(bundle: Path, log: Path) -> None:
    m = DriftMetrics()
    stop = threading.Event()
    now = [datetime(2026, 12, 1, 12, 0, 40, tzinfo=UTC).timestamp()]
    ends: list[datetime] = []
    ref = load_reference(bundle)

    def one(end: datetime) -> DriftRun:
        ends.append(end)
        if len(ends) == 1:
            raise OSError("storage unreachable")
        if len(ends) == 2:
            stop.set()
        return run_drift(log_url=str(log), reference=ref, window=Window(T10, end),
                         settings=SMALL)

    class Clock:  # waiting advances the fake clock instead of sleeping
        def __call__(self) -> float:
            return now[0]

    def fake_wait(timeout: float | None = None) -> bool:
        now[0] += timeout or 0
        return stop.is_set()

    stop.wait = fake_wait  # type: ignore[method-assign]
    runs = watch(run_window=one, every=timedelta(hours=1), metrics=m, stop=stop,
                 settle_s=30, clock=Clock())
    assert runs == 2
    assert ends == [datetime(2026, 12, 1, 12, tzinfo=UTC), datetime(2026, 12, 1, 13, tzinfo=UTC)]
    text = m.render().decode()
    assert 'funnel_drift_runs_total{outcome="failed"} 1.0' in text
    assert 'funnel_drift_runs_total{outcome="ok"} 1.0' in text


def test_window_ends_align_to_the_interval() -> None:
    t = datetime(2026, 12, 1, 10, 47, 3, tzinfo=UTC)
    assert last_complete_end(t, timedelta(hours=1)) == T10
    assert last_complete_end(t, timedelta(minutes=15)) == T10 + timedelta(minutes=45)


# ---- small windows: insufficient data ------------------------------------------------
def test_split_insufficient_judges_only_groups_with_enough_rows() -> None:
    from monitoring.drift import split_insufficient

    specs = [ColumnSpec("a", "features", "numerical"), ColumnSpec("p_x", "predictions",
                                                                   "numerical"),
             ColumnSpec("score_spam", "moderation", "numerical")]
    keep, thin = split_insufficient(
        specs, window_rows={"features": 43, "predictions": 43, "moderation": 5000},
        reference_rows={"features": 5000, "predictions": 5000, "moderation": 999},
        min_rows=1000)
    assert keep == [] and set(thin) == {"features", "predictions", "moderation"}
    f = thin["features"]
    assert (f.status, f.rows, f.reference_rows, f.columns) == ("insufficient data", 43, 5000, 1)
    assert f.drifted_share is None and not f.dataset_drifted and not f.any_drifted
    keep, thin = split_insufficient(
        specs, window_rows={"features": 1000, "predictions": 1000, "moderation": 1000},
        reference_rows={"features": 1000, "predictions": 1000, "moderation": 1000},
        min_rows=1000)
    assert keep == specs and thin == {}


def test_a_small_window_is_insufficient_data_and_no_drift_alert_can_fire(
        bundle: Path, log: Path, tmp_path: Path) -> None:
    """The trial's case: a window of 43 rows flagged 23 of 24 columns as drifted. Ten
    minutes of the fixture's log (about 100 feed rows, 35 text calls) is below the default
    minimum of 1,000 rows."""
    run = run_drift(log_url=str(log), reference=load_reference(bundle),
                    window=Window(T10, T10 + timedelta(minutes=10)), settings=DriftSettings())
    assert run.status == "ok" and run.columns == [] and run.snapshot is None
    assert {g: r.status for g, r in run.groups.items()} == {
        "features": "insufficient data", "predictions": "insufficient data",
        "moderation": "insufficient data"}
    assert not any(r.dataset_drifted or r.any_drifted for r in run.groups.values())
    assert 0 < run.groups["features"].rows < 1000
    assert any(n.startswith("features: insufficient data") for n in run.notes)
    summary = json.loads(Path(write_run(run, str(tmp_path / "o"))["summary"]).read_text())
    assert summary["groups"]["features"]["drifted_share"] is None
    assert summary["settings"]["min_rows"] == 1000

    m = DriftMetrics()
    m.observe(run, duration_s=1.0, now_s=1_700_000_000)
    text = m.render().decode()
    assert 'funnel_drift_insufficient_data{group="features"} 1.0' in text
    # the series the drift alerts read are absent: no alert can fire on a guess
    for name in ("funnel_drift_column_drifted{", "funnel_drift_dataset_drifted{",
                 "funnel_drift_share{", "funnel_drift_score{"):
        assert name not in text
    assert 'funnel_drift_runs_total{outcome="ok"} 1.0' in text
    # a judged window clears the flag
    m.observe(run_drift(log_url=str(log), reference=load_reference(bundle),
                        window=Window(T10, T10 + timedelta(hours=1)), settings=SMALL),
              duration_s=1.0, now_s=1_700_000_000)
    assert 'funnel_drift_insufficient_data{group="features"} 0.0' in m.render().decode()


def test_cli_small_window_says_insufficient_data(bundle: Path, log: Path,
                                                 tmp_path: Path) -> None:
    code, text = _cli("run", "--window", "10m", "--end", "2026-12-01T10:10:00Z", "--log",
                      str(log), "--bundle", str(bundle), "--out", str(tmp_path / "r"))
    assert code == 0, text
    assert "features: insufficient data" in text and "no verdict" in text
    assert "yes" not in text  # no column called drifted
    code, text = _cli("status", "--out", str(tmp_path / "r"))
    assert code == 0 and "insufficient data" in text


@pytest.mark.parametrize(("args", "flag"), [
    (["--min-rows", "0"], "--min-rows"),
    (["--max-rows", "500"], "--max-rows"),  # below the default min_rows: always insufficient
])
def test_cli_min_rows_is_validated(args: list[str], flag: str, bundle: Path, log: Path,
                                   tmp_path: Path) -> None:
    code, text = _cli("run", *args, "--log", str(log), "--bundle", str(bundle), "--out",
                      str(tmp_path / "r"))
    assert code == 2, text
    assert flag in text and "Traceback" not in text


def test_status_keeps_the_window_end_whole_at_80_columns(bundle: Path, log: Path,
                                                          tmp_path: Path) -> None:
    """`funnel drift status` cut the window end to '2026-12-03T1…' at 80 columns."""
    from rich.console import Console

    from monitoring.drift_cli import status_tables

    out = str(tmp_path / "reports")
    for end in ("2026-12-01T10:30:00Z", "2026-12-01T11:00:00Z"):
        code, text = _cli("run", "--window", "30m", "--end", end, "--log", str(log),
                          "--bundle", str(bundle), "--out", out, "--min-rows", "100")
        assert code == 0, text
    r = CliRunner().invoke(drift_app, ["status", "--out", out], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "2026-12-01 10:30Z to 2026-12-01 11:00Z" in r.output
    assert "2026-12-01 10:00Z to 2026-12-01 10:30Z" in r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80
    console = Console(width=80, record=True)
    for table in status_tables(latest_summaries(out, last=5)):
        console.print(table)
    shown = console.export_text()
    assert "2026-12-01 11:00Z" in shown and "…" not in shown
    assert "post_ctr" in shown and "wasserstein" in shown
