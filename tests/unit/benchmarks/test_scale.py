"""The scaling table and plot (benchmarks/scale.py) from result documents."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from benchmarks.scale import markdown, rows, svg


def _result(items: int, cpu: float, rss: float) -> dict[str, object]:
    return {"items": items, "bundle": f"b{items}", "date": "2026-12-05", "configs": {
        "in_process": {"points": [
            {"offered_rps": 20.0, "cpu_ms_per_request": cpu,
             "server_stages_p50_ms": {"total": cpu - 0.5, "rank": 1.0}},
            {"offered_rps": 100.0, "cpu_ms_per_request": cpu - 1,
             "server_stages_p50_ms": {"total": cpu - 1.5}}],
            "memory": [{"name": "python3 funnel", "rss_mib": rss}]}}}


def test_rows_are_sorted_by_size_and_the_table_has_each_load() -> None:
    table = rows([_result(3_000_000, 9.0, 4000.0), _result(300_000, 6.0, 700.0)])
    assert [t["items"] for t in table] == [300_000, 3_000_000]
    md = markdown(table)
    assert "CPU ms/feed @ 20 req/s" in md and "CPU ms/feed @ 100 req/s" in md
    assert "| 300,000 | 6.00 | 5.00 | 5.50 | 4.50 | 700 |" in md


def test_the_plot_is_well_formed_svg_with_a_point_per_size() -> None:
    doc = svg(rows([_result(300_000, 6.0, 700.0), _result(1_000_000, 7.0, 1600.0),
                    _result(3_000_000, 9.0, 4000.0)]), load=20.0)
    root = ET.fromstring(doc)
    circles = root.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 6  # two series, three sizes
    assert "0.3M" in doc and "3M" in doc
