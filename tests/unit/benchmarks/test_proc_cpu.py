"""The benchmarks' CPU accounting: /proc parsing, the process tree, and a real child's CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.feed import cpu_summary
from benchmarks.proc_cpu import CLK_TCK, CpuMeter, CpuSnapshot, descendants, parse_stat, used


def test_parse_stat_counts_fields_after_a_command_with_spaces_and_parens() -> None:
    line = ("4242 (ray::Serve (x) 1) S 17 4242 4242 0 -1 4194560 100 0 0 0 "
            f"{3 * CLK_TCK} {2 * CLK_TCK} 0 0 20 0 9 0 1000 0 0")
    assert parse_stat(line) == (17, 5.0)


def test_descendants_follow_every_generation_and_exclude_the_root() -> None:
    parents = {2: 1, 3: 2, 4: 3, 5: 1, 9: 8}
    assert descendants(parents, 1) == {2, 3, 4, 5}
    assert descendants(parents, 3) == {4}
    assert descendants(parents, 7) == set()


def test_used_counts_new_processes_from_zero_and_reports_exits() -> None:
    before = CpuSnapshot({10: 1.0, 11: 2.0})
    after = CpuSnapshot({10: 1.5, 12: 0.25})
    u = used(before, after)
    assert (u.seconds, u.processes, u.exited) == (0.75, 2, 1)


def test_a_busy_child_is_metered_and_the_root_only_when_asked() -> None:
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt=time.process_time()\n"
                              "while time.process_time()-t<0.5: pass\n"
                              "import sys; sys.stdout.write('done'); sys.stdout.flush()\n"
                              "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        tree, own = CpuMeter(), CpuMeter(only_root=True)
        t0 = tree.snapshot()
        assert child.stdout is not None and child.stdout.read(4) == "done"
        t1, o1 = tree.snapshot(), own.snapshot()
        assert child.pid in t1.seconds and child.pid not in o1.seconds
        # it burned 0.5 s of CPU (plus its start) between the snapshots
        assert used(t0, t1).seconds >= 0.45
        assert set(o1.seconds) == {CpuMeter().root}
    finally:
        child.kill()
        child.wait()


def test_cpu_summary_takes_the_highest_load_within_budget() -> None:
    points = [{"offered_rps": 10.0, "cpu_ms_per_request": 12.0},
              {"offered_rps": 20.0, "cpu_ms_per_request": 10.0},
              {"offered_rps": 30.0, "cpu_ms_per_request": 9.0}]
    s = cpu_summary(points, 20.0, 2)
    assert s == {"cpu_ms_per_request": 10.0, "cpu_at_rps": 20.0, "cpu_limit_rps": 200.0,
                 "efficiency": 0.1}
    assert cpu_summary(points, 0.0, 2)["cpu_at_rps"] == 10.0  # none within: the first
    assert cpu_summary([{"offered_rps": 1.0}], 1.0, 2) == {}
    assert s["efficiency"] == pytest.approx(20.0 / 200.0)


def test_memory_by_process_names_a_child_and_reads_its_resident_size() -> None:
    from benchmarks.proc_cpu import memory_by_process, process_name, rss_mib

    child = subprocess.Popen([sys.executable, "-c", "import time\nx = bytearray(64 << 20)\n"
                              "print('ok', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        rows = {r["pid"]: r for r in memory_by_process(CpuMeter())}
        assert float(rows[child.pid]["rss_mib"]) >= 60  # type: ignore[arg-type]
        assert str(rows[child.pid]["name"]).startswith("python")
        assert process_name(child.pid).startswith("python")
    finally:
        child.kill()
        child.wait()
    assert rss_mib(child.pid) is None


def test_the_quick_check_warns_past_a_quarter_either_way() -> None:
    from benchmarks.feed import against_baseline

    base = {"cpu_ms_per_request": 8.0, "commit": "abc"}
    same = against_baseline({"cpu_ms_per_request": 9.9}, base)
    assert same["change"] == pytest.approx(0.2375, abs=1e-3) and "warning" not in same
    worse = against_baseline({"cpu_ms_per_request": 10.2}, base)
    assert worse["change"] == pytest.approx(0.275) and "+27%" in worse["warning"]
    assert "abc" in worse["warning"]
    better = against_baseline({"cpu_ms_per_request": 5.9}, base)
    assert "warning" in better and "-26%" in better["warning"]
