"""The port check `funnel serve` and `funnel triton` run before starting anything."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from serve.config import parse_app_args
from serve.errors import PortInUseError
from serve.ports import Port, check_free, is_free, listener_pids
from serve.runner import next_steps, serve_ports


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield int(s.getsockname()[1])


def test_a_listening_port_is_busy_and_its_holder_is_found(listening: int) -> None:
    assert not is_free("127.0.0.1", listening)
    assert os.getpid() in listener_pids(listening)


def test_a_closed_port_is_free() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = int(s.getsockname()[1])
    assert is_free("127.0.0.1", port)


def test_busy_port_is_refused_naming_port_field_and_process(listening: int) -> None:
    with pytest.raises(PortInUseError) as e:
        check_free([Port("127.0.0.1", listening, "HTTP, http_options.port")])
    msg = str(e.value)
    assert f"port {listening} on 127.0.0.1 (HTTP, http_options.port)" in msg
    assert f"pid {os.getpid()}" in msg
    assert e.value.exit_code == 2


def test_a_wildcard_bind_sees_a_loopback_listener(listening: int) -> None:
    # the gRPC proxy binds every interface: a loopback listener on its port blocks it
    assert not is_free("0.0.0.0", listening)


def test_serve_ports_cover_http_grpc_and_local_triton() -> None:
    args = parse_app_args({"bundle": "b", "triton": {"http_port": 1, "grpc_port": 2,
                                                     "metrics_port": 3}})
    doc = {"http_options": {"host": "127.0.0.1", "port": 8000}, "grpc_options": {"port": 9000}}
    ports = serve_ports(doc, args, triton_local=True, grpc=True)
    assert [p.port for p in ports] == [8000, 9000, 1, 2, 3]
    assert "http_options.port" in ports[0].what
    no_grpc = serve_ports(doc, args, triton_local=False, grpc=False)
    assert [p.port for p in no_grpc] == [8000]


def test_next_steps_name_the_feed_call_the_admin_token_and_the_cli() -> None:
    off = "\n".join(next_steps("http://127.0.0.1:8000", admin_env="FUNNEL_ADMIN_TOKEN",
                               admin_on=False, grpc_note="gRPC: off"))
    assert "curl -s -XPOST http://127.0.0.1:8000/v1/feed -d '{\"user_id\": 5" in off
    assert "OFF" in off and "export FUNNEL_ADMIN_TOKEN=" in off
    assert "funnel --help" in off and "activate" in off
    on = "\n".join(next_steps("http://h:1", admin_env="T", admin_on=True, grpc_note=""))
    assert "on, with $T" in on
