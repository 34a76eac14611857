"""CPU time of a process tree, read from /proc (Linux), for the benchmarks' CPU accounting.

`CpuMeter(root).snapshot()` gives each live process's user+system CPU seconds, and which
processes it covers: the root's descendants (Ray's GCS, raylet and workers, the Serve proxy or
HAProxy, Triton: everything a benchmark started) and, when asked, the root itself (the
in-process floor, where the pipeline runs in the benchmark's own process). `used(before,
after)` is the CPU spent between two snapshots: a process that started in between counts
from zero; one that exited in between loses its last interval, and is counted in `exited`,
so a reader knows the figure is a lower bound then.

Parsing is pure (`parse_stat`) and unit-tested; reading /proc is a thin loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds) from a /proc/PID/stat line. The command name
    (field 2) is parenthesised and may hold spaces and parentheses, so fields are counted
    from the last ')'."""
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15
    ppid, utime, stime = int(rest[1]), int(rest[11]), int(rest[12])
    return ppid, (utime + stime) / CLK_TCK


def _read_all(proc: Path) -> dict[int, tuple[int, float]]:
    out: dict[int, tuple[int, float]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            out[int(d.name)] = parse_stat((d / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return out


def descendants(parents: dict[int, int], root: int) -> set[int]:
    """Every pid whose chain of parents reaches `root` (root excluded)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


@dataclass(frozen=True)
class CpuSnapshot:
    seconds: dict[int, float]  # pid -> user + system CPU seconds so far


@dataclass(frozen=True)
class CpuUsed:
    seconds: float  # CPU seconds used by the covered processes between two snapshots
    processes: int  # covered processes seen in the later snapshot
    exited: int  # covered processes of the earlier snapshot gone from the later one


class CpuMeter:
    """Meters `root`'s descendants, `root` itself too with `include_root`, or only `root`
    with `only_root` (a load generator's own cost)."""

    def __init__(self, root: int | None = None, *, include_root: bool = False,
                 only_root: bool = False, proc: Path = Path("/proc")) -> None:
        self.root = os.getpid() if root is None else root
        self.include_root = include_root or only_root
        self.only_root = only_root
        self.proc = proc

    def snapshot(self) -> CpuSnapshot:
        stats = _read_all(self.proc)
        pids = (set() if self.only_root
                else descendants({p: s[0] for p, s in stats.items()}, self.root))
        if self.include_root:
            pids.add(self.root)
        return CpuSnapshot({p: stats[p][1] for p in pids if p in stats})


def used(before: CpuSnapshot, after: CpuSnapshot) -> CpuUsed:
    total = sum(t - before.seconds.get(p, 0.0) for p, t in after.seconds.items())
    gone = sum(1 for p in before.seconds if p not in after.seconds)
    return CpuUsed(round(total, 3), len(after.seconds), gone)


def rss_mib(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Resident memory of `pid` in MiB (VmRSS), None if it is gone."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def process_name(pid: int, proc: Path = Path("/proc")) -> str:
    """A short name for a stack process: Ray's title for its workers
    (`ray::ServeReplica:funnel:FeedIngress`), else the program's file name."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace") if argv else ""
    if first.startswith("ray::"):
        return first.split()[0]
    prog = first.rsplit("/", 1)[-1]
    if prog.startswith("python") and len(argv) > 1:
        for a in argv[1:]:
            arg = a.decode(errors="replace")
            if arg and not arg.startswith("-"):
                return f"{prog} {arg.rsplit('/', 1)[-1].splitlines()[0][:60]}"
    return prog or "?"


def memory_by_process(meter: CpuMeter) -> list[dict[str, object]]:
    """Each covered process's name and resident MiB, largest first."""
    rows = []
    for pid in meter.snapshot().seconds:
        mib = rss_mib(pid, meter.proc)
        if mib is not None:
            rows.append({"pid": pid, "name": process_name(pid, meter.proc), "rss_mib": mib})
    return sorted(rows, key=lambda r: -float(r["rss_mib"]))  # type: ignore[arg-type]
