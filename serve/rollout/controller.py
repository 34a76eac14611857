"""`RolloutController`: the one Serve replica that holds the rollout's state.

Ingress replicas report their numbers to it every `report_interval_s` and get the routing
table back (`report`); admin routes call `apply`, `promote`, `rollback` and `status`. A
config is applied in three steps, and a failure at any of them changes nothing:

1. shape (pydantic) and bundle versions (they exist under the bundle root);
2. verify and load: every version's checksums pass and it has what its stage serves (for
   moderation, a text head whose every label the policy covers); ranker versions are loaded into
   Triton, which warms them up before they take traffic;
3. swap: the state takes the config; replicas pick it up with their next report, load the
   retrieval and feature files of new versions (checksums first), and only then route to
   them, while requests in flight finish on the models they started with.

The config can also come as the deployment's `user_config` (`{"rollout": {...}}`), which
Serve hands to `reconfigure` without restarting the replica: that is how a Helm values
change reaches a running RayService.

Results cross Ray as plain dicts ({"ok": false, "status": 422, "error": ..., "fields": [...]}
for a refusal) rather than raised exceptions, so that the fields survive the trip.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from funnel.contracts.bundle import read_manifest
from funnel.contracts.errors import FunnelError, RolloutConfigError
from funnel.contracts.rollout import RolloutConfig, check_versions, parse_rollout
from monitoring import metrics
from monitoring.cost import Prices
from serve.bundles import BundleVersions, bundle_versions
from serve.config import AppArgs, parse_app_args
from serve.moderation.policy import ModerationPolicy
from serve.rollout.state import RolloutState
from training.config import read_yaml

log = logging.getLogger("funnel.rollout")
HEAL_EVERY_S = 5.0


def load_rollout_source(source: str | dict[str, Any] | None) -> Any:
    """The raw rollout config from app args: a YAML path, an inline mapping, or nothing."""
    if source is None:
        return {}
    if isinstance(source, str):
        return read_yaml(source, what="rollout config", error=RolloutConfigError)
    return source


def validate_rollout(raw: Any, *, bundles: BundleVersions, allow_faults: bool
                     ) -> RolloutConfig:
    """The config's shape, and every version it names in the bundle root or the registry."""
    cfg = parse_rollout(raw)
    named = {v.bundle_version for st in cfg.stages.values() for v in st.variants} | {
        s.bundle_version for st in cfg.stages.values() for s in st.shadows}
    have = set(bundles.available()) | {v for v in named if bundles.knows(v)}
    check_versions(cfg, have, allow_faults=allow_faults)
    return cfg


def serving_rows(routing: dict[str, Any], primary_version: str) -> list[tuple[str, str, str]]:
    """(version, stage, variant) of what a routing table serves: the primary bundle for every
    stage, each variant with traffic, each shadow (as `shadow:<name>`)."""
    rows = [(primary_version, "all", "primary")]
    for stage, st in routing.get("stages", {}).items():
        rows += [(v["bundle_version"], stage, v["name"]) for v in st["variants"]
                 if v["weight"] > 0]
        rows += [(s["bundle_version"], stage, f"shadow:{s['name']}") for s in st["shadows"]]
    return rows


