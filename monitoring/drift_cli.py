"""`funnel drift`: run, report, status and watch. Parses options, calls monitoring.drift,
prints; bad input exits 2 naming the option.

The monitor's modules (pandas, pyarrow, Evidently) are imported inside the commands, so
that every other `funnel` command starts without them; the defaults of the thresholds and
of the sample size are `DriftSettings`' own.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from monitoring.drift import DriftRun, DriftSettings, Reference
    from monitoring.drift_window import Window

drift_app = typer.Typer(help="Drift monitor: windows of the impression log vs the bundle's "
                        "reference (Evidently).", no_args_is_help=True)

LogOpt = Annotated[str, typer.Option(
    "--log", envvar="FUNNEL_IMPRESSIONS_URL",
    help="Impression log root: a directory or any fsspec URL (s3://...).")]
BundleOpt = Annotated[str, typer.Option(help="Bundle whose reference is compared against.")]
OutOpt = Annotated[str, typer.Option(envvar="FUNNEL_DRIFT_REPORTS_URL",
                                     help="Where window reports go (directory or URL).")]
WindowOpt = Annotated[str, typer.Option(
    help="Window length ending at --end: 30m, 1h, 1h30m, 1d.")]
EndOpt = Annotated[str | None, typer.Option(
    help="Window end, ISO 8601 (UTC without an offset); default: now.")]
MaxRowsOpt = Annotated[int | None, typer.Option(
    min=0, help="Rows sampled per kind of record (feed, moderation); 0 reads them all. "
    "Default: DriftSettings.max_rows (docs/monitoring.md).")]
NumThrOpt = Annotated[float | None, typer.Option(
    help="Normed Wasserstein threshold, numeric columns. Default: the calibrated one "
    "(docs/monitoring.md).")]
CatThrOpt = Annotated[float | None, typer.Option(
    help="PSI threshold, categorical columns. Default: the calibrated one.")]
ExcludeOpt = Annotated[str | None, typer.Option(
    help="Columns not compared, comma-separated ('' compares all). Default: the time-of-day "
    "and day-of-week encodings (a window covers part of their cycle).")]
BaselineOpt = Annotated[str | None, typer.Option(
    help="Compare with the impression log's window this long before (e.g. 1d, 7d) instead "
    "of the bundle's reference sample: served traffic against served traffic.")]
ShareOpt = Annotated[float | None, typer.Option(
    help="A group's dataset drift: at least this share of its columns drifted (default 0.5).")]
MinRowsOpt = Annotated[int | None, typer.Option(
    help="Rows a group needs in the window and in the reference to be judged; fewer is "
    "'insufficient data', no verdict. Default: DriftSettings.min_rows, 1,000.")]


def _say(console: Console) -> Callable[[str], None]:
    return lambda m: console.print(f"[bold]drift[/] {m}", highlight=False)


def _settings(*, max_rows: int | None = None, num_threshold: float | None = None,
              cat_threshold: float | None = None, drift_share: float | None = None,
              exclude: str | None = None, min_rows: int | None = None) -> DriftSettings:
    from pydantic import ValidationError

    from monitoring.drift import DriftSettings

    given: dict[str, Any] = {"num_threshold": num_threshold, "cat_threshold": cat_threshold,
                             "drift_share": drift_share, "min_rows": min_rows}
    given = {k: v for k, v in given.items() if v is not None}
    if max_rows is not None:
        given["max_rows"] = max_rows or None  # 0: the whole window
    if exclude is not None:
        given["exclude"] = tuple(c.strip() for c in exclude.split(",") if c.strip())
    try:
        return DriftSettings(**given)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0])
        raise typer.BadParameter(f"{given.get(name)!r}: {err['msg']}",
                                 param_hint="--" + name.replace("_", "-")) from None


def _duration(text: str, flag: str) -> timedelta:
    from monitoring.drift_window import WindowError, parse_duration

    try:
        return parse_duration(text)
    except WindowError as e:
        raise typer.BadParameter(str(e), param_hint=flag) from e


def _window(window: str, end: str | None, now: Callable[[], datetime]) -> Window:
    from monitoring.drift_window import Window, WindowError, parse_time

    length = _duration(window, "--window")
    try:
        t_end = parse_time(end) if end else now()
    except WindowError as e:
        raise typer.BadParameter(str(e), param_hint="--end") from e
    return Window.ending(t_end, length)


def _reference(bundle: str) -> Reference:
    from funnel.contracts.errors import BundleError
    from monitoring.drift import load_reference

    try:
        return load_reference(bundle)
    except BundleError as e:
        raise typer.BadParameter(str(e), param_hint="--bundle") from e


def _baseline(*, baseline: str | None, window: Window, log: str, reference: Reference,
              settings: DriftSettings) -> Reference:
    """The reference to compare with: the bundle's, or the log's window `baseline` before."""
    if baseline is None:
        return reference
    from monitoring.drift import reference_from_log
    from monitoring.drift_window import LogReadError, Window

    back = _duration(baseline, "--baseline")
    past = Window(window.start - back, window.end - back)
    try:
        return reference_from_log(log_url=log, window=past, like=reference,
                                  settings=settings)
    except LogReadError as e:
        raise typer.BadParameter(str(e), param_hint="--baseline") from e


def _run(*, window: Window, log: str, reference: Reference, out: str,
         settings: DriftSettings, console: Console,
         baseline: str | None = None) -> tuple[DriftRun, dict[str, str]]:
    from monitoring.drift import run_drift, write_run
    from monitoring.drift_window import LogReadError

    reference = _baseline(baseline=baseline, window=window, log=log, reference=reference,
                          settings=settings)
    try:
        run = run_drift(log_url=log, reference=reference, window=window, settings=settings,
                        say=_say(console))
    except LogReadError as e:
        raise typer.BadParameter(str(e), param_hint="--log") from e
    _say(console)("writing the report")
    return run, write_run(run, out)


def _print_run(run: DriftRun, console: Console) -> None:
    w = run.window
    head = (f"window {w.start:%Y-%m-%d %H:%M:%S} to {w.end:%Y-%m-%d %H:%M:%S} UTC, bundle "
            f"{run.bundle_version}: feed {run.rows_read['feed']:,} rows read "
            f"({run.rows_compared['feed']:,} compared), moderation "
            f"{run.rows_read['moderation']:,} calls ({run.rows_compared['moderation']:,} "
            "text-only compared)")
    console.print(head, highlight=False)
    if run.status == "empty":
        console.print("[yellow]no records in window[/]: nothing compared", highlight=False)
    else:
        if run.columns:
            table = Table("group", "column", "test", "threshold", "score", "drifted")
            for c in run.columns:
                table.add_row(c.group, c.column, c.method, f"{c.threshold:g}",
                              f"{c.score:.4f}", "[red]yes[/]" if c.drifted else "no")
            console.print(table)
        for g, r in run.groups.items():
            if r.status != "ok" or r.drifted_share is None:
                console.print(f"{g}: [yellow]{r.status}[/] ({r.rows:,} rows in the window, "
                              f"{r.reference_rows:,} in the reference; at least "
                              f"{run.settings.min_rows:,} each needed): no verdict",
                              highlight=False)
                continue
            console.print(f"{g}: {r.drifted_columns}/{r.columns} columns drifted "
                          f"(share {r.drifted_share:.2f}); dataset drift: "
                          f"{'[red]yes[/]' if r.dataset_drifted else 'no'}", highlight=False)
    said = tuple(f"{g}: {r.status}" for g, r in run.groups.items() if r.status != "ok")
    for n in run.notes:
        if not n.startswith(said):  # an insufficient group: its line above said it
            console.print(f"note: {n}", highlight=False)


def _now() -> datetime:
    return datetime.now(UTC)


@drift_app.command("run")
def run_cmd(
    window: WindowOpt = "1h",
    end: EndOpt = None,
    log: LogOpt = "impressions",
    bundle: BundleOpt = "artifacts/latest",
    out: OutOpt = "drift-reports",
    max_rows: MaxRowsOpt = None,
    num_threshold: NumThrOpt = None,
    cat_threshold: CatThrOpt = None,
    drift_share: ShareOpt = None,
    exclude: ExcludeOpt = None,
    baseline: BaselineOpt = None,
    min_rows: MinRowsOpt = None,
) -> None:
    """Compare one window with the reference; write report.html and summary.json.

    An empty window is reported ("no records in window"), writes a summary with status
    'empty', and exits 0. A group with fewer than --min-rows rows in the window or the
    reference is reported as "insufficient data", without a verdict."""
    console = Console()
    settings = _settings(max_rows=max_rows, num_threshold=num_threshold,
                         cat_threshold=cat_threshold, drift_share=drift_share,
                         exclude=exclude, min_rows=min_rows)
    w = _window(window, end, _now)
    run, paths = _run(window=w, log=log, reference=_reference(bundle), out=out,
                      settings=settings, console=console, baseline=baseline)
    _print_run(run, console)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}", highlight=False, soft_wrap=True)


@drift_app.command("report")
def report_cmd(
    window: WindowOpt = "1h",
    end: EndOpt = None,
    log: LogOpt = "impressions",
    bundle: BundleOpt = "artifacts/latest",
    out: OutOpt = "drift-reports",
    max_rows: MaxRowsOpt = None,
    baseline: BaselineOpt = None,
    min_rows: MinRowsOpt = None,
) -> None:
    """Write the window's report (as `run` does) and print the HTML report's path."""
    console = Console(stderr=True)
    settings = _settings(max_rows=max_rows, min_rows=min_rows)
    w = _window(window, end, _now)
    run, paths = _run(window=w, log=log, reference=_reference(bundle), out=out,
                      settings=settings, console=console, baseline=baseline)
    if "report" not in paths:
        why = ("no records in window" if run.status == "empty" else
               f"nothing compared ({', '.join(f'{g}: {r.status}' for g, r in run.groups.items())})")
        console.print(f"{why}; summary: {paths['summary']}", highlight=False)
        return
    Console().print(paths["report"], highlight=False, soft_wrap=True)


def short_time(text: str) -> str:
    """'2026-12-03T14:05:00+00:00' (or a stamp, 20261203T140500Z) -> '2026-12-03 14:05Z':
    a window end that fits a narrow terminal; seconds only when they are not 0."""
    from monitoring.drift_window import STAMP_FORMAT

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        try:
            t = datetime.strptime(text, STAMP_FORMAT)
        except ValueError:
            return text
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%SZ" if t.second else "%Y-%m-%d %H:%MZ")


def status_tables(summaries: list[dict[str, Any]], *, drifted_only: bool = False
                  ) -> list[Table]:
    """A table per window, newest first, titled with the window's span (so no column repeats
    the time, and five columns fit 80 terminal columns): a row per compared column, one per
    group that was not judged (insufficient data), one for an empty window."""
    out = []
    for s in summaries:
        w = s.get("window", {})
        end = short_time(w.get("end", s["stamp"]))
        span = f"{short_time(w['start'])} to {end}" if "start" in w else f"ending {end}"
        table = Table("group", "feature", "test", "score", "drifted",
                      title=f"window {span}", title_justify="left")
        if s.get("status") == "empty":
            table.add_row("-", "-", "-", "-", "no records in window")
        for c in s.get("columns", []):
            if drifted_only and not c.get("drifted"):
                continue
            table.add_row(c["group"], c["column"], c["method"], f"{c['score']:.4f}",
                          "[red]yes[/]" if c["drifted"] else "no")
        for g, r in s.get("groups", {}).items():
            if r.get("status", "ok") != "ok":
                table.add_row(g, f"{r.get('rows', 0):,} rows", "-", "-",
                              f"[yellow]{r['status']}[/]")
        out.append(table)
    return out


@drift_app.command("status")
def status_cmd(
    out: OutOpt = "drift-reports",
    last: Annotated[int, typer.Option(min=1, max=1000, help="Windows to show.")] = 5,
    drifted_only: Annotated[bool, typer.Option(help="Only drifted columns.")] = False,
) -> None:
    """The latest windows, a table each: group, feature, test, score, drifted."""
    from monitoring.drift import latest_summaries

    console = Console()
    summaries = latest_summaries(out, last=last)
    if not summaries:
        console.print(f"no drift reports under {out}; run `funnel drift run` first",
                      highlight=False)
        return
    for table in status_tables(summaries, drifted_only=drifted_only):
        console.print(table)


@drift_app.command("watch")
def watch_cmd(
    every: Annotated[str, typer.Option(help="Run interval (windows end on its multiples).")] = (
        "1h"),
    window: WindowOpt = "1h",
    port: Annotated[int, typer.Option(min=0, max=65535, help="/metrics port.")] = 9108,
    host: Annotated[str, typer.Option(help="/metrics address (0.0.0.0 in a pod).")] = (
        "127.0.0.1"),
    log: LogOpt = "impressions",
    bundle: BundleOpt = "artifacts/latest",
    out: OutOpt = "drift-reports",
    max_rows: MaxRowsOpt = None,
    num_threshold: NumThrOpt = None,
    cat_threshold: CatThrOpt = None,
    drift_share: ShareOpt = None,
    exclude: ExcludeOpt = None,
    baseline: BaselineOpt = None,
    min_rows: MinRowsOpt = None,
    settle_s: Annotated[float, typer.Option(
        min=0, help="Wait this long after a window ends (buffered records land).")] = 30.0,
) -> None:
    """Run every interval and serve Prometheus /metrics; SIGTERM or Ctrl-C stops it."""
    from prometheus_client import start_http_server

    from monitoring.drift import load_reference, reference_from_log, run_drift, write_run
    from monitoring.drift_watch import DriftMetrics
    from monitoring.drift_watch import watch as watch_loop
    from monitoring.drift_window import Window, parse_duration

    console = Console(stderr=True)
    say = _say(console)
    settings = _settings(max_rows=max_rows, num_threshold=num_threshold,
                         cat_threshold=cat_threshold, drift_share=drift_share,
                         exclude=exclude, min_rows=min_rows)
    length = _duration(window, "--window")
    interval = _duration(every, "--every")
    _reference(bundle)  # a bad --bundle exits 2 now, not at the first window
    metrics = DriftMetrics()
    try:
        server: Any = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as e:  # port taken, address not local
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {e}",
                                 param_hint="--port") from e
    say(f"serving /metrics on {host}:{port}; a {window} window every {every}")
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        say(f"{signal.Signals(signum).name}: stopping after the current window")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)

    if baseline is not None:
        _duration(baseline, "--baseline")  # a bad value exits 2 now

    def one(end: datetime) -> DriftRun:
        t0 = time.perf_counter()
        w = Window.ending(end, length)
        # read per run: `latest` moves when a new bundle is rolled out
        reference = load_reference(bundle)
        if baseline is not None:
            back = parse_duration(baseline)
            reference = reference_from_log(
                log_url=log, window=Window(w.start - back, w.end - back), like=reference,
                settings=settings)
        run = run_drift(log_url=log, reference=reference, window=w, settings=settings,
                        say=say)
        paths = write_run(run, out)
        say(f"wrote {paths.get('report', paths['summary'])} in "
            f"{time.perf_counter() - t0:.1f}s")
        return run

    try:
        watch_loop(run_window=one, every=interval, metrics=metrics, stop=stop,
                   settle_s=settle_s, say=say)
    finally:
        if isinstance(server, tuple):  # prometheus_client >= 0.17: (server, thread)
            server[0].shutdown()
    say("stopped")
