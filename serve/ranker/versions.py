"""Ranker versions on Triton: each bundle version a rollout names is a Triton model of its
own (`ranker-<version>`), loaded through Triton's model-repository API with its config and
model.py sent along (Triton runs in explicit model-control mode), so no repository directory
has to be shared with Triton; only the bundle must be readable there at the same path.

The bundle is checksum-verified here before Triton is asked to load it, and the model checks
its own file's sha256 again when Triton loads it (Triton may run on another machine). A
version no config names any more is unloaded after a grace period, so that replicas still
routing to it under the previous table finish their calls.

A version only shadows use is loaded in the idle CPU class (`cpu_class: idle`, with
`rollout.shadow_idle_class`): its model process runs on CPU time the serving path leaves.
When a later config gives that version client traffic (a shadow becoming a canary), it is
loaded again in the normal class before the table that routes to it is in force; Triton
swaps a reloaded model without a gap in availability.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from funnel.contracts.bundle import verify_bundle
from serve.bundles import BundleVersions
from serve.config import TritonSettings
from serve.errors import BundleLoadError
from serve.ranker.repository import model_config_json, model_py_source
from serve.rollout.variants import ranker_model_name

log = logging.getLogger("funnel.rollout")


class TritonModels:
    def __init__(self, url: str, settings: TritonSettings, *, primary_version: str,
                 bundles: BundleVersions, base_name: str = "ranker", grace_s: float = 30.0,
                 idle_shadows: bool = True, clock: Callable[[], float] = time.monotonic,
                 client: Any = None) -> None:
        self._url = url
        self._settings = settings
        self._primary = primary_version
        self._bundles = bundles
        self._base = base_name
        self._grace_s = grace_s
        self._clock = clock
        self._client = client
        self._idle_shadows = idle_shadows
        self.loaded: dict[str, str] = {}  # version -> CPU class it was loaded in
        self._retiring: dict[str, float] = {}

    def _c(self) -> Any:
        if self._client is None:
            import tritonclient.grpc as grpcclient

            self._client = grpcclient.InferenceServerClient(self._url)
        return self._client

    def ensure(self, versions: Iterable[str], shadow_only: Iterable[str] = ()) -> list[str]:
        """Load every version not yet loaded, those in `shadow_only` in the idle CPU class
        (one loaded in the other class is loaded again); BundleLoadError names the one that
        failed (checksums, or Triton's reason). Returns the model names."""
        from serve.ranker.triton_model import SENT_MODEL_FILE  # imports torch: only here

        idle = set(shadow_only) if self._idle_shadows else set()
        names = []
        for v in sorted(set(versions)):
            name = ranker_model_name(v, self._primary, self._base)
            names.append(name)
            self._retiring.pop(v, None)
            cpu_class = "idle" if v in idle else "normal"
            if v == self._primary or self.loaded.get(v) == cpu_class:
                continue
            b = verify_bundle(self._bundles.path(v))
            meta = b.manifest["models"]["ranker"]
            path = b.file(meta["path"])
            # the TorchScript goes with the request, into the model's directory in Triton's
            # repository (model_path "": the model finds it there): Triton needs no access to
            # this replica's bundle root (in a cluster it is another pod's), and checks the
            # bytes it got against the manifest before loading them
            cfg = model_config_json(name=name, n_dense=len(meta["dense_features"]),
                                    settings=self._settings, model_path="",
                                    model_sha256=b.manifest["files"][meta["path"]],
                                    cpu_class=cpu_class)
            again = v in self.loaded
            started = time.monotonic()
            try:
                self._c().load_model(name, config=json.dumps(cfg),
                                     files={"file:1/model.py": model_py_source(),
                                            f"file:1/{SENT_MODEL_FILE}": path.read_bytes()},
                                     client_timeout=180)
            except Exception as e:
                raise BundleLoadError(f"Triton did not load the ranker of bundle {v} as "
                                      f"{name!r}: {e}") from e
            self.loaded[v] = cpu_class
            log.info("rollout: Triton %s %s (bundle %s, %s CPU class) in %.1fs",
                     "reloaded" if again else "loaded", name, v, cpu_class,
                     time.monotonic() - started)
        return names

    def retire(self, keep: Iterable[str]) -> None:
        """Unload versions outside `keep` once they have been unused for the grace period."""
        keep = set(keep)
        now = self._clock()
        for v in list(self.loaded):
            if v in keep:
                self._retiring.pop(v, None)
                continue
            since = self._retiring.setdefault(v, now)
            if now - since < self._grace_s:
                continue
            name = ranker_model_name(v, self._primary, self._base)
            try:
                self._c().unload_model(name)
                log.info("rollout: Triton unloaded %s (no config names bundle %s)", name, v)
            except Exception as e:  # Triton down: it forgets its models anyway
                log.warning("rollout: could not unload %s: %s", name, e)
            self.loaded.pop(v, None)
            self._retiring.pop(v, None)


class InProcessRankers:
    """`ranker.backend: local`: no Triton to load ranker versions into; each feed replica
    loads a version's TorchScript itself (serve/rollout/variants.py). Same surface as
    TritonModels, with nothing to do."""

    def __init__(self) -> None:
        self.loaded: dict[str, str] = {}

    def ensure(self, versions: Iterable[str], shadow_only: Iterable[str] = ()) -> list[str]:
        return []

    def retire(self, keep: Iterable[str]) -> None:
        return None