def verify_versions(cfg: RolloutConfig, *, bundles: BundleVersions,
                    primary: dict[str, Any], policy: ModerationPolicy | None = None) -> None:
    """Every bundle version other than the primary passes its checksums and has what its
    stage serves (a ranker; a text head for moderation, every label of which the moderation
    `policy` has thresholds for: a head may add a label, as a canary, once the policy covers
    it); RolloutConfigError names the field of each one that does not. A corrupt bundle is
    refused here, at apply, and so is one whose quality gate failed for the model of the
    stage that names it (a ranker canary is judged by the bundle's ranker, not by its
    retrieval), unless the config says `allow_regression: true` (the serving bundle,
    `primary`, is not judged again). `policy` None: the labels are not checked (a dry run
    without the serve config)."""
    from funnel.contracts.bundle import verify_bundle
    from training.quality import failures

    fields: list[dict[str, object]] = []
    checked: dict[str, dict[str, Any] | str] = {}
    for stage, st in cfg.stages.items():
        named = [("variants", i, v.bundle_version) for i, v in enumerate(st.variants)] + [
            ("shadows", i, sh.bundle_version) for i, sh in enumerate(st.shadows)]
        for kind, i, version in named:
            if version == primary["version"]:
                continue
            if version not in checked:
                try:
                    # pulled from the registry first when the bundle root lacks it: a
                    # version whose bytes do not match is refused here, the file named
                    checked[version] = verify_bundle(bundles.path(version)).manifest
                except FunnelError as e:
                    checked[version] = str(e)
            m = checked[version]
            problem = m if isinstance(m, str) else ""
            if not isinstance(m, str) and stage == "moderation":
                problem = label_problem(version, m, policy)
            elif not isinstance(m, str) and m.get("kind", "serving") != "serving":
                problem = (f"bundle {version} is a {m['kind']} bundle: it serves the "
                           "moderation stage only")
            if (not problem and not isinstance(m, str) and not cfg.allow_regression
                    and version != primary.get("version")):
                lost = failures(m, models=(stage,))  # the model this stage swaps
                if lost:
                    problem = (f"bundle {version} failed its quality gate: {'; '.join(lost)}. "
                               "Set allow_regression: true in the config (`funnel rollout "
                               "apply --allow-regression`) to apply it anyway; the decision "
                               "is recorded")
            if problem:
                fields.append({"field": f"stages.{stage}.{kind}[{i}].bundle_version",
                               "message": problem, "given": version})
    if fields:
        raise RolloutConfigError("invalid rollout config: " + "; ".join(
            f"{f['field']}: {f['message']}" for f in fields), fields=fields)


def label_problem(version: str, manifest: dict[str, Any],
                  policy: ModerationPolicy | None) -> str:
    """Why bundle `version` cannot serve the moderation stage ("" if it can): it has no text
    head, or its head emits a label the policy has no thresholds for (that label would go
    unguarded: its score could never hold or block anything)."""
    got = list((manifest.get("models", {}).get("moderation") or {}).get("labels") or ())
    if not got:
        return f"bundle {version} has no text moderation head"
    if policy is None:
        return ""
    missing = policy.missing(got)
    if missing:
        return (f"bundle {version} emits text label(s) {missing} that the moderation policy "
                f"(version {policy.version}) has no thresholds for; add labels.{missing[0]} "
                "(review_at, block_at) to the policy (args.moderation.policy) and redeploy "
                "before the canary")
    return ""


def serving_policy(args: AppArgs, primary: dict[str, Any]) -> ModerationPolicy | None:
    """The moderation policy the replicas decide with (None: moderation is off)."""
    if not args.moderation.enabled:
        return None
    from serve.moderation.remote import load_serving_policy

    return load_serving_policy(args.moderation.policy, primary)


def _refusal(e: FunnelError) -> dict[str, Any]:
    return {"ok": False, "status": e.http_status, "error": str(e),
            "fields": getattr(e, "fields", [])}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1},
                  max_ongoing_requests=1000, health_check_period_s=10)
