"""The rollout bench's p99 ratio and its interval over rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.rollout import p99_ratio_interval


def test_the_ratio_is_the_pooled_p99s_and_the_interval_holds_it() -> None:
    rng = np.random.default_rng(0)
    base = [rng.exponential(50, 300) for _ in range(6)]
    other = [b * 1.5 for b in base]  # every round exactly 1.5x: no noise between configs
    ratio, low, high = p99_ratio_interval(base, other, boots=200)
    assert ratio == pytest.approx(1.5) and low == pytest.approx(1.5) and high == pytest.approx(1.5)


def test_round_to_round_noise_widens_the_interval() -> None:
    rng = np.random.default_rng(1)
    base = [rng.exponential(50, 300) for _ in range(6)]
    # same distribution, each round's tail scaled by a random machine hiccup
    other = [rng.exponential(50, 300) * rng.choice([0.7, 1.4]) for _ in range(6)]
    ratio, low, high = p99_ratio_interval(base, other, boots=500)
    assert low < ratio < high and high - low > 0.2


def test_rounds_must_pair() -> None:
    with pytest.raises(ValueError, match="same number"):
        p99_ratio_interval([np.ones(3)], [np.ones(3), np.ones(3)])


def test_every_config_declares_the_same_shadows_and_feeds_at_most_one() -> None:
    from benchmarks.rollout import configs
    from funnel.contracts.rollout import parse_rollout

    plans = configs("v1", "v1-shadow", ["slow_shadow", "failing_shadow"])
    assert list(plans) == ["baseline", "slow_shadow", "failing_shadow"]
    declared = {name: [(s["name"], s["bundle_version"], s.get("fault"))
                       for s in cfg["stages"]["ranker"]["shadows"]]
                for name, cfg in plans.items()}
    # a switch between configs loads and unloads nothing: same versions, same faults
    assert all(d == declared["baseline"] for d in declared.values())
    assert [n for n, _, _ in declared["baseline"]] == ["slow", "failing"]
    rates = {name: {s["name"]: s["sample_rate"] for s in cfg["stages"]["ranker"]["shadows"]}
             for name, cfg in plans.items()}
    assert rates == {"baseline": {"slow": 0.0, "failing": 0.0},
                     "slow_shadow": {"slow": 1.0, "failing": 0.0},
                     "failing_shadow": {"slow": 0.0, "failing": 1.0}}
    for cfg in plans.values():  # each is a config the admin route accepts
        parse_rollout(cfg)


def test_blocks_rotate_so_each_config_runs_in_every_position() -> None:
    from benchmarks.rollout import cycle_order

    names = ["baseline", "slow_shadow", "failing_shadow"]
    orders = [cycle_order(names, c) for c in range(3)]
    assert all(sorted(o) == sorted(names) for o in orders)
    for pos in range(3):
        assert {o[pos] for o in orders} == set(names)
    assert cycle_order(names, 3) == orders[0]


def test_requests_sent_while_a_config_settles_are_not_counted() -> None:
    from benchmarks.rollout import counted

    lat = counted([50.0, 40.0, 30.0, 20.0], [0.0, 1.9, 2.0, 5.0], settle_s=2.0)
    assert lat.tolist() == [30.0, 20.0]


def test_processes_are_named_by_role_not_pid() -> None:
    from benchmarks.stack import process_role

    assert process_role(["ray::ServeReplica:funnel:FeedIngress"], "python") == \
        "ray::ServeReplica:funnel:FeedIngress"
    assert process_role(["ray::ServeReplica:funnel:FeedIngress.handle_request_with_rejection"],
                        "python") == "ray::ServeReplica:funnel:FeedIngress"
    assert process_role(["ray::ServeController.listen_for_change"], "python") == \
        "ray::ServeController"
    assert process_role(["/opt/tritonserver/bin/tritonserver", "--model-repository=/m"],
                        "tritonserver") == "tritonserver"
    assert process_role(["/v/bin/python", "-m", "funnel", "serve", "--config", "c.yaml"],
                        "python") == "funnel serve"
    assert process_role(["/v/bin/python", "/x/ray/dashboard/agent.py", "--a"], "python") == \
        "agent.py"
    assert process_role(["raylet"], "raylet") == "raylet"


def test_cpu_seconds_of_a_process_tree_add_up_per_role(tmp_path: Path) -> None:
    import shlex
    import subprocess
    import sys
    import time

    from benchmarks.stack import cpu_by_role, cpu_seconds

    script = tmp_path / "busy.py"
    script.write_text("import time\nt = time.process_time()\n"
                      "while time.process_time() - t < 0.3:\n    pass\n"
                      "open(__file__ + '.done.' + str(__import__('os').getpid()), 'w')\n"
                      "time.sleep(60)\n")
    py = shlex.quote(sys.executable)
    root = subprocess.Popen(["sh", "-c", f"{py} {script} & {py} {script} & wait"],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("busy.py.done.*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        cpu = cpu_by_role({}, cpu_seconds(root.pid))  # everything since each started
        # the shell (its command line names the script too) and both children: one role,
        # two children's 0.3 s each, counted once
        assert set(cpu) == {"busy.py"}
        assert 0.6 - 0.02 <= cpu["busy.py"] < 0.9
    finally:
        import os
        import signal

        os.killpg(root.pid, signal.SIGKILL)
        root.wait()


def test_cpu_between_snapshots_follows_the_pid_when_its_role_changes() -> None:
    from benchmarks.stack import cpu_by_role

    before = {1: ("ray::ServeController", 10.0), 2: ("raylet", 5.0), 3: ("gone", 1.0)}
    after = {1: ("ray::ServeController.listen_for_change", 12.0), 2: ("raylet", 5.5),
             4: ("tritonserver", 0.25)}
    assert cpu_by_role(before, after) == {"ray::ServeController.listen_for_change": 2.0,
                                          "raylet": 0.5, "tritonserver": 0.25}


def test_the_tail_breakdown_splits_the_slowest_requests_into_server_time_and_the_rest() -> None:
    from benchmarks.rollout import tail_breakdown

    lat = np.array([10.0] * 98 + [100.0, 120.0])
    handler = np.array([8.0] * 98 + [90.0, np.nan])  # the last response sent no timing
    t = tail_breakdown(lat, handler)
    assert t["requests"] == 2
    assert t["latency_ms"] == pytest.approx(110.0)
    assert t["handler_ms"] == pytest.approx(90.0)  # only where the server said
    assert t["outside_handler_ms"] == pytest.approx(10.0)
    no_timing = tail_breakdown(lat, np.full(100, np.nan))
    assert "handler_ms" not in no_timing and no_timing["requests"] == 2
    with pytest.raises(ValueError):
        tail_breakdown(lat, handler[:-1])
