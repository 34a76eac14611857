"""The ranker, wherever it runs: `client.py` (the `Ranker` backends: Triton over gRPC, or
in-process TorchScript; `make_ranker` picks), `server.py` (`funnel triton`: the
tritonserver process and its supervision), `repository.py` (the Triton model repository a
bundle becomes), `triton_model.py` (the Python-backend model Triton runs), `versions.py`
(the ranker versions a rollout serves: loaded into Triton, or in-process)."""
