"""How time per feed and memory grow with the catalog: a table and a plot from in-process
`funnel bench feed` results at several catalog sizes.

    funnel bench feed --profile scale-300k --configs in_process --loads 20,100 \\
        --duration-s 15 --out benchmarks/results/feed_scale_300k.json
    (the same for large and scale-3m)
    python -m benchmarks.scale benchmarks/results/feed_scale_*.json \\
        --svg benchmarks/results/feed_scale.svg

The plot is a small SVG written with the standard library (no plotting package in the
project): CPU per feed and resident memory against catalog size, log-scaled size axis.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per catalog size, smallest first: items, CPU per feed and server p50 at each
    load, the stages' medians at the lowest load, resident MiB of the serving process."""
    out = []
    for r in results:
        c = r["configs"]["in_process"]
        points = {p["offered_rps"]: p for p in c["points"]}
        out.append({
            "items": r["items"], "bundle": r["bundle"], "date": r["date"],
            "cpu_ms": {k: p.get("cpu_ms_per_request") for k, p in points.items()},
            "server_p50_ms": {k: p["server_stages_p50_ms"].get("total")
                              for k, p in points.items()},
            "stages_p50_ms": c["points"][0]["server_stages_p50_ms"],
            "rss_mib": max((m["rss_mib"] for m in c.get("memory", [])), default=None)})
    return sorted(out, key=lambda x: x["items"])


def markdown(table: list[dict[str, Any]]) -> str:
    loads = sorted({k for t in table for k in t["cpu_ms"]})
    head = ["posts", *[f"CPU ms/feed @ {k:g} req/s" for k in loads],
            *[f"server p50 ms @ {k:g}" for k in loads], "resident MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in table:
        cells = [f"{t['items']:,}", *[_fmt(t["cpu_ms"].get(k)) for k in loads],
                 *[_fmt(t["server_p50_ms"].get(k)) for k in loads], _fmt(t["rss_mib"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def svg(table: list[dict[str, Any]], *, load: float, width: int = 560,
        height: int = 300) -> str:
    """Two series against log10(posts): CPU ms per feed at `load` (left axis) and resident
    MiB (right axis)."""
    pad_l, pad_r, pad_t, pad_b = 60, 60, 30, 45
    xs = [math.log10(t["items"]) for t in table]
    cpu = [t["cpu_ms"].get(load) or 0.0 for t in table]
    mem = [t["rss_mib"] or 0.0 for t in table]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    c1, m1 = max(cpu) * 1.2 or 1.0, max(mem) * 1.2 or 1.0

    def px(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def py(v: float, top: float) -> float:
        return height - pad_b - v / top * (height - pad_t - pad_b)

    def line(vals: list[float], top: float, colour: str) -> str:
        pts = " ".join(f"{px(x):.1f},{py(v, top):.1f}" for x, v in zip(xs, vals, strict=True))
        dots = "".join(f'<circle cx="{px(x):.1f}" cy="{py(v, top):.1f}" r="3.5" '
                       f'fill="{colour}"/>' for x, v in zip(xs, vals, strict=True))
        return f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>{dots}'

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" '
             f'y2="{height - pad_b}" stroke="#444"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" '
             'stroke="#1f77b4"/>',
             f'<line x1="{width - pad_r}" y1="{pad_t}" x2="{width - pad_r}" '
             f'y2="{height - pad_b}" stroke="#d62728"/>']
    for t, x in zip(table, xs, strict=True):
        parts.append(f'<text x="{px(x):.1f}" y="{height - pad_b + 16}" text-anchor="middle">'
                     f'{t["items"] / 1e6:g}M</text>')
    for k in range(5):
        v = c1 * k / 4
        parts.append(f'<text x="{pad_l - 6}" y="{py(v, c1) + 4:.1f}" text-anchor="end" '
                     f'fill="#1f77b4">{v:.1f}</text>')
        w = m1 * k / 4
        parts.append(f'<text x="{width - pad_r + 6}" y="{py(w, m1) + 4:.1f}" '
                     f'fill="#d62728">{w:,.0f}</text>')
    parts += [line(cpu, c1, "#1f77b4"), line(mem, m1, "#d62728"),
              f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">posts in the '
              'catalog (log scale)</text>',
              f'<text x="{pad_l}" y="18" fill="#1f77b4">CPU ms per feed at {load:g} req/s'
              '</text>',
              f'<text x="{width - pad_r}" y="18" text-anchor="end" fill="#d62728">resident '
              'MiB, serving process</text>', "</svg>"]
    return "".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--svg", help="write the plot here")
    ap.add_argument("--load", type=float, default=20.0, help="the load the plot shows")
    a = ap.parse_args(argv)
    table = rows([json.loads(Path(p).read_text()) for p in a.results])
    print(markdown(table))
    if a.svg:
        Path(a.svg).write_text(svg(table, load=a.load))


if __name__ == "__main__":
    main()
