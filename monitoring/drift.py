"""The drift monitor's core: one window of the impression log against the bundle's reference.

A run reads the window [start, end) of the feed and moderation logs (`drift_window`: only
the date/hour partitions it covers, a seeded uniform sample of at most `max_rows` rows each,
so memory stays bounded however busy the window was), compares each column with the bundle's
reference in one Evidently report, and returns a `DriftRun`: per column the test, score,
threshold and verdict, per group the share of drifted columns. `write_run` stores the
Evidently HTML and a JSON summary under `{out}/{window end}/`.

Column groups (a column is compared when both the reference and the window have it):
- features: the ranker's inputs as served and the item's categories, i.e. every column of
  `reference/sample.parquet` that is not a prediction (the 14 dense features, topic,
  modality);
- predictions: the ranker's task probabilities `p_*` and the final `score`;
- moderation: the text head's `score_<label>` on `/v1/moderate` calls with text only,
  against `reference/moderation.parquet` (the head's scores on held-out texts). Calls with an
  image are left out: their nudity score is the image model's, which the text-only
  reference does not describe. Bundles without that file skip the group, with a note.

Tests: numeric columns, Wasserstein distance normed by the reference's standard deviation
(a shift of the mean by k standard deviations scores about k); categorical columns, PSI.
A column drifts when its score reaches its threshold; a group's dataset drift is a drifted
share of at least `drift_share`. The default thresholds come from the detection-power
benchmark (`funnel bench drift`, BENCHMARKS.md).

Small windows. Both scores are distances between two samples, and with few rows sampling
noise alone reaches the thresholds: between two samples of one normal distribution (a window
of n rows, a reference of 5,000), the normed Wasserstein distance's median is 0.18 at n = 43
(most columns "drift"), 0.056 at 500 (95th percentile 0.097) and 0.041 at 1,000 (99th
percentile 0.076, under the 0.1 threshold); PSI over 10 equally likely categories has a 99th
percentile of 0.048 at 500 rows and 0.024 at 1,000 (threshold 0.03). So a group is judged
only when the window and the reference both hold at least `min_rows` rows (1,000 by default);
below that it is reported as "insufficient data": not compared, no verdict, no gauge that
an alert reads.

This module imports no Ray and no FastAPI; Evidently is imported on first use.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from funnel.contracts.bundle import FORMAT_VERSION, read_manifest, resolve_bundle, sha256_file
from funnel.contracts.errors import BundleError
from monitoring.drift_window import LogReadError, Window, open_log, read_window

log = logging.getLogger("funnel.drift")
Say = Callable[[str], None]

GROUPS = ("features", "predictions", "moderation")
NUM_METHOD = "wasserstein"
CAT_METHOD = "psi"
# Chosen on the synthetic detection-power benchmark (`funnel bench drift`, BENCHMARKS.md):
# in windows of 5,000 requests a 0.25-sd mean shift scored 0.22-0.29 and no-drift windows at
# most 0.076 over all 14 dense features; a +10-point change in one topic's share scored
# 0.078-0.105 PSI (the usual 0.1 rule of thumb misses most of them), no-drift windows
# under 0.001.
DEFAULT_NUM_THRESHOLD = 0.1
DEFAULT_CAT_THRESHOLD = 0.03
DEFAULT_MAX_ROWS = 50_000
DEFAULT_MIN_ROWS = 1_000  # per group, window and reference: see the module docstring
INSUFFICIENT: Literal["insufficient data"] = "insufficient data"
REFERENCE_SAMPLE = "reference/sample.parquet"
REFERENCE_MODERATION = "reference/moderation.parquet"


DEFAULT_EXCLUDE = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")


class DriftSettings(BaseModel):
    """Thresholds and sampling of a drift run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_threshold: float = Field(DEFAULT_NUM_THRESHOLD, gt=0, le=10)
    cat_threshold: float = Field(DEFAULT_CAT_THRESHOLD, gt=0, le=10)
    per_column_threshold: dict[str, Annotated[float, Field(gt=0, le=10)]] = Field(
        default_factory=dict)
    drift_share: float = Field(0.5, gt=0, le=1)
    min_rows: int = Field(DEFAULT_MIN_ROWS, ge=1, description="rows a group needs in the "
                          "window and in the reference to be judged; fewer: insufficient data")
    max_rows: int | None = Field(DEFAULT_MAX_ROWS, ge=100, description="rows sampled per "
                                 "kind of record; None reads the whole window")
    seed: int = 0
    # Columns left out of the comparison. By default the time-of-day and day-of-week
    # encodings: a window shorter than a week covers part of their cycle, so they always
    # differ from a reference spread over all times (an hour's window: every row has the same
    # hour), which says nothing about the model's inputs going wrong.
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    @field_validator("max_rows")
    @classmethod
    def _sample_holds_min_rows(cls, v: int | None, info: ValidationInfo) -> int | None:
        least = info.data.get("min_rows")
        if v is not None and least is not None and v < least:
            raise ValueError(f"max_rows {v} is below min_rows {least}: every window would be "
                             "insufficient data")
        return v


