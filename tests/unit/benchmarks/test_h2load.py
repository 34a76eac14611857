"""The h2load report parser and the raw gRPC frame the Triton bench sends."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.h2load import H2LoadError, parse_report
from benchmarks.triton_batching import model_infer_frame
from funnel.contracts.model_io import RANKER_KEYS

REPORT = """
finished in 10.00s, 2165.70 req/s, 210.00KB/s
requests: 21657 total, 21657 started, 21657 done, 21650 succeeded, 7 failed, 0 errored, 0 timeout
status codes: 21650 2xx, 0 3xx, 0 4xx, 7 5xx
traffic: 2.05MB (2150000) total, 300.00KB (307200) headers (space savings 90.00%)
                     min         max         mean         sd        +/- sd
time for request:   812us     24.70ms      7.28ms      2.01ms    70.00%
"""


def test_parse_report_reads_rate_counts_and_latency_in_ms() -> None:
    r = parse_report(REPORT)
    assert r["requests_per_s"] == pytest.approx(2165.7)
    assert (r["done"], r["succeeded"], r["failed"], r["errored"]) == (21657, 21650, 7, 0)
    assert r["min_ms"] == pytest.approx(0.812)
    assert r["max_ms"] == pytest.approx(24.7)
    assert r["mean_ms"] == pytest.approx(7.28)


def test_parse_report_refuses_an_unknown_format() -> None:
    with pytest.raises(H2LoadError, match="not understood"):
        parse_report("something else entirely")


def test_model_infer_frame_is_a_framed_ranker_request() -> None:
    from tritonclient.grpc import service_pb2

    frame = model_infer_frame(rows=3, n_dense=5)
    assert frame[0] == 0  # not compressed
    length = int.from_bytes(frame[1:5], "big")
    assert length == len(frame) - 5
    req = service_pb2.ModelInferRequest.FromString(frame[5:])
    assert req.model_name == "ranker"
    assert [i.name for i in req.inputs] == list(RANKER_KEYS)
    dense = np.frombuffer(req.raw_input_contents[0], dtype=np.float32)
    assert list(req.inputs[0].shape) == [3, 5] and dense.size == 15
    assert req.inputs[1].datatype == "INT64" and list(req.inputs[1].shape) == [3, 1]
