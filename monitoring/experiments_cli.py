"""`funnel experiment`: `report` (the A/B analysis of a window of the impression log) and
`plan` (the sample size an experiment needs). Parses options, calls monitoring.experiments,
prints a table and optionally writes JSON; bad input exits 2 naming the option.

pandas, pyarrow and scipy are imported inside the commands, so that every other `funnel`
command starts without them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from monitoring.drift_window import Window
    from monitoring.experiments import ExperimentReport, Plan

experiment_app = typer.Typer(help="Experiments: A/B analysis of the impression log, and "
                             "sample sizes.", no_args_is_help=True)

FEED_COLUMNS = ("request_id", "user_id", "item_id", "position", "ranker_variant",
                "retrieval_variant", "latency_ms", "team", "interleaved_variant")
EVENT_COLUMNS = ("event_id", "request_id", "user_id", "item_id", "event", "value",
                 "received_ts", "replica")


MODERATION_COLUMNS = None  # every column: one outcome_<label> per policy label


class Stage(StrEnum):
    ranker = "ranker"
    retrieval = "retrieval"
    moderation = "moderation"


LogOpt = Annotated[str, typer.Option(
    "--log", envvar="FUNNEL_IMPRESSIONS_URL",
    help="Impression log root: a directory or any fsspec URL (s3://...).")]
AlphaOpt = Annotated[float, typer.Option(min=0.0001, max=0.5, help="Significance level.")]
OutOpt = Annotated[str | None, typer.Option(help="Also write the result as JSON here.")]


def _now() -> datetime:
    return datetime.now(UTC)


def _window(*, length: str | None, start: str | None, end: str | None,
            now: Callable[[], datetime]) -> Window:
    from monitoring.drift_window import Window, WindowError, parse_duration, parse_time

    if length is not None and start is not None:
        raise typer.BadParameter("give --window (a length ending at --end) or --start, not "
                                 "both", param_hint="--window")
    try:
        t_end = parse_time(end) if end else now()
    except WindowError as e:
        raise typer.BadParameter(str(e), param_hint="--end") from e
    if start is not None:
        try:
            t_start = parse_time(start)
        except WindowError as e:
            raise typer.BadParameter(str(e), param_hint="--start") from e
        if t_start >= t_end:
            raise typer.BadParameter(f"{start!r} is not before the end ({t_end.isoformat()})",
                                     param_hint="--start")
        return Window(t_start, t_end)
    try:
        return Window.ending(t_end, parse_duration(length or "24h"))
    except WindowError as e:
        raise typer.BadParameter(str(e), param_hint="--window") from e


def deprecated_alias(new: str | None, old: str | None, *, new_flag: str, old_flag: str,
                     err: Console) -> str | None:
    """`old` (a hidden, deprecated spelling of `new_flag`) still works, with a note on stderr;
    both at once is an error."""
    if old is None:
        return new
    if new is not None:
        raise typer.BadParameter(f"{old_flag} is the deprecated spelling of {new_flag}; give "
                                 "one of them", param_hint=old_flag)
    err.print(f"note: {old_flag} is deprecated; use {new_flag} (the same value)",
              highlight=False)
    return old


def rollout_variants(path: str, stage: str) -> tuple[str, ...]:
    """The names of `stage`'s variants in the rollout config file at `path`, the primary
    (the control) first. Bad files exit 2 naming --rollout-config."""
    from funnel.contracts.errors import InvalidInputError, RolloutConfigError
    from funnel.contracts.rollout import parse_rollout
    from training.config import read_yaml

    try:
        config = parse_rollout(read_yaml(path, what="rollout config"))
    except (InvalidInputError, RolloutConfigError) as e:
        raise typer.BadParameter(str(e), param_hint="--rollout-config") from e
    st = config.stage(stage)
    if st is None or not st.variants:
        raise typer.BadParameter(
            f"{path}: no variants for stage {stage!r} (it configures "
            f"{', '.join(config.stages) or 'no stage'})", param_hint="--rollout-config")
    return tuple(v.name for v in st.variants)


def _write(payload: dict[str, Any], out: str | None, console: Console) -> None:
    if out is None:
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)


def _num(v: float, digits: int = 4) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:+.2%}"


VERDICT_STYLE = {"better": "[green]better[/]", "worse": "[red]worse[/]",
                 "breached": "[red]breached[/]", "no significant difference": "not significant",
                 "insufficient data": "[yellow]insufficient data[/]"}


def print_report(rep: ExperimentReport, console: Console) -> None:
    w = rep.window
    span = f", {w.get('start')} to {w.get('end')}" if w else ""
    console.print(f"{rep.stage} experiment{span}; alpha {rep.alpha:g}", highlight=False)
    console.print(f"control: {rep.control}, chosen as {rep.control_rule}", highlight=False)
    mins = rep.minimums
    vt = Table("variant", rep.unit, "requests", rep.row, "enough data", title="variants")
    for v in rep.variants:
        mark = " (control)" if v.name == rep.control and v.name != "control" else ""
        vt.add_row(v.name + mark, f"{v.users:,}", f"{v.requests:,}", f"{v.impressions:,}",
                   "yes" if v.sufficient else "[yellow]no[/]")
    if rep.variants:
        console.print(vt)
        if mins:
            console.print(f"enough data: at least {mins['users']:,} {rep.unit} and "
                          f"{mins['impressions']:,} {rep.row} per variant (--min-users, "
                          "--min-impressions); below that no p-value and no verdict",
                          highlight=False)
    guards = ", ".join(dict.fromkeys(m.metric for m in rep.metrics if m.guardrail))
    mt = Table("metric", "variant", "value [95% CI]", "design effect", "diff vs control",
               "relative [95% CI]", "p", "verdict",
               title=f"metrics (guardrails: {guards or 'none'})")
    silent = [name for name in dict.fromkeys(m.metric for m in rep.metrics)
              if all(m.value == 0 for m in rep.metrics if m.metric == name)]
    for m in rep.metrics:
        if m.metric in silent:
            continue
        cmp = m.vs_control
        digits = 3 if m.metric.startswith("dwell") else 4
        value = f"{_num(m.value, digits)} [{_num(m.ci[0], digits)}, {_num(m.ci[1], digits)}]"
        verdict = VERDICT_STYLE.get(m.verdict, m.verdict)
        if cmp is None and m.verdict == "insufficient data":
            mt.add_row(m.metric, m.variant, value, _num(m.design_effect, 2), "-", "-", "-",
                       verdict)
        elif cmp is None:
            mt.add_row(m.metric, m.variant, value, _num(m.design_effect, 2), "", "", "",
                       verdict)
        else:
            mt.add_row(m.metric, m.variant, value, _num(m.design_effect, 2),
                       f"{cmp.diff:+.{digits}f}" if math.isfinite(cmp.diff) else "-",
                       f"{_pct(cmp.relative)} [{_pct(cmp.relative_ci[0])}, "
                       f"{_pct(cmp.relative_ci[1])}]",
                       "-" if not math.isfinite(cmp.p_value) else f"{cmp.p_value:.3g}",
                       verdict)
    if rep.metrics:
        console.print(mt)
    if silent:
        console.print(f"not shown, 0 in every variant in the window: {', '.join(silent)}",
                      highlight=False)
    if rep.latency:
        lt = Table("variant", "requests", "p50 ms", "p95 ms", "p99 ms", "p99 / control",
                   title="latency")
        for lr in rep.latency:
            lt.add_row(lr.variant, f"{lr.requests:,}", _num(lr.p50_ms, 1), _num(lr.p95_ms, 1),
                       _num(lr.p99_ms, 1), _num(lr.p99_ratio_vs_control, 2))
        console.print(lt)
    if rep.interleaving:
        it = Table("candidate", "requests", "clicks", "wins", "losses", "ties",
                   "win share [95% CI]", "p", "verdict",
                   title="interleaving (team-draft; sign test on interleaved requests)")
        for r in rep.interleaving:
            p = r.preference
            share = ("-" if p["share"] is None else
                     f"{p['share']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]")
            it.add_row(r.variant, f"{r.requests:,}", f"{r.clicks:,}", f"{p['wins']:,}",
                       f"{p['losses']:,}", f"{p['ties']:,}", share, f"{p['p_value']:.3g}",
                       r.verdict)
        console.print(it)
    e = rep.events
    if "read" in e:
        console.print(f"events: {e['read']:,} read, {e['duplicates']:,} duplicates counted "
                      f"once, {e['matched']:,} matched, {e['unmatched']:,} with no impression "
                      "in the window (kept aside, not counted)", highlight=False)
    elif "calls" in e:
        console.print(f"calls: {e['calls']:,} in the window, {e['duplicates']:,} duplicates "
                      f"counted once, {e['image_only']:,} image-only (left out)",
                      highlight=False)
    console.print(f"method: {rep.method}", highlight=False)
    for n in rep.notes:
        console.print(f"note: {n}", highlight=False)
    for c in rep.caveats:
        console.print(f"caveat: {c}", highlight=False)


WindowOpt = Annotated[str | None, typer.Option(
    "--window", help="Window length ending at --end: 30m, 24h, 7d (default 24h); or --start.")]
SinceOpt = Annotated[str | None, typer.Option(
    "--since", hidden=True, help="Deprecated spelling of --window.")]


@experiment_app.command("report")
def report_cmd(
    stage: Annotated[Stage, typer.Argument(
        metavar="STAGE", help="ranker, retrieval or moderation: the stage whose variants are "
        "compared.")],
    window: WindowOpt = None,
    since: SinceOpt = None,
    start: Annotated[str | None, typer.Option(
        help="Window start, ISO 8601 (UTC without an offset); instead of --window.")] = None,
    end: Annotated[str | None, typer.Option(help="Window end, ISO 8601; default: now.")] = None,
    log: LogOpt = "impressions",
    control: Annotated[str | None, typer.Option(
        help="The control variant. Default: the first variant of the stage in "
        "--rollout-config, else 'control', else 'primary', else the variant with most "
        "users.")] = None,
    rollout_config: Annotated[str | None, typer.Option(
        help="The rollout config file that ran the experiment (funnel rollout apply): its "
        "stage's first variant, the primary, is the control.")] = None,
    min_users: Annotated[int, typer.Option(
        min=0, help="Per variant, fewer users (moderation: content ids) than this gives "
        "'insufficient data', no p-value.")] = 100,
    min_impressions: Annotated[int, typer.Option(
        min=0, help="Per variant, fewer impressions (moderation: calls) than this gives "
        "'insufficient data', no p-value.")] = 1000,
    alpha: AlphaOpt = 0.05,
    events_grace: Annotated[str, typer.Option(
        help="Outcome events up to this long after the window's end still count (late "
        "clicks on its last impressions).")] = "1h",
    out: OutOpt = None,
) -> None:
    """A/B analysis of a window: per variant, rates with intervals and the difference vs
    the control.

    ranker, retrieval: volumes, CTR and engagement rates with user-clustered 95 % intervals
    (delta method, Wilson), the difference vs the control with its p-value, and the
    guardrails (hide, report, latency). moderation: block, review and per-label flag rates
    per variant, clustered by content id, from the moderation log."""
    from monitoring.drift_window import (
        LogReadError,
        Window,
        WindowError,
        open_log,
        parse_duration,
        read_window,
    )
    from monitoring.experiments import (
        ExperimentInputError,
        analyze,
        analyze_moderation,
        join_events,
    )

    console = Console()
    length = deprecated_alias(window, since, new_flag="--window", old_flag="--since",
                              err=Console(stderr=True))
    w = _window(length=length, start=start, end=end, now=_now)
    try:
        grace = parse_duration(events_grace)
    except WindowError as e:
        raise typer.BadParameter(str(e), param_hint="--events-grace") from e
    declared = (rollout_variants(rollout_config, stage.value) if rollout_config is not None
                else None)
    try:
        fs, root = open_log(log)
    except LogReadError as e:
        raise typer.BadParameter(str(e), param_hint="--log") from e
    kind = "moderation" if stage is Stage.moderation else "feed"
    rows = read_window(fs, root, kind, w,
                       columns=MODERATION_COLUMNS if kind == "moderation" else FEED_COLUMNS)
    window_ = {"start": w.start.isoformat(), "end": w.end.isoformat()}
    if rows.frame.empty:
        what = "moderation calls" if kind == "moderation" else "feed impressions"
        console.print(f"no {what} between {window_['start']} and {window_['end']}: "
                      "nothing to analyse", highlight=False)
        _write({"status": "empty", "stage": stage.value, "window": window_}, out, console)
        return
    common: dict[str, Any] = {"control": control, "rollout_variants": declared,
                              "alpha": alpha, "min_users": min_users,
                              "min_impressions": min_impressions, "window": window_}
    try:
        if kind == "moderation":
            rep = analyze_moderation(rows.frame, **common)
        else:
            events = read_window(fs, root, "events", Window(w.start, w.end + grace),
                                 columns=EVENT_COLUMNS).frame
            for c in EVENT_COLUMNS:
                if c not in events.columns:
                    events[c] = None
            rep = analyze(join_events(rows.frame, events), stage=stage.value, **common)
    except ExperimentInputError as e:
        hint = {"control": "--control", "alpha": "--alpha", "min_users": "--min-users",
                "min_impressions": "--min-impressions",
                "rollout_config": "--rollout-config", "window": "--window"}.get(e.field, "STAGE")
        raise typer.BadParameter(str(e), param_hint=hint) from e
    print_report(rep, console)
    _write({"status": "ok", **rep.to_dict()}, out, console)


def print_plan(p: Plan, console: Console, *, relative: bool) -> None:
    """The headline is what was computed: users when a per-user figure was given, else
    impressions, labelled as such (a plan without --impressions-per-user cannot say users)."""
    users = p.users_per_variant is not None
    t = Table("", "value", title=("users and impressions" if users else "impressions")
              + " needed per variant (two-sided test, equal split)")
    t.add_row("baseline rate", f"{p.baseline_rate:.4g}")
    t.add_row("MDE", f"{p.mde_relative:.4g} relative" if relative else
              f"{p.mde_absolute:.4g} absolute")
    t.add_row("detects", f"{p.baseline_rate:.4g} -> {p.treatment_rate:.4g} "
              f"({p.mde_absolute:+.4g} absolute, {p.mde_relative:+.2%} relative)")
    t.add_row("alpha / power", f"{p.alpha:g} / {p.power:g}")
    t.add_row("impressions if independent", f"{p.impressions_per_variant_iid:,}")
    t.add_row("design effect", f"{p.design_effect:g}")
    t.add_row("[bold]impressions per variant[/]", f"[bold]{p.impressions_per_variant:,}[/]")
    if users:
        t.add_row("[bold]users per variant[/]", f"[bold]{p.users_per_variant:,}[/] (at "
                  f"{p.impressions_per_user:g} impressions per user)")
    else:
        t.add_row("users per variant", "not computed: needs --impressions-per-user")
    console.print(t)
    if not users:
        console.print("The figure above counts impressions, not users. For users, pass "
                      "--impressions-per-user: mean impressions per user over the "
                      "experiment's duration (a past report's impressions / users).",
                      highlight=False)
    console.print(f"formula: {p.formula}", highlight=False)
    console.print("Read the experiment once, at this size: see `funnel experiment report`'s "
                  "caveat on peeking. The design effect comes from a report of past traffic "
                  "(its 'design effect' column for the metric).", highlight=False)


@experiment_app.command("plan")
def plan_cmd(
    mde: Annotated[float, typer.Option(
        help="Minimum detectable effect: absolute (0.02 = two points) unless --relative.")],
    baseline_rate: Annotated[float, typer.Option(help="The control's rate, e.g. 0.05.")],
    relative: Annotated[bool, typer.Option(
        "--relative", help="--mde is relative to the baseline (0.02 = 2 %).")] = False,
    alpha: AlphaOpt = 0.05,
    power: Annotated[float, typer.Option(help="Probability of detecting the MDE.")] = 0.8,
    design_effect: Annotated[float, typer.Option(
        help="Clustered / per-impression variance (the report's 'design effect').")] = 1.0,
    impressions_per_user: Annotated[float | None, typer.Option(
        help="Mean impressions per user in the experiment's duration: gives users.")] = None,
    out: OutOpt = None,
) -> None:
    """Impressions per variant to detect --mde at --alpha with --power; users too, given
    --impressions-per-user."""
    from monitoring.experiments import ExperimentInputError, plan

    console = Console()
    try:
        p = plan(mde, baseline_rate, alpha, power, relative=relative,
                 design_effect=design_effect, impressions_per_user=impressions_per_user)
    except ExperimentInputError as e:
        raise typer.BadParameter(str(e), param_hint="--" + e.field.replace("_", "-")) from e
    print_plan(p, console, relative=relative)
    _write(p.to_dict(), out, console)
