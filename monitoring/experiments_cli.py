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


class Stage(StrEnum):
    ranker = "ranker"
    retrieval = "retrieval"


LogOpt = Annotated[str, typer.Option(
    "--log", envvar="FUNNEL_IMPRESSIONS_URL",
    help="Impression log root: a directory or any fsspec URL (s3://...).")]
AlphaOpt = Annotated[float, typer.Option(min=0.0001, max=0.5, help="Significance level.")]
OutOpt = Annotated[str | None, typer.Option(help="Also write the result as JSON here.")]


def _now() -> datetime:
    return datetime.now(UTC)


def _window(*, since: str | None, start: str | None, end: str | None,
            now: Callable[[], datetime]) -> Window:
    from monitoring.drift_window import Window, WindowError, parse_duration, parse_time

    if since is not None and start is not None:
        raise typer.BadParameter("give --since (a length ending at --end) or --start, not both",
                                 param_hint="--since")
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
        return Window.ending(t_end, parse_duration(since or "24h"))
    except WindowError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from e


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


def print_report(rep: ExperimentReport, console: Console) -> None:
    w = rep.window
    if w:
        console.print(f"{rep.stage} experiment, {w.get('start')} to {w.get('end')}; control: "
                      f"{rep.control}; alpha {rep.alpha:g}", highlight=False)
    vt = Table("variant", "users", "requests", "impressions", title="variants")
    for v in rep.variants:
        mark = " (control)" if v.name == rep.control and v.name != "control" else ""
        vt.add_row(v.name + mark, f"{v.users:,}",
                   f"{v.requests:,}", f"{v.impressions:,}")
    if rep.variants:
        console.print(vt)
    mt = Table("metric", "variant", "value [95% CI]", "design effect", "diff vs control",
               "relative [95% CI]", "p", "verdict", title="metrics (guardrails: hide, report)")
    silent = [name for name in dict.fromkeys(m.metric for m in rep.metrics)
              if all(m.value == 0 for m in rep.metrics if m.metric == name)]
    for m in rep.metrics:
        if m.metric in silent:
            continue
        cmp = m.vs_control
        digits = 3 if m.metric.startswith("dwell") else 4
        value = f"{_num(m.value, digits)} [{_num(m.ci[0], digits)}, {_num(m.ci[1], digits)}]"
        verdict = {"better": "[green]better[/]", "worse": "[red]worse[/]",
                   "breached": "[red]breached[/]",
                   "no significant difference": "not significant"}.get(m.verdict, m.verdict)
        if cmp is None:
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
        console.print(f"no events behind {', '.join(silent)} in the window (0 in every "
                      "variant)", highlight=False)
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
    console.print(f"events: {e['read']:,} read, {e['duplicates']:,} duplicates counted once, "
                  f"{e['matched']:,} matched, {e['unmatched']:,} with no impression in the "
                  "window (kept aside, not counted)", highlight=False)
    console.print(f"method: {rep.method}", highlight=False)
    for n in rep.notes:
        console.print(f"note: {n}", highlight=False)
    for c in rep.caveats:
        console.print(f"caveat: {c}", highlight=False)


@experiment_app.command("report")
def report_cmd(
    stage: Annotated[Stage, typer.Argument(metavar="STAGE",
                                           help="ranker or retrieval: the stage whose "
                                           "variants are compared.")],
    since: Annotated[str | None, typer.Option(
        help="Window length ending at --end: 30m, 24h, 7d (default 24h).")] = None,
    start: Annotated[str | None, typer.Option(
        help="Window start, ISO 8601 (UTC without an offset); instead of --since.")] = None,
    end: Annotated[str | None, typer.Option(help="Window end, ISO 8601; default: now.")] = None,
    log: LogOpt = "impressions",
    control: Annotated[str | None, typer.Option(
        help="The control variant (default: 'primary', else 'control', else the variant "
        "with most users).")] = None,
    alpha: AlphaOpt = 0.05,
    events_grace: Annotated[str, typer.Option(
        help="Outcome events up to this long after the window's end still count (late "
        "clicks on its last impressions).")] = "1h",
    out: OutOpt = None,
) -> None:
    """A/B analysis of a window: per variant, rates with intervals and the difference vs
    the control.

    Volumes, CTR and engagement rates with user-clustered 95 % intervals (delta method), the
    difference vs the control with its p-value, and the guardrails (hide, report, latency)."""
    from monitoring.drift_window import (
        LogReadError,
        Window,
        WindowError,
        open_log,
        parse_duration,
        read_window,
    )
    from monitoring.experiments import ExperimentInputError, analyze, join_events

    console = Console()
    w = _window(since=since, start=start, end=end, now=_now)
    try:
        grace = parse_duration(events_grace)
    except WindowError as e:
        raise typer.BadParameter(str(e), param_hint="--events-grace") from e
    try:
        fs, root = open_log(log)
    except LogReadError as e:
        raise typer.BadParameter(str(e), param_hint="--log") from e
    feed = read_window(fs, root, "feed", w, columns=FEED_COLUMNS)
    window = {"start": w.start.isoformat(), "end": w.end.isoformat()}
    if feed.frame.empty:
        console.print(f"no feed impressions between {window['start']} and {window['end']}: "
                      "nothing to analyse", highlight=False)
        _write({"status": "empty", "stage": stage.value, "window": window}, out, console)
        return
    events = read_window(fs, root, "events", Window(w.start, w.end + grace),
                         columns=EVENT_COLUMNS).frame
    for c in EVENT_COLUMNS:
        if c not in events.columns:
            events[c] = None
    try:
        rep = analyze(join_events(feed.frame, events), stage=stage.value, control=control,
                      alpha=alpha, window=window)
    except ExperimentInputError as e:
        hint = {"control": "--control", "alpha": "--alpha"}.get(e.field, "STAGE")
        raise typer.BadParameter(str(e), param_hint=hint) from e
    print_report(rep, console)
    _write({"status": "ok", **rep.to_dict()}, out, console)


def print_plan(p: Plan, console: Console, *, relative: bool) -> None:
    t = Table("", "value", title="sample size per variant (two-sided test, equal split)")
    t.add_row("baseline rate", f"{p.baseline_rate:.4g}")
    t.add_row("MDE", f"{p.mde_relative:.4g} relative" if relative else
              f"{p.mde_absolute:.4g} absolute")
    t.add_row("detects", f"{p.baseline_rate:.4g} -> {p.treatment_rate:.4g} "
              f"({p.mde_absolute:+.4g} absolute, {p.mde_relative:+.2%} relative)")
    t.add_row("alpha / power", f"{p.alpha:g} / {p.power:g}")
    t.add_row("impressions if independent", f"{p.impressions_per_variant_iid:,}")
    t.add_row("design effect", f"{p.design_effect:g}")
    t.add_row("[bold]impressions per variant[/]", f"[bold]{p.impressions_per_variant:,}[/]")
    if p.users_per_variant is not None:
        t.add_row("[bold]users per variant[/]", f"[bold]{p.users_per_variant:,}[/] (at "
                  f"{p.impressions_per_user:g} impressions per user)")
    console.print(t)
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
    """Impressions (and users) per variant to detect --mde at --alpha with --power."""
    from monitoring.experiments import ExperimentInputError, plan

    console = Console()
    try:
        p = plan(mde, baseline_rate, alpha, power, relative=relative,
                 design_effect=design_effect, impressions_per_user=impressions_per_user)
    except ExperimentInputError as e:
        raise typer.BadParameter(str(e), param_hint="--" + e.field.replace("_", "-")) from e
    print_plan(p, console, relative=relative)
    _write(p.to_dict(), out, console)