class RolloutController:
    def __init__(self, args: dict[str, Any]) -> None:
        from serve.ranker.versions import InProcessRankers, TritonModels

        a = parse_app_args(args)
        self.args = a
        self.bundles = bundle_versions(a)  # the bundle root, filled from the registry
        self.root = self.bundles.root
        self._recorded_revision: int | None = None
        self.primary_manifest = read_manifest(a.bundle)
        self.primary_version = str(self.primary_manifest["version"])
        self.policy = serving_policy(a, self.primary_manifest)
        prices = cost_prices(a)
        self.state = RolloutState(prices=prices)
        metrics.set_prices(prices.cpu_core_hour_usd, prices.memory_gib_hour_usd,
                           prices.gpu_hour_usd)
        # the stack's processes' CPU and memory: the total that cost adds up to
        from monitoring.process_cost import start_collector

        self.process_cost = start_collector(a.cost.process_poll_s)
        self.triton: TritonModels | InProcessRankers = InProcessRankers() \
            if a.feed.ranker.backend == "local" else TritonModels(
                a.feed.ranker.url, a.triton, primary_version=self.primary_version,
                bundles=self.bundles, base_name=a.feed.ranker.model_name,
                grace_s=a.rollout.triton_unload_grace_s,
                idle_shadows=a.rollout.shadow_idle_class)
        self._lock = asyncio.Lock()
        self._last_heal = 0.0
        raw = load_rollout_source(a.rollout.config)
        cfg = self._validate(raw)  # a bad start-up config fails the deployment, named
        self._pending_start = cfg if cfg.stages else None
        self._pending_source = "args.rollout.config"
        self._last_start_try = -1e9
        self.start_error = ""
        self.user_config_error = ""

    def _validate(self, raw: Any) -> RolloutConfig:
        return validate_rollout(raw, bundles=self.bundles,
                                allow_faults=self.args.rollout.allow_fault_injection)

    async def _apply(self, cfg: RolloutConfig, source: str) -> None:
        await asyncio.to_thread(verify_versions, cfg, bundles=self.bundles,
                                primary=self.primary_manifest, policy=self.policy)
        st = cfg.stages.get("ranker")
        if st is not None:  # before the table that routes to them is in force
            await asyncio.to_thread(self.triton.ensure, st.versions(),
                                    st.shadow_only_versions())
        self.state.apply(cfg, source=source)
        log.info("rollout: config applied (%s), revision %d", source, self.state.revision)
        await self._record_serving(f"rollout:{source}")

    async def _record_serving(self, actor: str) -> None:
        """The registry learns where versions serve whenever the routing changes (a config,
        a promotion step, a rollback), so it refuses to retire one that still serves."""
        if self.state.revision == self._recorded_revision:
            return
        self._recorded_revision = self.state.revision
        rows = serving_rows(self.state.routing(), self.primary_version)
        await asyncio.to_thread(self.bundles.record_serving, rows, actor=actor)

    async def _start(self) -> None:
        """Apply the start-up config once Triton can load its rankers (Triton starts next to
        Serve and may not be up yet); until then the primary serves every stage."""
        now = asyncio.get_running_loop().time()
        if self._pending_start is None or now - self._last_start_try < 2.0:
            return
        self._last_start_try = now
        try:
            await self._apply(self._pending_start, self._pending_source)
            if self._pending_source == "user_config":
                self.user_config_error = ""
            self._pending_start, self.start_error = None, ""
        except FunnelError as e:
            if str(e) != self.start_error:
                log.warning("rollout: the start-up config is not applied yet: %s", e)
            self.start_error = str(e)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's in-place update (`user_config: {rollout: {...}}`). A config that cannot
        serve is refused like one from the admin route: logged, shown in `status()` as
        `user_config_error`, and the running config stays. (Raising here would make Serve
        restart this replica, which would lose the rollout's state.)"""
        raw = (user_config or {}).get("rollout")
        if raw is None:
            return
        async with self._lock:
            try:
                cfg = self._validate(raw)
                await asyncio.to_thread(verify_versions, cfg, bundles=self.bundles,
                                        primary=self.primary_manifest, policy=self.policy)
            except FunnelError as e:
                self.user_config_error = str(e)
                log.error("rollout: user_config refused, the running config stays: %s", e)
                return
            try:
                await self._apply(cfg, "user_config")
            except FunnelError as e:
                # valid, but its rankers cannot be loaded yet (Triton starting, as at a fresh
                # install): pending, retried like the start-up config, never dropped
                self._pending_start, self._pending_source = cfg, "user_config"
                self._last_start_try = asyncio.get_running_loop().time()
                self.user_config_error = f"pending (retried): {e}"
                log.warning("rollout: user_config not applied yet, retrying: %s", e)
                return
            # the newest config wins over one still waiting to be applied
            self._pending_start, self.user_config_error = None, ""

    async def apply(self, raw: Any, source: str = "api") -> dict[str, Any]:
        async with self._lock:
            try:
                cfg = self._validate(raw)
                await self._apply(cfg, source)
            except FunnelError as e:
                log.warning("rollout: config refused: %s", e)
                return _refusal(e)
        return {"ok": True, "revision": self.state.revision}

    async def report(self, replica: str, rows: list[dict[str, Any]], serving: bool = True
                     ) -> dict[str, Any]:
        """A replica's numbers since its last report in; the routing table out. `serving`
        False: the ShadowScorer (it takes no share of a canary's error budget)."""
        async with self._lock:
            await self._start()
            self.state.report(replica, rows, serving)
            for d in self.state.evaluate():
                log.warning("rollout: %s %s (%s): %s", d.stage, d.action, d.variant, d.reason)
            await self._record_serving("rollout:controller")
            await self._heal()
            return {**self.state.routing(), "pending_start": self._pending_start is not None,
                    "bundle_pull_failure": self.bundles.failure()}

    async def _heal(self) -> None:
        """Reload ranker versions a restarted Triton forgot; unload retired ones."""
        now = asyncio.get_running_loop().time()
        if now - self._last_heal < HEAL_EVERY_S:
            return
        self._last_heal = now
        st = self.state.stages.get("ranker")
        keep = st.config.versions() if st is not None else set()
        shadow_only = st.config.shadow_only_versions() if st is not None else set()
        await asyncio.to_thread(self._heal_sync, keep, shadow_only)

    def _heal_sync(self, keep: set[str], shadow_only: set[str]) -> None:
        from serve.ranker.versions import TritonModels
        from serve.rollout.variants import ranker_model_name

        if not isinstance(self.triton, TritonModels):
            return  # in-process rankers: each replica holds its own, nothing to heal
        for v in list(self.triton.loaded):
            name = ranker_model_name(v, self.primary_version, self.args.feed.ranker.model_name)
            try:
                ready = bool(self.triton._c().is_model_ready(name))
            except Exception:
                continue  # Triton down: try again later
            if not ready:
                log.warning("rollout: Triton lost %s; loading it again", name)
                self.triton.loaded.pop(v, None)
        try:
            self.triton.ensure((v for v in keep if v != self.primary_version), shadow_only)
        except FunnelError as e:
            log.warning("rollout: %s", e)
        self.triton.retire(keep)

    async def routing(self) -> dict[str, Any]:
        async with self._lock:
            await self._start()
            return self.state.routing()

    async def status(self) -> dict[str, Any]:
        async with self._lock:
            await self._start()
            return {**self.state.status(), "primary_version": self.primary_version,
                    "bundle_root": str(self.root),
                    "available_versions": self.bundles.available(),
                    "registry": self.bundles.registry.store.url
                    if self.bundles.registry is not None else None,
                    "bundle_pull_failure": self.bundles.failure(),
                    "triton_models": sorted(self.triton.loaded),
                    "pending_start_config": self._pending_start is not None,
                    "start_error": self.start_error,
                    "user_config_error": self.user_config_error}

    async def promote(self, stage: str) -> dict[str, Any]:
        async with self._lock:
            try:
                d = self.state.promote(stage)
            except FunnelError as e:
                return _refusal(e)
            await self._record_serving("rollout:promote")
            return {"ok": True, "decision": d.__dict__}

    async def rollback(self, stage: str) -> dict[str, Any]:
        async with self._lock:
            try:
                d = self.state.rollback(stage)
            except FunnelError as e:
                return _refusal(e)
            await self._record_serving("rollout:rollback")
            return {"ok": True, "decision": d.__dict__}


def cost_prices(a: AppArgs) -> Prices:
    """The configured prices, or OpenCost's when `cost.opencost_url` is set and answers (if
    it does not, the configured ones, with a warning)."""
    c = a.cost
    prices = Prices(cpu_core_hour_usd=c.cpu_core_hour_usd,
                    memory_gib_hour_usd=c.memory_gib_hour_usd, gpu_hour_usd=c.gpu_hour_usd,
                    source="args.cost")
    if c.opencost_url:
        from monitoring.cost_sources import SourceUnavailable, opencost_prices

        try:
            return opencost_prices(c.opencost_url, prices)
        except (SourceUnavailable, ValueError) as e:
            log.warning("cost: OpenCost's prices unavailable, using args.cost: %s", e)
    return prices
