"""Fuzzing on the real stack, shortened (`funnel bench fuzz` runs the same with ≥ 1,000
cases): schemathesis over every route of the service's own OpenAPI document, and malformed
and arbitrary funnel.v1 messages over gRPC. No 5xx, every response as documented, no gRPC
call ending in INTERNAL or UNKNOWN.

These run after the other integration tests (conftest orders them last): the fuzzer decides
review items and applies rollout configs with the admin token, as an attacker holding it
could."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from benchmarks.fuzz import fuzz_grpc, fuzz_http
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]
CASES = int(os.environ.get("FUNNEL_FUZZ_CASES", "15"))


def test_the_openapi_document_describes_every_route(stack: Stack) -> None:
    doc = httpx.get(f"{stack.url}/openapi.json", timeout=30).json()
    feed = doc["paths"]["/v1/feed"]["post"]
    assert feed["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/FeedRequest")
    assert {"200", "4XX"} <= set(feed["responses"])
    assert doc["paths"]["/v1/review"]["get"]["security"] == [{"bearer": []}, {"basic": []}]


def test_http_fuzz_finds_no_server_error_and_no_undocumented_response(
        stack: Stack, tmp_path: Path) -> None:
    out = fuzz_http(stack.url, token=stack.admin_token, max_examples=CASES, seed=1,
                    workdir=tmp_path)
    assert out["cases"] > 0, out["output_tail"]
    assert out["server_errors"] == [], out["output_tail"]
    assert out["exit_code"] == 0, out["output_tail"]
    assert stack.admin_token not in out["output_tail"]


def test_grpc_fuzz_ends_every_call_in_ok_or_a_client_error(stack: Stack) -> None:
    out = fuzz_grpc(stack.grpc, cases=max(CASES * 4, 30), seed=1)
    assert out["bad"] == [], out
    assert out["cases"] >= 60


def test_the_admin_token_is_in_no_log(stack: Stack) -> None:
    """After every other test (and the fuzzers, which send the token with every request):
    the token appears in neither the app's output (Ray forwards every replica's stdout and
    stderr to it) nor this Ray session's log files."""
    import tempfile

    serve_log = stack.config.parent / "serve.log"
    started = serve_log.stat().st_ctime
    ray_tmp = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray"
    session_logs = [p for p in ray_tmp.glob("session_*/logs/**/*")
                    if p.is_file() and p.stat().st_mtime >= started]
    assert any("serve" in p.parts for p in session_logs), "no Serve replica log found"
    token = stack.admin_token.encode()
    leaks = [str(f) for f in [serve_log, *session_logs] if token in f.read_bytes()]
    assert leaks == []
