"""`funnel cost report`: dollars per thousand requests by stage, model and variant, with the
overhead share (docs/cost.md). The counters' increase over the window comes from Prometheus
(`--prometheus URL --since 1h`) or, with no Prometheus, from two scrapes of the app's
/metrics `--for` seconds apart (`--metrics-url`). Bad input exits 2 naming the option; a
source that does not answer exits 1 saying which."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from monitoring.cost import Prices, build_report, format_report
from monitoring.cost_sources import (
    SourceUnavailable,
    inputs_from_prometheus,
    inputs_from_scrapes,
    opencost_prices,
    prometheus_query,
    scrape,
)
from monitoring.drift_window import WindowError, parse_duration

cost_app = typer.Typer(help="Cost per request: $/1k requests by stage, model and variant.",
                       no_args_is_help=True)


@cost_app.command("report")
def report_cmd(
    since: Annotated[str, typer.Option(help="The window, ending now (with --prometheus): "
                                       "e.g. 15m, 1h, 1d.")] = "1h",
    prometheus: Annotated[str | None, typer.Option(
        help="Prometheus' base URL (it scrapes the app's /metrics).")] = None,
    metrics_url: Annotated[str | None, typer.Option(
        help="Without Prometheus: the app's /metrics, scraped twice --for seconds apart.")]
    = None,
    for_s: Annotated[float, typer.Option("--for", min=1, max=86_400,
                                         help="Seconds between the two scrapes.")] = 60.0,
    cpu_price: Annotated[float | None, typer.Option(
        min=0, help="$ per core-hour (default: OpenCost's default price).")] = None,
    memory_price: Annotated[float | None, typer.Option(min=0, help="$ per GiB-hour.")] = None,
    gpu_price: Annotated[float | None, typer.Option(min=0, help="$ per GPU-hour.")] = None,
    opencost: Annotated[str | None, typer.Option(
        help="An OpenCost /metrics URL to read the node prices from.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the report as JSON.")] = None,
) -> None:
    """$/1k requests by route, stage, model and variant, and the overhead share."""
    if (prometheus is None) == (metrics_url is None):
        raise typer.BadParameter("give --prometheus or --metrics-url (one of them)",
                                 param_hint="--prometheus")
    if out is not None and not out.parent.is_dir():
        raise typer.BadParameter(f"{out.parent} is not a directory", param_hint="--out")
    try:
        window_s = parse_duration(since).total_seconds()
    except WindowError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from e
    say = Console(stderr=True)
    given = {k: v for k, v in (("cpu_core_hour_usd", cpu_price),
                               ("memory_gib_hour_usd", memory_price),
                               ("gpu_hour_usd", gpu_price)) if v is not None}
    prices = dataclasses.replace(Prices(), **given, source="given on the command line") \
        if given else Prices()
    try:
        if opencost:
            prices = opencost_prices(opencost, prices)
        if prometheus is not None:
            inputs = inputs_from_prometheus(prometheus_query(prometheus), window_s)
        else:
            assert metrics_url is not None
            first = scrape(metrics_url)
            say.print(f"scraped {metrics_url}; again in {for_s:g} s", highlight=False)
            t0 = time.monotonic()
            time.sleep(for_s)
            second = scrape(metrics_url)
            inputs = inputs_from_scrapes(first, second, time.monotonic() - t0)
    except (SourceUnavailable, ValueError) as e:
        say.print(f"[bold red]funnel cost report[/]: {e}", highlight=False)
        raise typer.Exit(1) from e
    r = build_report(inputs, prices)
    if not inputs.requests or sum(inputs.requests.values()) == 0:
        say.print("no requests in the window: nothing to attribute", highlight=False)
    print(format_report(r))
    if out is not None:
        try:
            out.write_text(json.dumps(report_json(r), indent=2) + "\n")
        except OSError as e:
            raise typer.BadParameter(f"cannot write {out}: {e.strerror}",
                                     param_hint="--out") from e


def report_json(r: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {"window_s": r.window_s, "prices": asdict(r.prices), "routes": r.routes,
            "rows": [asdict(x) for x in r.rows], "variants": [asdict(v) for v in r.variants],
            "total_core_s": r.total_core_s, "attributed_core_s": r.attributed_core_s,
            "overhead_core_s": r.overhead_core_s, "attributed_share": r.attributed_share,
            "overhead_share": r.overhead_share, "memory_gib_hours": r.memory_gib_hours,
            "idle_core_s": r.idle_core_s,
            "by_component": r.by_component}
