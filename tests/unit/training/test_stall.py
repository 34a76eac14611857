"""What a stalled training says, and that it says it within seconds."""

from __future__ import annotations

import threading

from training.stall import ClusterView, StallWatch, stall_message


def test_message_names_pending_trials_starting_workers_and_the_other_ray() -> None:
    view = ClusterView(cpus_total=2, cpus_free=0.08, groups_pending=1,
                       groups_reserved_cpus=1.9, actors_pending=2,
                       other_rays=["pid 7 (funnel serve)"], load_1m=4.2, cores=2)
    msg = stall_message(view, 63)
    assert msg.startswith("waiting: no progress for 63s")
    assert "1 trial(s) waiting for CPUs (0.08 of 2 free" in msg
    assert "2 Ray Train worker(s) still starting (1.9 CPUs reserved" in msg
    assert "load 4.2 on 2 cores" in msg
    assert "pid 7 (funnel serve)" in msg
    assert "Ctrl-C stops training" in msg


def test_nothing_pending_says_trials_are_running() -> None:
    msg = stall_message(ClusterView(cpus_total=2, cpus_free=0, load_1m=0.5, cores=2), 30)
    assert "trials are running" in msg
    assert "the machine is busy" not in msg and "another Ray" not in msg


def test_watch_speaks_after_the_quiet_period_and_not_while_progressing() -> None:
    said: list[str] = []
    got = threading.Event()

    def say(m: str) -> None:
        said.append(m)
        got.set()

    view = ClusterView(cpus_total=2, cpus_free=0, groups_pending=2)
    w = StallWatch(say, after_s=0.1, every_s=60, view=lambda: view).start()
    try:
        assert got.wait(5), "no stall message within 5 s"
    finally:
        w.stop()
    assert len(said) == 1 and "2 trial(s) waiting for CPUs" in said[0]


def test_a_broken_view_never_breaks_training() -> None:
    said: list[str] = []
    got = threading.Event()

    def boom() -> ClusterView:
        raise RuntimeError("gcs away")

    w = StallWatch(lambda m: (said.append(m), got.set()), after_s=0.1, view=boom).start()
    try:
        assert got.wait(5)
    finally:
        w.stop()
    assert "cluster state unreadable: gcs away" in said[0]


def test_running_trials_without_results_are_not_a_stall_until_much_later() -> None:
    said: list[str] = []
    view = ClusterView(cpus_total=2, cpus_free=0)  # nothing pending: trials are running
    w = StallWatch(said.append, after_s=1.0, view=lambda: view).start()
    try:
        threading.Event().wait(3.5)
    finally:
        w.stop()
    assert said == []
