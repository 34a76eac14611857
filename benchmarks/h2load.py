"""Drive an HTTP/2 endpoint with nghttp2's h2load (a C load generator) and parse its report.

Used where a Python client would be the bottleneck: h2load sends one pre-built request body
over `connections` HTTP/2 connections (one stream in flight each, so `connections` is the
number of concurrent callers) for `duration_s` seconds after a warm-up.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from funnel.contracts.errors import FunnelError

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


class H2LoadError(FunnelError):
    """h2load is missing, failed, or reported something this parser does not know. Exit 1."""


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise H2LoadError(f"unrecognised h2load duration {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_report(text: str) -> dict[str, Any]:
    """The numbers of an h2load report: requests/s, request counts and request latency."""
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored", text)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if not (rate and counts and lat):
        raise H2LoadError("h2load report not understood:\n" + text[-2000:])
    return {"requests_per_s": float(rate.group(1)), "done": int(counts.group(2)),
            "succeeded": int(counts.group(3)), "failed": int(counts.group(4)),
            "errored": int(counts.group(5)), "min_ms": round(_ms(lat.group(1)), 3),
            "max_ms": round(_ms(lat.group(2)), 3), "mean_ms": round(_ms(lat.group(3)), 3)}


def run_h2load(url: str, body: bytes, *, connections: int, duration_s: float,
               headers: dict[str, str], warm_up_s: float = 1.0) -> dict[str, Any]:
    """POST `body` to `url` from `connections` concurrent HTTP/2 connections."""
    exe = shutil.which("h2load")
    if exe is None:
        raise H2LoadError("h2load not found; install it (Debian/Ubuntu: apt install "
                          "nghttp2-client) or use --load-generator python")
    with tempfile.TemporaryDirectory(prefix="funnel-h2load-") as d:
        data = Path(d) / "body.bin"
        data.write_bytes(body)
        cmd = [exe, "-c", str(connections), "-m", "1", "-t", "1", "-D", f"{duration_s:g}",
               f"--warm-up-time={warm_up_s:g}", "-d", str(data)]
        for k, v in headers.items():
            cmd += ["-H", f"{k}: {v}"]
        proc = subprocess.run([*cmd, url], capture_output=True, text=True,
                              timeout=duration_s + warm_up_s + 60)
    if proc.returncode != 0:
        raise H2LoadError(f"h2load exited with {proc.returncode}: {proc.stderr[-2000:]}")
    res = parse_report(proc.stdout)
    if res["failed"] or res["errored"] or not res["succeeded"]:
        raise H2LoadError(f"h2load saw {res['failed']} failed and {res['errored']} errored "
                          f"of {res['done']} requests:\n{proc.stdout[-2000:]}")
    return res
