"""Fuzzing the service's own interfaces (`funnel bench fuzz`; a shortened run in
tests/integration/test_fuzz.py).

HTTP: schemathesis generates requests from the service's OpenAPI document (every route,
valid and invalid bodies, parameters and headers, with the admin token) and checks each
response: no 5xx, the status code and the body as the document says. Every exchange is kept
in a HAR report, from which the cases, the status codes and the 5xx are counted.

gRPC (funnel.v1): messages that are not protobuf at all, valid messages with bytes flipped or
cut off, and well-formed messages with arbitrary field values (huge and negative numbers,
invalid timestamps, unicode, oversized text, random image bytes). Every call must end in OK
or a client-error status (INVALID_ARGUMENT, RESOURCE_EXHAUSTED for oversized content), never
INTERNAL, UNKNOWN or a dropped connection.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

Say = Callable[[str], None]
# every response is checked for these (schemathesis' names)
HTTP_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_schema_conformance", "response_headers_conformance",
               "negative_data_rejection", "ignored_auth")
GRPC_CLIENT_ERRORS = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")


def fuzz_http(base_url: str, *, token: str, max_examples: int, seed: int, workdir: Path,
              say: Say = print, timeout_s: float = 3600) -> dict[str, Any]:
    """schemathesis against `base_url`'s /openapi.json; counts from its HAR report."""
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    har = workdir / "http.har"
    cmd = [exe, "run", f"{base_url}/openapi.json", "--url", base_url,
           "--checks", ",".join(HTTP_CHECKS), "--max-examples", str(max_examples),
           "--seed", str(seed), "--header", f"Authorization: Bearer {token}",
           "--phases", "examples,coverage,fuzzing", "--workers", "1",
           "--request-timeout", "60", "--report", "har", "--report-har-path", str(har),
           "--no-color"]
    say(f"schemathesis: up to {max_examples} cases per operation and phase")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - t0
    output = (proc.stdout + proc.stderr).replace(token, "<token>")
    statuses: Counter[int] = Counter()
    server_errors: list[dict[str, Any]] = []
    if har.exists():
        for e in json.loads(har.read_text())["log"]["entries"]:
            status = int(e["response"]["status"])
            statuses[status] += 1
            url = e["request"]["url"].removeprefix(base_url).split("?", 1)[0]
            if status >= 500:
                server_errors.append({"method": e["request"]["method"], "url": url,
                                      "status": status})
    return {"exit_code": proc.returncode, "cases": sum(statuses.values()),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": server_errors, "checks": list(HTTP_CHECKS),
            "max_examples": max_examples, "seed": seed, "seconds": round(seconds, 1),
            "operations": int(m.group(1)) if (m := re.search(r"Tested:\s+(\d+)", output))
            else None,
            "output_tail": output[-6000:]}


# ---- gRPC ---------------------------------------------------------------------------------
def _text(rng: random.Random, n: int) -> str:
    alphabet = ("abcXYZ019 ._:-/\\\"'{}\x00\n\t€漢字😀\u202e\ud7ff" + "".join(
        chr(rng.randrange(32, 0x2FFF)) for _ in range(8)))
    return "".join(rng.choice(alphabet) for _ in range(n))


def _int(rng: random.Random, bits: int) -> int:
    edges = [0, 1, -1, 2**(bits - 1) - 1, -2**(bits - 1), 50, 200, 201, 10**6]
    return rng.choice(edges) if rng.random() < 0.4 else rng.randrange(
        -2**(bits - 1), 2**(bits - 1))


def _feed_message(rng: random.Random, pb: Any) -> Any:
    if rng.random() < 0.5:  # plausible: exercises the whole request path
        return pb.GetFeedRequest(user_id=rng.randrange(0, 10_000), limit=rng.randrange(1, 201),
                                 exclude_item_ids=[rng.randrange(0, 5000) for _ in range(
                                     rng.randrange(0, 20))])
    ctx = pb.FeedContext(
        device=rng.choice(["", "ios", "android", "web", "other", _text(rng, 5)]),
        locale=rng.choice(["", "en-US", "fr", _text(rng, rng.randrange(0, 60))]),
        timestamp=rng.choice(["", "2026-12-01T10:00:00Z", "2999-01-01T00:00:00Z",
                              "not a time", _text(rng, 12), "1970-01-01T00:00:00+25:00"]))
    return pb.GetFeedRequest(
        user_id=_int(rng, 64), limit=_int(rng, 32), context=ctx,
        exclude_item_ids=[_int(rng, 64) for _ in range(rng.choice([0, 1, 5, 2000]))])


