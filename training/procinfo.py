"""Naming the processes on this machine for a user: which command is behind a port or a
Ray cluster (`funnel serve` on 8000, the Ray that a running server started)."""

from __future__ import annotations

import contextlib
from typing import Any


def command_line(p: Any, width: int = 120) -> str:
    """A psutil.Process's command line on one line (Ray pads actor titles with spaces)."""
    return " ".join(" ".join(p.cmdline()).split())[:width] or p.name()


def is_funnel_command(cmd: list[str]) -> bool:
    return any(x == "funnel" or x.endswith("/funnel") for x in cmd[:2]) or (
        cmd[1:3] == ["-m", "funnel"])


def funnel_ancestor(p: Any) -> str:
    """The outermost `funnel ...` command above a process (Ray's proxy actor and
    tritonserver run under one), as "pid N (command)"; empty when there is none."""
    import psutil

    found = ""
    with contextlib.suppress(psutil.Error):
        for a in p.parents():  # nearest first: the last match is the outermost command
            if is_funnel_command(a.cmdline()):
                found = f"pid {a.pid} ({command_line(a)})"
    return found
