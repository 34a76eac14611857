"""The Python-backend ranker model: batching logic, and the config.pbtxt Triton reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from funnel.contracts.model_io import RANKER_KEYS, TASKS
from serve.config import TritonSettings
from serve.ranker.repository import model_config_pbtxt
from serve.ranker.triton_model import run_batch

KEYS = ("dense", "a", "b")


def _request(n: int, start: int) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + n, dtype=np.int64).reshape(-1, 1)
    return {"dense": np.full((n, 2), start, np.float32), "a": ids, "b": ids * 10}


def _forward(dense: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.ndim == 1 and b.ndim == 1 and dense.ndim == 2  # ids flattened, dense kept
    return np.stack([dense[:, 0], a.astype(np.float32), b.astype(np.float32)], axis=1)


def test_one_forward_pass_serves_every_request_of_the_batch_in_order() -> None:
    calls = []

    def forward(*cols: np.ndarray) -> np.ndarray:
        calls.append(len(cols[0]))
        return _forward(*cols)

    outs = run_batch(forward, KEYS, [_request(3, 0), _request(1, 100), _request(2, 200)])
    assert calls == [6]
    assert [len(o) for o in outs] == [3, 1, 2]
    assert outs[1].tolist() == [[100.0, 100.0, 1000.0]]
    assert outs[2][:, 1].tolist() == [200.0, 201.0]


def test_no_requests_no_forward_pass() -> None:
    assert run_batch(lambda *c: pytest.fail("called"), KEYS, []) == []


def test_a_request_with_ragged_inputs_is_refused_naming_the_input() -> None:
    bad = _request(3, 0)
    bad["b"] = bad["b"][:2]
    with pytest.raises(ValueError, match="'b' has 2 rows"):
        run_batch(_forward, KEYS, [bad])


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_pbtxt_is_a_valid_triton_model_config() -> None:
    cfg = _parse(model_config_pbtxt(n_dense=14, settings=TritonSettings(),
                                    device=torch.device("cpu"), model_path='/b/m "x".pt'))
    assert cfg.name == "ranker" and cfg.backend == "python" and cfg.max_batch_size == 1024
    assert [i.name for i in cfg.input] == list(RANKER_KEYS)
    assert list(cfg.input[0].dims) == [14]
    assert cfg.output[0].name == "logits" and list(cfg.output[0].dims) == [len(TASKS)]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["model_path"].string_value == '/b/m "x".pt'
    assert cfg.parameters["keys"].string_value.split(",") == list(RANKER_KEYS)


def test_config_pbtxt_follows_the_batching_and_device_settings() -> None:
    s = TritonSettings(max_queue_delay_us=500, preferred_batch_sizes=[64, 256], instances=2)
    cfg = _parse(model_config_pbtxt(n_dense=3, settings=s, device=torch.device("cuda"),
                                    model_path="/m.pt"))
    assert list(cfg.dynamic_batching.preferred_batch_size) == [64, 256]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.instance_group[0].count == 2
    off = _parse(model_config_pbtxt(n_dense=3, settings=TritonSettings(dynamic_batching=False),
                                    device=torch.device("cpu"), model_path="/m.pt"))
    assert not off.HasField("dynamic_batching")


IDLE_CHILD = """
import os, threading
from serve.ranker.triton_model import idle_cpu_class
started = threading.Event(); stop = threading.Event()
t = threading.Thread(target=lambda: (started.set(), stop.wait())); t.start(); started.wait()
ok = idle_cpu_class()
late = []
t2 = threading.Thread(target=lambda: late.append(os.sched_getscheduler(0))); t2.start(); t2.join()
print(int(ok), os.sched_getscheduler(0), os.sched_getscheduler(t.native_id), late[0])
stop.set()
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="the idle class is Linux's")
def test_a_shadow_only_model_moves_its_whole_process_into_the_idle_class() -> None:
    # in a child process: the class cannot be left without privilege
    out = subprocess.run([sys.executable, "-c", IDLE_CHILD], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    ok, *policies = map(int, out)
    assert ok == 1
    assert policies == [os.SCHED_IDLE] * 3, policies


def test_the_json_config_names_the_cpu_class_and_refuses_an_unknown_one() -> None:
    from serve.ranker.repository import model_config_json

    kw = {"name": "ranker-v2", "n_dense": 4, "settings": TritonSettings(),
          "model_path": "/b/model.pt", "model_sha256": "ab"}
    assert model_config_json(**kw)["parameters"]["cpu_class"] == {"string_value": "normal"}
    assert model_config_json(**kw, cpu_class="idle")["parameters"]["cpu_class"] == {
        "string_value": "idle"}
    with pytest.raises(ValueError, match="cpu_class: 'low'; allowed"):
        model_config_json(**kw, cpu_class="low")


def test_a_version_sent_with_its_file_loads_from_its_own_directory(tmp_path: Path) -> None:
    """model_path "": the TorchScript sent with load_model is in the version's directory of
    the repository Triton made; its bytes are checked against the manifest's sha256 first."""
    import hashlib
    import json as _json

    from serve.ranker.repository import model_config_json
    from serve.ranker.triton_model import SENT_MODEL_FILE, TritonPythonModel, sent_model_path

    (tmp_path / "1").mkdir()
    model = torch.jit.script(torch.nn.Linear(2, 1))
    sent = tmp_path / "1" / SENT_MODEL_FILE
    torch.jit.save(model, str(sent))
    digest = hashlib.sha256(sent.read_bytes()).hexdigest()
    args = {"model_repository": str(tmp_path), "model_version": "1"}
    assert sent_model_path(args) == str(sent)

    def config(sha: str) -> dict[str, Any]:
        cfg = model_config_json(name="ranker-v2", n_dense=2, settings=TritonSettings(),
                                model_path="", model_sha256=sha)
        return {**args, "model_config": _json.dumps(cfg)}

    m = TritonPythonModel()
    m.initialize(config(digest))
    assert isinstance(m.model, torch.jit.ScriptModule)
    with pytest.raises(ValueError, match=r"model\.pt: checksum mismatch"):
        TritonPythonModel().initialize(config("0" * 64))