def _moderation_message(rng: random.Random, pb: Any) -> Any:
    if rng.random() < 0.5:  # plausible
        return pb.ModerateRequest(content_id=f"fuzz-{rng.randrange(10**6)}",
                                  text=_text(rng, rng.randrange(1, 400)))
    kw: dict[str, Any] = {"content_id": rng.choice(
        ["c1", "", "bad id!", "x" * 129, _text(rng, rng.randrange(0, 40))])}
    if rng.random() < 0.7:
        kw["text"] = rng.choice(["hello", "", _text(rng, rng.randrange(0, 300)),
                                 "a" * (64 * 1024 + rng.randrange(0, 3))])
    if rng.random() < 0.4:
        kw["image"] = rng.choice([b"", b"\xff\xd8\xff\xe0not a jpeg", rng.randbytes(
            rng.randrange(1, 4096)), b"GIF89a" + rng.randbytes(64)])
    if rng.random() < 0.5:
        kw["author_id"] = _int(rng, 64)
    if rng.random() < 0.5:
        kw["locale"] = _text(rng, rng.randrange(0, 50))
    return pb.ModerateRequest(**kw)


def _mangle(rng: random.Random, raw: bytes) -> bytes:
    """Not protobuf, or a valid message with bytes flipped, cut off, or grown."""
    kind = rng.randrange(4)
    if kind == 0 or not raw:
        return rng.randbytes(rng.randrange(0, 256))
    b = bytearray(raw)
    if kind == 1:
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:
        return bytes(b[:rng.randrange(len(b))])
    return bytes(b) + rng.randbytes(rng.randrange(1, 64))


def fuzz_grpc(address: str, *, cases: int, seed: int, say: Say = print,
              timeout_s: float = 60.0) -> dict[str, Any]:
    """`cases` calls to each funnel.v1 method: a third well-formed with arbitrary values, the
    rest malformed bytes. Returns status counts and every call that ended badly."""
    import grpc

    from serve.grpc_build import ensure_stubs

    ensure_stubs()
    from serve.protos.funnel.v1 import feed_pb2, moderation_pb2

    rng = random.Random(seed)
    methods = {"/funnel.v1.Feed/GetFeed": lambda: _feed_message(rng, feed_pb2),
               "/funnel.v1.Moderation/Moderate": lambda: _moderation_message(
                   rng, moderation_pb2)}
    statuses: Counter[str] = Counter()
    bad: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 16 << 20)]) as ch:
        grpc.channel_ready_future(ch).result(timeout=60)
        for method, make in methods.items():
            call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
            for i in range(cases):
                msg = make()
                raw = msg.SerializeToString()
                kind = "message" if i % 3 == 0 else "malformed"
                payload = raw if kind == "message" else _mangle(rng, raw)
                try:
                    call(payload, timeout=timeout_s)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                    if code not in GRPC_CLIENT_ERRORS:
                        bad.append({"method": method, "kind": kind, "code": code,
                                    "details": (e.details() or "")[:300],
                                    "payload_hex": payload[:64].hex()})
                statuses[f"{method.rsplit('/', 1)[-1]} {code}"] += 1
            say(f"gRPC {method}: {cases} calls")
    return {"cases": cases * len(methods), "statuses": dict(sorted(statuses.items())),
            "bad": bad[:50], "bad_count": len(bad), "seed": seed,
            "seconds": round(time.perf_counter() - t0, 1)}


def run(*, bundle: str, max_examples: int, grpc_cases: int, seed: int = 0,
        say: Say = print) -> dict[str, Any]:
    """Both fuzzers against one local stack of `bundle`."""
    import os
    import platform
    from datetime import UTC, datetime

    from benchmarks.stack import local_stack

    with local_stack(bundle, prefix="fuzz", say=say) as st:
        http = fuzz_http(st.url, token=st.token, max_examples=max_examples, seed=seed,
                         workdir=st.work, say=say)
        say(f"HTTP: {http['cases']} cases, {len(http['server_errors'])} 5xx, schemathesis "
            f"exit {http['exit_code']}")
        grpc_out = fuzz_grpc(st.grpc, cases=grpc_cases, seed=seed, say=say)
        say(f"gRPC: {grpc_out['cases']} calls, {grpc_out['bad_count']} ended in a server "
            "error")
        return {"benchmark": "fuzz", "date": datetime.now(UTC).date().isoformat(),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "bundle": st.version, "http": http, "grpc": grpc_out}