# ---- the reference ---------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """The bundle's drift reference: feed rows and (when the bundle has them) moderation
    scores, read after their checksums matched the manifest."""

    version: str
    path: Path
    feed: pd.DataFrame
    moderation: pd.DataFrame | None


def load_reference(bundle: str | Path) -> Reference:
    """Only the reference files are checksummed (not the whole bundle, whose catalog can be
    large): a run every hour should not re-hash models it never reads."""
    root = resolve_bundle(bundle)
    manifest = read_manifest(root)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root}: format_version {manifest.get('format_version')!r} is not "
                          f"supported; this Funnel reads {FORMAT_VERSION}")
    files = manifest["files"]

    def verified(rel: str) -> Path:
        path = root / rel
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in the manifest)")
        if sha256_file(path) != files[rel]:
            raise BundleError(f"{path}: checksum mismatch with the manifest; refusing it")
        return path

    if REFERENCE_SAMPLE not in files:
        raise BundleError(f"{root}: the manifest lists no {REFERENCE_SAMPLE!r}")
    feed = pd.read_parquet(verified(REFERENCE_SAMPLE))
    moderation = (pd.read_parquet(verified(REFERENCE_MODERATION))
                  if REFERENCE_MODERATION in files else None)
    return Reference(version=str(manifest.get("version", "unknown")), path=root, feed=feed,
                     moderation=moderation)


def reference_from_log(*, log_url: str, window: Window, like: Reference,
                       settings: DriftSettings,
                       storage_options: Mapping[str, Any] | None = None) -> Reference:
    """A past window of the impression log as the reference (`--baseline 1d`: the same
    window a day earlier). The bundle's sample describes the training run's impressions;
    served pages differ from those by design (the top of the ranking, today's candidates),
    so a baseline of served traffic asks a narrower question: has traffic changed since
    then? `like` (the bundle's reference) says which columns there are to compare."""
    fs, root = open_log(log_url, storage_options)
    feed = read_window(fs, root, "feed", window, columns=list(like.feed.columns),
                       max_rows=settings.max_rows, seed=settings.seed + 2)
    if not feed.rows_in_window:
        raise LogReadError(f"{log_url}: no feed records in the baseline window "
                           f"{window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} UTC")
    mod = read_window(fs, root, "moderation", window, max_rows=settings.max_rows,
                      seed=settings.seed + 3).frame
    if "content" in mod.columns:
        mod = mod[mod["content"] == "text"]
    scores = [c for c in mod.columns if c.startswith("score_")]
    return Reference(version=f"log {window.start:%Y-%m-%dT%H:%M}..{window.end:%H:%M}Z",
                     path=Path(root), feed=feed.frame.drop(columns=["ts"], errors="ignore"),
                     moderation=mod[scores].reset_index(drop=True) if scores and len(mod)
                     else None)


# ---- columns ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnSpec:
    name: str
    group: str
    kind: Literal["numerical", "categorical"]


def _is_prediction(name: str) -> bool:
    return name == "score" or name.startswith("p_")


def _kind(s: pd.Series) -> Literal["numerical", "categorical"]:
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    return "numerical" if numeric else "categorical"


def plan_columns(reference: Reference, feed_columns: Sequence[str],
                 moderation_columns: Sequence[str]) -> list[ColumnSpec]:
    """The columns to compare: the reference's, where the window's log has them too."""
    live = set(feed_columns)
    specs = [ColumnSpec(c, "predictions" if _is_prediction(c) else "features",
                        _kind(reference.feed[c]))
             for c in reference.feed.columns if c in live]
    if reference.moderation is not None:
        mod = set(moderation_columns)
        specs += [ColumnSpec(c, "moderation", "numerical") for c in reference.moderation.columns
                  if c.startswith("score_") and c in mod]
    return specs


def skipped_groups(specs: Sequence[ColumnSpec], reference: Reference, *, feed_rows: int,
                   moderation_rows: int) -> list[str]:
    """A note for each group with nothing to compare, saying why."""
    notes = []
    for g in GROUPS:
        if any(s.group == g for s in specs):
            continue
        if g == "moderation" and reference.moderation is None:
            why = (f"bundle {reference.version} has no {REFERENCE_MODERATION} (trained "
                   "without harm labels, or before it was exported)")
        elif g != "moderation" and not feed_rows:
            why = "no feed records in the window"
        elif g == "moderation" and not moderation_rows:
            why = "no text-only moderation calls in the window"
        else:
            why = "the log has none of the reference's columns"
        notes.append(f"{g}: skipped, {why}")
    return notes


# ---- comparing -------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnResult:
    column: str
    group: str
    method: str
    threshold: float
    score: float
    drifted: bool
    rows: int  # live rows compared (non-null)


@dataclass(frozen=True)
class GroupResult:
    """A group's verdict. `status` 'insufficient data': the window or the reference had
    fewer than `min_rows` rows, nothing was compared, `drifted_share` is None and neither
    drift flag is set (no verdict, not "no drift")."""

    group: str
    columns: int
    drifted_columns: int
    drifted_share: float | None
    dataset_drifted: bool
    any_drifted: bool
    rows: int  # live rows in the window (compared, when judged)
    reference_rows: int = 0
    status: Literal["ok", "insufficient data"] = "ok"


def compare(reference: pd.DataFrame, current: pd.DataFrame, specs: Sequence[ColumnSpec],
            settings: DriftSettings) -> tuple[list[ColumnResult], Any]:
    """Evidently's DataDriftPreset over `specs`; returns the per-column results and the
    Evidently snapshot (for its HTML). Columns null on either side are left out."""
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry: off
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    specs = [s for s in specs
             if reference[s.name].notna().any() and current[s.name].notna().any()]
    if not specs:
        return [], None
    names = [s.name for s in specs]
    ref, cur = _prepared(reference, specs), _prepared(current, specs)
    dd = DataDefinition(numerical_columns=[s.name for s in specs if s.kind == "numerical"],
                        categorical_columns=[s.name for s in specs if s.kind == "categorical"])
    preset = DataDriftPreset(
        columns=names, num_method=NUM_METHOD, cat_method=CAT_METHOD,
        num_threshold=settings.num_threshold, cat_threshold=settings.cat_threshold,
        per_column_threshold={c: t for c, t in settings.per_column_threshold.items()
                              if c in names} or None,
        drift_share=settings.drift_share)
    snap = Report([preset]).run(current_data=Dataset.from_pandas(cur, data_definition=dd),
                                reference_data=Dataset.from_pandas(ref, data_definition=dd))
    scores: dict[str, tuple[str, float, float]] = {}
    for m in snap.dict()["metrics"]:
        cfg = m.get("config") or {}
        if str(cfg.get("type", "")).endswith("ValueDrift") and cfg.get("column") in names:
            scores[cfg["column"]] = (str(cfg["method"]), float(cfg["threshold"]),
                                     float(m["value"]))
    results = []
    for s in specs:
        method, threshold, score = scores[s.name]
        results.append(ColumnResult(column=s.name, group=s.group, method=method,
                                    threshold=threshold, score=score,
                                    drifted=bool(score >= threshold),
                                    rows=int(cur[s.name].notna().sum())))
    return results, snap


def _prepared(frame: pd.DataFrame, specs: Sequence[ColumnSpec]) -> pd.DataFrame:
    out = {}
    for s in specs:
        col = frame[s.name]
        if s.kind == "numerical":
            out[s.name] = col.astype(np.float64)
        else:  # strings (bools too) with missing values kept missing
            out[s.name] = col.astype(object).where(col.notna(), None).map(
                lambda v: v if v is None else str(v))
    return pd.DataFrame(out)


def summarise_groups(results: Sequence[ColumnResult], rows: Mapping[str, int], *,
                     drift_share: float, reference_rows: Mapping[str, int] | None = None
                     ) -> dict[str, GroupResult]:
    out = {}
    for g in GROUPS:
        rs = [r for r in results if r.group == g]
        if not rs:
            continue
        n = sum(r.drifted for r in rs)
        share = n / len(rs)
        out[g] = GroupResult(group=g, columns=len(rs), drifted_columns=n, drifted_share=share,
                             dataset_drifted=share >= drift_share, any_drifted=n > 0,
                             rows=rows.get(g, 0),
                             reference_rows=(reference_rows or {}).get(g, 0))
    return out


def split_insufficient(specs: Sequence[ColumnSpec], *, window_rows: Mapping[str, int],
                       reference_rows: Mapping[str, int], min_rows: int
                       ) -> tuple[list[ColumnSpec], dict[str, GroupResult]]:
    """(the columns of groups with at least `min_rows` rows in both the window and the
    reference, to compare; an 'insufficient data' result for each other group that has
    columns)."""
    keep, thin = [], {}
    for g in GROUPS:
        mine = [s for s in specs if s.group == g]
        if not mine:
            continue
        cur, ref = window_rows.get(g, 0), reference_rows.get(g, 0)
        if cur >= min_rows and ref >= min_rows:
            keep += mine
            continue
        thin[g] = GroupResult(group=g, columns=len(mine), drifted_columns=0,
                              drifted_share=None, dataset_drifted=False, any_drifted=False,
                              rows=cur, reference_rows=ref, status=INSUFFICIENT)
    return keep, thin


def moderation_rates(frame: pd.DataFrame) -> dict[str, Any]:
    """Per-label review and block rates of the window's moderation calls (of the sample,
    when sampled), and the share of each decision."""
    n = len(frame)
    labels = sorted(c[len("outcome_"):] for c in frame.columns if c.startswith("outcome_"))
    out: dict[str, Any] = {"calls": n, "labels": {}}
    if not n:
        return out
    out["labels"] = {lb: {o + "_rate": float((frame[f"outcome_{lb}"] == o).mean())
                          for o in ("review", "block")} for lb in labels}
    if "decision" in frame.columns:
        out["decisions"] = {d: float((frame["decision"] == d).mean())
                            for d in ("allow", "review", "block")}
    return out


# ---- a run -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftRun:
    """The outcome of one window: `status` is 'ok', or 'empty' when the window holds no
    record of either kind (nothing compared, no HTML). In an 'ok' run a group with too few
    rows has status 'insufficient data' in `groups` and no columns in `columns`."""

    window: Window
    status: Literal["ok", "empty"]
    bundle_version: str
    rows_read: dict[str, int]
    rows_compared: dict[str, int]
    columns: list[ColumnResult]
    groups: dict[str, GroupResult]
    notes: list[str]
    moderation: dict[str, Any]
    settings: DriftSettings
    snapshot: Any = field(default=None, compare=False, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "window": {"start": self.window.start.isoformat(),
                       "end": self.window.end.isoformat()},
            "status": self.status,
            "bundle_version": self.bundle_version,
            "rows_read": self.rows_read,
            "rows_compared": self.rows_compared,
            "settings": self.settings.model_dump(mode="json"),
            "columns": [asdict(c) for c in self.columns],
            "groups": {g: asdict(r) for g, r in self.groups.items()},
            "moderation_rates": self.moderation,
            "notes": self.notes,
        }


def run_drift(*, log_url: str, reference: Reference, window: Window, settings: DriftSettings,
              storage_options: Mapping[str, Any] | None = None,
              say: Say = lambda _m: None) -> DriftRun:
    fs, root = open_log(log_url, storage_options)
    say(f"reading the feed log, {window.start:%Y-%m-%d %H:%M} to {window.end:%H:%M} UTC")
    feed = read_window(fs, root, "feed", window, columns=list(reference.feed.columns),
                       max_rows=settings.max_rows, seed=settings.seed)
    say(f"reading the moderation log ({feed.rows_in_window:,} feed rows in the window)")
    mod = read_window(fs, root, "moderation", window, max_rows=settings.max_rows,
                      seed=settings.seed + 1)
    notes = [f"unreadable file skipped: {u}" for u in (*feed.unreadable, *mod.unreadable)]
    rows_read = {"feed": feed.rows_in_window, "moderation": mod.rows_in_window}
    rates = moderation_rates(mod.frame)
    if not feed.rows_in_window and not mod.rows_in_window:
        return DriftRun(window=window, status="empty", bundle_version=reference.version,
                        rows_read=rows_read, rows_compared={"feed": 0, "moderation": 0},
                        columns=[], groups={}, notes=[*notes, "no records in window"],
                        moderation=rates, settings=settings)
    mod_text = mod.frame
    if "content" in mod_text.columns:  # text-only calls: see the module docstring
        mod_text = mod_text[mod_text["content"] == "text"]
    specs = [c for c in plan_columns(reference,
                                     list(feed.frame.columns) if len(feed.frame) else [],
                                     list(mod_text.columns) if len(mod_text) else [])
             if c.name not in settings.exclude]
    if settings.exclude:
        notes.append("not compared (settings.exclude): " + ", ".join(settings.exclude))
    notes += skipped_groups(specs, reference, feed_rows=len(feed.frame),
                            moderation_rows=len(mod_text))
    n_ref_mod = len(reference.moderation) if reference.moderation is not None else 0
    specs, thin = split_insufficient(
        specs, window_rows={"features": len(feed.frame), "predictions": len(feed.frame),
                            "moderation": len(mod_text)},
        reference_rows={"features": len(reference.feed), "predictions": len(reference.feed),
                        "moderation": n_ref_mod},
        min_rows=settings.min_rows)
    notes += [f"{g}: {INSUFFICIENT}, {r.rows:,} rows in the window and {r.reference_rows:,} "
              f"in the reference; at least {settings.min_rows:,} each are needed (min_rows): "
              "not compared, no verdict" for g, r in thin.items()]
    current = _stack(feed.frame, mod_text, specs)
    ref = _stack(reference.feed, reference.moderation, specs)
    say(f"comparing {len(specs)} columns with Evidently ({len(feed.frame):,} feed rows, "
        f"{len(mod_text):,} moderation rows)" if specs else "nothing to compare")
    results, snap = compare(ref, current, specs, settings)
    results.sort(key=lambda r: GROUPS.index(r.group))  # stable: the reference's order within
    missing = {s.name for s in specs} - {r.column for r in results}
    notes += [f"{c}: not compared, no values in the window or the reference"
              for c in sorted(missing)]
    done = {r.group for r in results}
    n_feed = len(feed.frame) if done & {"features", "predictions"} else 0
    n_mod = len(mod_text) if "moderation" in done else 0
    rows_compared = {"feed": n_feed, "moderation": n_mod}
    judged = summarise_groups(results, {"features": n_feed, "predictions": n_feed,
                                        "moderation": n_mod},
                              drift_share=settings.drift_share,
                              reference_rows={"features": len(reference.feed),
                                              "predictions": len(reference.feed),
                                              "moderation": n_ref_mod})
    groups = {g: judged.get(g) or thin[g] for g in GROUPS if g in judged or g in thin}
    return DriftRun(window=window, status="ok", bundle_version=reference.version,
                    rows_read=rows_read, rows_compared=rows_compared, columns=results,
                    groups=groups, notes=notes, moderation=rates, settings=settings,
                    snapshot=snap)


def _stack(feed: pd.DataFrame, moderation: pd.DataFrame | None,
           specs: Sequence[ColumnSpec]) -> pd.DataFrame:
    """One frame for one Evidently report: feed rows then moderation rows, each null in the
    other's columns (Evidently drops nulls per column, so each test sees only its rows)."""
    feed_cols = [s.name for s in specs if s.group != "moderation"]
    mod_cols = [s.name for s in specs if s.group == "moderation"]
    parts = [feed[feed_cols].reset_index(drop=True)]
    if mod_cols and moderation is not None:
        parts.append(moderation[mod_cols].reset_index(drop=True))
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    for c in [*feed_cols, *mod_cols]:
        if c not in out.columns:
            out[c] = np.nan
    return out


# ---- reports ---------------------------------------------------------------------------
def write_run(run: DriftRun, out: str, *,
              storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """`{out}/{window end}/report.html` (when something was compared) and `summary.json`
    (written last: a directory with a summary is complete). Returns the paths."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(out, **dict(storage_options or {}))
    directory = f"{root.rstrip('/')}/{run.window.stamp}"
    fs.makedirs(directory, exist_ok=True)
    paths = {}
    if run.snapshot is not None:
        paths["report"] = f"{directory}/report.html"
        with fs.open(paths["report"], "w") as f:
            f.write(run.snapshot.get_html_str(as_iframe=False))
    paths["summary"] = f"{directory}/summary.json"
    summary = run.summary()
    if "report" in paths:
        summary["report"] = "report.html"
    with fs.open(paths["summary"], "w") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    return paths


def latest_summaries(out: str, *, last: int,
                     storage_options: Mapping[str, Any] | None = None
                     ) -> list[dict[str, Any]]:
    """The summaries of the `last` most recent windows under `out`, newest first."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(out, **dict(storage_options or {}))
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    stamps = sorted((p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)),
                    reverse=True)
    found = []
    for stamp in stamps:
        if not re.fullmatch(r"\d{8}T\d{6}Z", stamp):
            continue
        try:
            with fs.open(f"{root}/{stamp}/summary.json", "r") as f:
                found.append({"stamp": stamp, **json.load(f)})
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # a run still writing, or a broken one: not a window to show
        if len(found) >= last:
            break
    return found
