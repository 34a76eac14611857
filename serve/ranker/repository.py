"""The Triton model repository a bundle's ranker becomes: config.pbtxt (at start) or the
JSON config (a version loaded at run time), and the Python-backend model file
(`serve/ranker/triton_model.py`) as model.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from funnel.contracts.bundle import VerifiedBundle
from funnel.contracts.model_io import RANKER_KEYS, TASKS
from serve.config import TritonSettings

if TYPE_CHECKING:
    import torch

MODEL_NAME = "ranker"
MODEL_FILE = Path(__file__).with_name("triton_model.py")


def _pbtxt_str(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def model_config_pbtxt(*, n_dense: int, settings: TritonSettings, device: torch.device,
                       model_path: str) -> str:
    """config.pbtxt of the `ranker` model for Triton's Python backend."""
    ids = "\n".join(f'  {{ name: "{k}", data_type: TYPE_INT64, dims: [ 1 ] }},'
                     for k in RANKER_KEYS[1:])
    batching = ""
    if settings.dynamic_batching:
        preferred = ", ".join(str(b) for b in settings.preferred_batch_sizes)
        batching = ("dynamic_batching {\n"
                    + (f"  preferred_batch_size: [ {preferred} ]\n" if preferred else "")
                    + f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}\n}}\n")
    kind = "KIND_GPU" if device.type == "cuda" else "KIND_CPU"
    warm_inputs = " ".join(
        [f'inputs {{ key: "dense" value: {{ data_type: TYPE_FP32 dims: [ {n_dense} ] '
         "zero_data: true } }"]
        + [f'inputs {{ key: "{k}" value: {{ data_type: TYPE_INT64 dims: [ 1 ] '
           "zero_data: true } }" for k in RANKER_KEYS[1:]])
    warmup = ("model_warmup [\n" + ",\n".join(
        f'  {{ name: "warmup_{n}" batch_size: {n} count: 3 {warm_inputs} }}'
        for n in (1, min(256, settings.max_batch_size))) + "\n]\n")
    params = {"model_path": model_path, "keys": ",".join(RANKER_KEYS),
              "device": device.type, "intra_op_threads": str(settings.intra_op_threads),
              "tasks": ",".join(TASKS)}
    return (f'name: "{MODEL_NAME}"\nbackend: "python"\n'
            f"max_batch_size: {settings.max_batch_size}\n"
            f'input [\n  {{ name: "dense", data_type: TYPE_FP32, dims: [ {n_dense} ] }},\n'
            f"{ids.rstrip(',')}\n]\n"
            f'output [\n  {{ name: "logits", data_type: TYPE_FP32, dims: [ {len(TASKS)} ] }}\n]\n'
            f"{batching}"
            f"instance_group [ {{ kind: {kind}, count: {settings.instances} }} ]\n"
            f"{warmup}"
            + "".join(f"parameters {{ key: {_pbtxt_str(k)} value: {{ string_value: "
                      f"{_pbtxt_str(v)} }} }}\n" for k, v in params.items()))


def model_config_json(*, name: str, n_dense: int, settings: TritonSettings,
                      model_path: str, model_sha256: str, cpu_class: str = "normal"
                      ) -> dict[str, Any]:
    """The `ranker` model config as Triton's JSON form, for loading a bundle version at run
    time (`load_model(name, config=...)`, with model.py sent as a file). Same shape as
    `model_config_pbtxt`; the device is resolved by the model (`auto`: CUDA when present).
    `cpu_class` "idle": the model's process runs in Linux's idle scheduling class (a version
    only shadows call)."""
    if cpu_class not in ("normal", "idle"):
        raise ValueError(f"cpu_class: {cpu_class!r}; allowed: 'normal', 'idle'")
    cfg: dict[str, Any] = {
        "name": name, "backend": "python", "max_batch_size": settings.max_batch_size,
        "input": [{"name": "dense", "data_type": "TYPE_FP32", "dims": [n_dense]},
                  *({"name": k, "data_type": "TYPE_INT64", "dims": [1]}
                    for k in RANKER_KEYS[1:])],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [len(TASKS)]}],
        "instance_group": [{"kind": "KIND_GPU" if settings.device == "cuda" else "KIND_CPU",
                            "count": settings.instances}],
        "parameters": {k: {"string_value": v} for k, v in {
            "model_path": model_path, "model_sha256": model_sha256,
            "keys": ",".join(RANKER_KEYS), "device": settings.device,
            "intra_op_threads": str(settings.intra_op_threads),
            "tasks": ",".join(TASKS), "cpu_class": cpu_class}.items()},
    }
    # Warm-up before the model takes traffic: TorchScript's profiling executor optimises
    # during the first calls, which took over 150 ms (the ranker's timeout) here, so a canary
    # loaded cold failed its first requests.
    cfg["model_warmup"] = [{
        "name": f"warmup_{n}", "batch_size": n, "count": 3,
        "inputs": {"dense": {"data_type": "TYPE_FP32", "dims": [n_dense], "zero_data": True},
                   **{k: {"data_type": "TYPE_INT64", "dims": [1], "zero_data": True}
                      for k in RANKER_KEYS[1:]}}}
        for n in (1, min(256, settings.max_batch_size))]
    if settings.dynamic_batching:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": settings.max_queue_delay_us,
                                   **({"preferred_batch_size": settings.preferred_batch_sizes}
                                      if settings.preferred_batch_sizes else {})}
    return cfg


def model_py_source() -> bytes:
    """The Python-backend model file (serve/ranker/triton_model.py), as the repository
    holds it."""
    return MODEL_FILE.read_bytes()


def write_model_repository(bundle: VerifiedBundle, settings: TritonSettings,
                           device: torch.device, root: Path) -> Path:
    """A Triton model repository under `root` serving the bundle's ranker; returns its path.
    The TorchScript file is referenced in place (the bundle was checksum-verified)."""
    meta = bundle.manifest["models"]["ranker"]
    repo = root / "repository"
    version_dir = repo / MODEL_NAME / "1"
    version_dir.mkdir(parents=True)
    shutil.copyfile(MODEL_FILE, version_dir / "model.py")
    (repo / MODEL_NAME / "config.pbtxt").write_text(model_config_pbtxt(
        n_dense=len(meta["dense_features"]), settings=settings, device=device,
        model_path=str(bundle.file(meta["path"]).resolve())))
    return repo
