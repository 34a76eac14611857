"""Training never waits silently: what a stalled `funnel train` is waiting for, and why.

Ray Train starts each trial's workers in a placement group. When the workers cannot start
(CPUs held by something else, a machine too busy to start a Python process in time), Ray
itself only logs `WorkerGroupStartupTimeoutError` once a minute, in files. `StallWatch`
looks at the cluster every few seconds and, once nothing has progressed for `after_s`,
prints one line naming what is pending, what is free, and what else on the machine holds
CPUs (another Ray, e.g. a running `funnel serve`).

`stall_message` is the pure part (unit-tested); `StallWatch` is the thread that feeds it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClusterView:
    """What the watch read from Ray and the OS at one moment."""

    cpus_total: float
    cpus_free: float
    groups_pending: int = 0          # placement groups not yet created
    groups_reserved_cpus: float = 0  # CPUs reserved by created placement groups
    actors_pending: int = 0          # actors (Train workers) not yet alive
    other_rays: list[str] = field(default_factory=list)  # "pid 12 (funnel serve ...)"
    load_1m: float = 0.0
    cores: int = 1


def stall_message(view: ClusterView, idle_s: float) -> str:
    """One line for on-call and for a user at a terminal: waiting how long, on what."""
    parts = [f"no progress for {idle_s:.0f}s"]
    if view.groups_pending:
        parts.append(f"{view.groups_pending} trial(s) waiting for CPUs "
                     f"({view.cpus_free:g} of {view.cpus_total:g} free in training's Ray)")
    if view.actors_pending:
        parts.append(f"{view.actors_pending} Ray Train worker(s) still starting "
                     f"({view.groups_reserved_cpus:g} CPUs reserved for them)")
    if not view.groups_pending and not view.actors_pending:
        parts.append("trials are running (a slow epoch, or a busy machine)")
    if view.load_1m > view.cores:
        parts.append(f"the machine is busy: load {view.load_1m:.1f} on {view.cores} cores")
    if view.other_rays:
        parts.append("another Ray shares this machine's CPUs: " + "; ".join(view.other_rays)
                     + " (its replicas keep their CPUs; training gets what is left)")
    parts.append("Ctrl-C stops training")
    return "waiting: " + "; ".join(parts)


def other_ray_clusters(own_session_dir: str | None) -> list[str]:
    """raylets on this machine that are not our Ray's, named by the `funnel` (or other)
    command that started them."""
    import psutil

    from training.procinfo import funnel_ancestor

    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.info["name"] != "raylet":
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if own_session_dir and own_session_dir in cmd:
                continue
            owner = funnel_ancestor(p)
            out.append(owner or f"raylet pid {p.pid}")
    return out


def read_view(own_session_dir: str | None) -> ClusterView:
    """Ray's placement groups, actors and resources, plus the OS's load (glue)."""
    import ray
    from ray.util import placement_group_table

    pgs = placement_group_table().values()
    pending = sum(1 for pg in pgs if pg.get("state") == "PENDING")
    reserved = sum(b.get("CPU", 0.0) for pg in pgs if pg.get("state") == "CREATED"
                   for b in (pg.get("bundles") or {}).values())
    actors_pending = 0
    with contextlib.suppress(Exception):
        from ray.util.state import list_actors

        actors_pending = sum(1 for a in list_actors(limit=1000, raise_on_missing_output=False)
                             if a.state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"))
    total = ray.cluster_resources().get("CPU", 0.0)
    free = ray.available_resources().get("CPU", 0.0)
    return ClusterView(cpus_total=round(total, 2), cpus_free=round(free, 2),
                       groups_pending=pending, groups_reserved_cpus=round(reserved, 2),
                       actors_pending=actors_pending,
                       other_rays=other_ray_clusters(own_session_dir),
                       load_1m=os.getloadavg()[0], cores=os.cpu_count() or 1)


# with every trial running, wait this many times longer before speaking (a slow epoch)
QUIET_WHEN_RUNNING = 6


class StallWatch:
    """A daemon thread: `progress()` on every sign of life; after `after_s` without one it
    prints `stall_message` through `say`, then again every `every_s`."""

    def __init__(self, say: Callable[[str], None], *, after_s: float = 20.0,
                 every_s: float = 30.0,
                 view: Callable[[], ClusterView] | None = None) -> None:
        self._say, self._after, self._every = say, after_s, every_s
        self._view = view
        self._last = time.monotonic()
        self._told = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def progress(self) -> None:
        self._last = time.monotonic()
        self._told = 0.0

    def start(self) -> StallWatch:
        if self._view is None:
            import ray

            session = None
            with contextlib.suppress(Exception):  # private: only to tell our raylet apart
                node: Any = ray._private.worker._global_node
                session = node.get_session_dir_path()
            self._view = lambda: read_view(session)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            idle = time.monotonic() - self._last
            now = time.monotonic()
            if idle < self._after or (self._told and now - self._told < self._every):
                continue
            try:
                assert self._view is not None
                view = self._view()
                if not (view.groups_pending or view.actors_pending) and (
                        idle < self._after * QUIET_WHEN_RUNNING):
                    continue  # trials running, no result yet: a long epoch is no stall
                msg = stall_message(view, idle)
            except Exception as e:  # never let the watch break training
                msg = f"waiting: no progress for {idle:.0f}s (cluster state unreadable: {e})"
            self._told = now
            self._say(msg)
