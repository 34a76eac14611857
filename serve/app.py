"""The Ray Serve application's composition root.

`FeedIngress` is the HTTP and gRPC ingress deployment: it builds the replica's services
(`serve.services.replica.build_services`) and the FastAPI app over them
(`serve.http.asgi.build_http_app`), and takes the gRPC methods from `serve.rpc`. Every route
and RPC lives in its own module; the orchestration behind them in `serve/services/`.

Two more deployments: the moderation models (batched) and the rollout controller. Merging,
filtering and re-ranking are pure logic and run inside this replica (every Serve handle hop
costs ~6 ms on a small machine); the user tower is a sub-millisecond MLP and the HNSW search a
fraction of a millisecond, so they run here too. The one model stage that earns batching,
the ranker, runs on Triton behind its dynamic batcher (or in-process: `ranker.backend:
local`); this replica awaits it asynchronously, so concurrent requests meet in its batches.

`build_app(args)` is the import path of the Serve config (`serve/configs/local.yaml`, and
the Helm chart's RayService): args are parsed once there, invalid ones refused with the field
named.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ray import serve
from ray.serve import Application

from monitoring import metrics
from serve.config import AppArgs, parse_app_args
from serve.moderation.remote import load_serving_policy
from serve.rpc.funnel_v1 import FunnelV1Rpc
from serve.rpc.oip import OipRpc


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  health_check_period_s=5)
@serve.ingress()
class FeedIngress(FunnelV1Rpc, OipRpc):
    """One replica: its services, the HTTP app over them, the gRPC methods (mixins)."""

    def __init__(self, args: dict[str, Any], moderation: Any = None,
                 rollout: Any = None, shadow_scorer: Any = None) -> None:
        from serve.rollout.runtime import replica_name
        from serve.services.replica import build_services

        self.services = build_services(parse_app_args(args), replica=replica_name(),
                                       moderation=moderation, rollout=rollout,
                                       shadow_scorer=shadow_scorer)

    def __serve_build_asgi_app__(self) -> Any:
        from serve.http.asgi import build_http_app

        return build_http_app(self.services)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.services.close()
        with contextlib.suppress(Exception):
            metrics.mark_process_dead()


def build_app(args: dict[str, Any]) -> Application:
    """Serve config entry point (`import_path: serve.app:build_app`; Ray Serve calls an
    application builder with exactly one argument)."""
    return compose_app(args)


def compose_app(args: dict[str, Any], *, ingress_options: dict[str, Any] | None = None
                ) -> Application:
    """The app. `ingress_options` (e.g. num_replicas) are FeedIngress's deployment options
    for a caller that runs the app itself (`serve.run`, the benchmarks); a Serve config sets
    them under `deployments`."""
    from funnel.contracts.bundle import read_manifest
    from serve.moderation.deployment import ModerationModels
    from serve.rollout.controller import RolloutController
    from serve.rollout.scorer import ShadowScorer

    parsed = parse_app_args(args)  # refuse a bad config before any replica starts
    check_rollout_args(parsed)
    controller = RolloutController.bind(args)  # type: ignore[attr-defined]
    scorer = (ShadowScorer.bind(args, controller)  # type: ignore[attr-defined]
              if parsed.rollout.shadow_scorer else None)
    ingress: Any = FeedIngress
    if ingress_options:
        ingress = ingress.options(**ingress_options)
    if not parsed.moderation.enabled:
        return ingress.bind(args, None, controller, scorer)
    load_serving_policy(parsed.moderation.policy, read_manifest(parsed.bundle))  # refuse now
    return ingress.bind(args, ModerationModels.bind(args),  # type: ignore[attr-defined]
                        controller, scorer)


def check_rollout_args(parsed: AppArgs) -> None:
    """The start-up rollout config is valid and names bundles that exist (else exit 2)."""
    from serve.bundles import bundle_versions
    from serve.rollout.controller import load_rollout_source, validate_rollout

    ro = parsed.rollout
    bundles = bundle_versions(parsed)
    try:
        validate_rollout(load_rollout_source(ro.config), bundles=bundles,
                         allow_faults=ro.allow_fault_injection)
    finally:
        bundles.close()
