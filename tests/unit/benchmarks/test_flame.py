"""py-spy collapsed-stack summaries (benchmarks/flame.py)."""

from __future__ import annotations

import pytest

from benchmarks.flame import frame_name, markdown, summarise

LINES = [
    "main (bench.py:3);FeedPipeline.run (serve/pipeline.py:10);rerank (serve/rerank.py:99) 6",
    "main (bench.py:3);FeedPipeline.run (serve/pipeline.py:11);rerank (serve/rerank.py:120) 2",
    "main (bench.py:3);FeedPipeline.run (serve/pipeline.py:12) 2",
    "main (bench.py:3);idle (x.py:1) 90",
]


def test_frames_merge_across_lines_and_paths_lose_machine_directories() -> None:
    assert frame_name("f (/opt/venv/lib/python3.11/site-packages/numpy/core/x.py:5)") == \
        "f (numpy/core/x.py)"
    assert frame_name("run (/home/u/funnel/serve/pipeline.py:1)") == "run (serve/pipeline.py)"
    assert frame_name("g (serve/pipeline.py:7)") == "g (serve/pipeline.py)"


def test_summarise_counts_own_and_inclusive_samples_within_a_frame() -> None:
    s = summarise(LINES, within=("FeedPipeline.run",))
    assert s.samples == 10
    assert s.own == [("rerank (serve/rerank.py)", 8), ("FeedPipeline.run (serve/pipeline.py)", 2)]
    assert dict(s.inclusive)["FeedPipeline.run (serve/pipeline.py)"] == 10
    assert "main (bench.py)" not in dict(s.inclusive)  # counted from the frame inwards
    assert summarise(LINES).samples == 100
    table = markdown(s, per_request=5.0)
    assert "| `rerank (serve/rerank.py)` | 80.0% | 4.00 |" in table


def test_a_line_without_a_count_is_refused() -> None:
    with pytest.raises(ValueError, match="trailing count"):
        summarise(["a (b.py:1);c (d.py:2)"])
