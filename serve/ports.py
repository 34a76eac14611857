"""The ports a local `funnel serve` or `funnel triton` needs, checked before anything starts.

A second `funnel serve` on the same config must not start Ray, Triton or a proxy that then
shares a port with the first one (Linux lets a second listener bind a port with SO_REUSEPORT,
which Ray's proxies set, and requests then alternate between two apps). So every port is
tried here first, and a busy one is refused naming the port, what it is for, and the process
listening on it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from serve.errors import PortInUseError
from training.procinfo import command_line, funnel_ancestor


@dataclass(frozen=True)
class Port:
    host: str
    port: int
    what: str      # "HTTP (http_options.port)"


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    owner: str = ""   # the `funnel` command above it, e.g. "pid 12 (funnel serve ...)"


def is_free(host: str, port: int) -> bool:
    """True when a listener could bind `host:port` now (a socket in TIME_WAIT does not
    count: SO_REUSEADDR, as servers set it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def listener_pids(port: int) -> list[int]:
    """Processes with a TCP socket listening on `port` (any address); empty where the OS
    does not say (another user's process without privileges)."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return []
    return sorted({c.pid for c in conns
                   if c.pid and c.status == psutil.CONN_LISTEN and c.laddr
                   and c.laddr.port == port})


def holder(port: int) -> Holder | None:
    import psutil

    for pid in listener_pids(port):
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            return Holder(pid=pid, command=command_line(p), owner=funnel_ancestor(p))
    return None


def describe_busy(p: Port, h: Holder | None) -> str:
    who = (f"by pid {h.pid} ({h.command})" if h is not None
           else "by a process this user cannot see")
    if h is not None and h.owner:
        who += f", started by {h.owner}"
    return f"port {p.port} on {p.host} ({p.what}) is in use {who}"


def check_free(ports: Iterable[Port]) -> None:
    """Raise PortInUseError (exit 2) naming every busy port and who holds it."""
    busy = [p for p in ports if not is_free(p.host, p.port)]
    if not busy:
        return
    lines = "\n  ".join(describe_busy(p, holder(p.port)) for p in busy)
    raise PortInUseError(
        f"busy port(s), nothing was started:\n  {lines}\nIs another `funnel serve` or "
        "`funnel triton` running? Stop it (Ctrl-C in "
        "its terminal), or give this one other ports in a copy of the Serve config "
        "(http_options.port, grpc_options.port, args.triton.*_port)")
