"""The guardrail controller: the rollout's state, and the decisions that change it.

Pure (no Ray): `serve.rollout.controller.RolloutController` wraps one `RolloutState` in a
single Serve replica; tests drive it with a fake clock.

Per stage with a canary and `promotion`, the canary serves at its current step's weight.
Each evaluation (after every replica report):

1. If the canary's failures in this step reached `error_budget`, or a guardrail with enough
   samples breaks, the canary is rolled back (weight 0; `auto_rollback: false` holds it
   instead, for on-call to decide).
2. Otherwise, if the step's `min_requests` and `min_duration_s` are met and every guardrail
   has enough samples and holds, the canary moves to the next step; after the last one the
   stage is `complete`.
3. Otherwise it waits; the status says what for.

Every decision is kept with its reason (`status()`, `funnel rollout status`, the metric
`funnel_rollout_decisions_total`). Replicas learn the outcome from `routing()`, whose
`revision` changes whenever the weights, shadows or config change.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from funnel.contracts.rollout import RolloutConfig, StageRollout
from monitoring.cost import Prices, usd_per_1k
from serve.errors import RolloutConflict
from serve.rollout.stats import Window, psi

ACTIVE_REPLICA_S = 10.0


@dataclass(frozen=True)
class Decision:
    at_s: float
    stage: str
    action: str  # apply | promote | complete | hold | rollback | manual_promote | manual_rollback
    variant: str
    reason: str
    weights: dict[str, float]


@dataclass
class StageState:
    config: StageRollout
    weights: list[float]
    step: int = 0
    step_started_s: float = 0.0
    status: str = "serving"  # serving | canary | held | rolled_back | complete
    waiting: str = ""
    windows: dict[str, Window] = field(default_factory=dict)
    totals: dict[str, dict[str, float]] = field(default_factory=dict)

    def window(self, variant: str) -> Window:
        w = self.windows.get(variant)
        if w is None:
            w = self.windows[variant] = Window()
        return w


def guardrail_value(metric: str, k: int, primary: Window, other: Window,
                    min_samples: int) -> tuple[float | None, str]:
    """(value, "") when there are enough samples, else (None, what is missing)."""
    if metric == "error_rate":
        if other.requests < min_samples:
            return None, f"{other.requests}/{min_samples} requests"
        return other.errors / other.requests, ""
    if metric == "p99_latency_ratio":
        n = min(len(other.latencies_ms), len(primary.latencies_ms))
        if n < min_samples:
            return None, f"{n}/{min_samples} latencies"
        p, o = primary.p99_ms(), other.p99_ms()
        assert p is not None and o is not None
        return (o / p if p > 0 else math.inf), ""
    if metric == "cost_ratio":
        n = min(other.cost_requests, primary.cost_requests)
        if n < min_samples:
            return None, f"{n}/{min_samples} costed requests"
        p_ms, o_ms = primary.core_ms_per_request(), other.core_ms_per_request()
        assert p_ms is not None and o_ms is not None
        return (o_ms / p_ms if p_ms > 0 else math.inf), ""
    if metric in ("overlap_at_k", "rank_correlation"):
        if other.comparisons < min_samples:
            return None, f"{other.comparisons}/{min_samples} comparisons"
        total = other.overlap_sum.get(k, 0.0) if metric == "overlap_at_k" else other.rbo_sum
        return total / other.comparisons, ""
    if metric == "drift_score":
        n = min(len(other.scores), len(primary.scores))
        if n < min_samples:
            return None, f"{n}/{min_samples} scores"
        return psi(np.fromiter(primary.scores, float), np.fromiter(other.scores, float)), ""
    raise ValueError(f"unknown guardrail metric {metric!r}")


class RolloutState:
    """The applied config, each stage's weights and step, the windows, the decision log."""

    def __init__(self, *, clock: Callable[[], float] = time.time, history: int = 500,
                 prices: Prices | None = None) -> None:
        self._clock = clock
        self.prices = prices or Prices()  # a variant's $/1k requests in status()
        self.config = RolloutConfig()
        self.stages: dict[str, StageState] = {}
        self.revision = 0
        self.decisions: deque[Decision] = deque(maxlen=history)
        self.decision_counts: dict[tuple[str, str], int] = {}
        self._replicas: dict[str, float] = {}

    # ---- changes -------------------------------------------------------------------------
    def _decide(self, stage: str, action: str, variant: str, reason: str) -> Decision:
        st = self.stages[stage]
        d = Decision(self._clock(), stage, action, variant, reason,
                     {v.name: w for v, w in zip(st.config.variants, st.weights, strict=True)})
        self.decisions.append(d)
        key = (stage, action)
        self.decision_counts[key] = self.decision_counts.get(key, 0) + 1
        return d

    def apply(self, config: RolloutConfig, *, source: str = "api") -> None:
        """Replace the config (already validated); every stage starts its first step."""
        now = self._clock()
        old = self.stages
        self.config = config
        self.stages = {}
        for name, cfg in config.stages.items():
            st = StageState(config=cfg, weights=[v.weight for v in cfg.variants],
                            step_started_s=now,
                            status="canary" if cfg.promotion is not None else "serving")
            prev = old.get(name)
            st.totals = prev.totals if prev is not None else {}
            self.stages[name] = st
            self._decide(name, "apply", cfg.primary.name, f"config applied ({source})")
            if config.allow_regression:
                self._decide(name, "allow_regression", cfg.primary.name,
                             f"applied with allow_regression ({source}): a bundle that failed "
                             "its quality gate may serve")
        self.revision += 1

    def _move(self, stage: str, weights: list[float], status: str, step: int) -> None:
        st = self.stages[stage]
        st.weights, st.status, st.step = weights, status, step
        st.step_started_s = self._clock()
        st.windows = {}
        st.waiting = ""
        self.revision += 1

    def _canary(self, stage: str) -> StageState:
        st = self.stages.get(stage)
        if st is None:
            raise RolloutConflict(f"stage {stage!r} has no rollout; configured: "
                                  f"{sorted(self.stages)}")
        if len(st.config.variants) < 2:
            raise RolloutConflict(f"stage {stage!r} has no canary (one variant)")
        return st

    def rollback(self, stage: str, *, reason: str = "manual", manual: bool = True) -> Decision:
        st = self._canary(stage)
        if st.status == "rolled_back":
            raise RolloutConflict(f"stage {stage!r} is already rolled back")
        self._move(stage, [100.0] + [0.0] * (len(st.weights) - 1), "rolled_back", st.step)
        return self._decide(stage, "manual_rollback" if manual else "rollback",
                            st.config.variants[1].name, reason)

    def promote(self, stage: str, *, reason: str = "manual") -> Decision:
        """On-call's promote: the next step now, minimums and guardrails not waited for."""
        st = self._canary(stage)
        p = st.config.promotion
        if p is None:
            raise RolloutConflict(f"stage {stage!r} declares no promotion steps")
        if st.status in ("rolled_back", "complete"):
            raise RolloutConflict(f"stage {stage!r} is {st.status}; apply a config to start "
                                  "again")
        return self._next_step(stage, st, action="manual_promote", reason=reason)

    def _next_step(self, stage: str, st: StageState, *, action: str, reason: str) -> Decision:
        p = st.config.promotion
        assert p is not None
        if st.step + 1 >= len(p.steps):
            self._move(stage, st.weights, "complete", st.step)
            return self._decide(stage, "complete", st.config.variants[1].name, reason)
        w = p.steps[st.step + 1].weight
        self._move(stage, [100.0 - w, w], "canary", st.step + 1)
        return self._decide(stage, action, st.config.variants[1].name,
                            f"{reason}; canary now at {w:g}%")

    # ---- live numbers --------------------------------------------------------------------
    def report(self, replica: str, rows: list[dict[str, Any]], serving: bool = True) -> None:
        """Merge a replica's rows. `serving` False: the ShadowScorer, which answers no client
        and so takes no share of a canary's error budget."""
        if serving:
            self._replicas[replica] = self._clock()
        for r in rows:
            st = self.stages.get(str(r.get("stage")))
            if st is None:
                continue
            name = str(r.get("variant"))
            st.window(name).merge(r)
            t = st.totals.setdefault(name, {})
            for key in ("requests", "errors", "comparisons", "compare_errors", "dropped",
                        "cost_requests"):
                t[key] = t.get(key, 0) + int(r.get(key, 0))
            t["cost_core_s"] = t.get("cost_core_s", 0.0) + float(r.get("cost_core_s", 0.0))

    def active_replicas(self) -> int:
        now = self._clock()
        return max(1, sum(1 for t in self._replicas.values() if now - t <= ACTIVE_REPLICA_S))

    def guardrails(self, stage: str, variant: str) -> list[dict[str, Any]]:
        st = self.stages[stage]
        primary = st.window(st.config.primary.name)
        other = st.window(variant)
        out = []
        for g in st.config.guardrails:
            value, missing = guardrail_value(g.metric, g.k, primary, other, g.min_samples)
            out.append({"metric": g.metric, "k": g.k if g.metric == "overlap_at_k" else None,
                        "bound": ("max" if g.max is not None else "min", g.bound),
                        "value": value, "waiting_for": missing,
                        "holds": None if value is None else g.holds(value)})
        return out

    def evaluate(self) -> list[Decision]:
        """Judge every canary stage once; the decisions taken (often none)."""
        out = []
        for name, st in self.stages.items():
            if st.status != "canary" or st.config.promotion is None:
                continue
            p = st.config.promotion
            canary = st.config.variants[1].name
            w = st.window(canary)
            breaches = []
            if w.errors >= max(p.error_budget, 1):
                breaches.append(f"error budget spent: {w.errors} failures >= budget "
                                f"{p.error_budget}")
            checks = self.guardrails(name, canary)
            for g in checks:
                if g["holds"] is False:
                    kind, bound = g["bound"]
                    label = f"{g['metric']}@{g['k']}" if g["k"] else g["metric"]
                    breaches.append(f"{label} {g['value']:.4g} breaks {kind} {bound:g}")
            if breaches:
                reason = "; ".join(breaches)
                if p.auto_rollback:
                    out.append(self.rollback(name, reason=reason, manual=False))
                else:
                    st.status = "held"
                    self.revision += 1
                    out.append(self._decide(name, "hold", canary, reason))
                continue
            step = p.steps[st.step]
            elapsed = self._clock() - st.step_started_s
            waiting = [f"{g['metric']}: {g['waiting_for']}" for g in checks
                       if g["value"] is None]
            if w.requests < step.min_requests:
                waiting.append(f"{w.requests}/{step.min_requests} canary requests")
            if elapsed < step.min_duration_s:
                waiting.append(f"{elapsed:.0f}/{step.min_duration_s:.0f} s at this step")
            if waiting:
                st.waiting = "; ".join(waiting)
                continue
            out.append(self._next_step(name, st, action="promote", reason=(
                f"step {st.step} held for {elapsed:.0f} s and {w.requests} requests, every "
                "guardrail within bounds")))
        return out

    # ---- views ---------------------------------------------------------------------------
    def routing(self) -> dict[str, Any]:
        """What replicas serve by: per stage the variants with their current weights, the
        shadows, and the share of the canary's error budget each replica may spend."""
        n = self.active_replicas()
        stages = {}
        for name, st in self.stages.items():
            p = st.config.promotion
            budget_share = None
            if p is not None and st.status in ("canary", "held"):
                spent = st.window(st.config.variants[1].name).errors
                budget_share = max(0, p.error_budget - spent) // n
            ks = sorted({g.k for g in st.config.guardrails if g.metric == "overlap_at_k"}
                        | {10})
            stages[name] = {
                "salt": self.config.salt_of(name),
                "variants": [{"name": v.name, "bundle_version": v.bundle_version,
                              "weight": w, "fault": v.fault.model_dump() if v.fault else None}
                             for v, w in zip(st.config.variants, st.weights, strict=True)],
                "shadows": [{"name": s.name, "bundle_version": s.bundle_version,
                             "sample_rate": s.sample_rate,
                             "fault": s.fault.model_dump() if s.fault else None}
                            for s in st.config.shadows],
                "compare_sample_rate": st.config.compare_sample_rate,
                "overlap_ks": ks,
                "canary_budget": budget_share,
                "interleaving": self._interleaving(st),
            }
        return {"revision": self.revision, "stages": stages}

    def _interleaving(self, st: StageState) -> dict[str, Any] | None:
        """The interleaving replicas serve, if any: none once the stage is rolled back (the
        candidate broke a guardrail, so none of its items are served)."""
        il = st.config.interleaving
        if il is None or st.status == "rolled_back":
            return None
        return {"variant": il.variant, "bundle_version": self._version(st, il.variant),
                "sample_rate": il.sample_rate}

    def status(self) -> dict[str, Any]:
        now = self._clock()
        stages = {}
        for name, st in self.stages.items():
            names = [v.name for v in st.config.variants] + [s.name for s in st.config.shadows]
            stages[name] = {
                "status": st.status, "step": st.step,
                "steps": [s.weight for s in st.config.promotion.steps]
                if st.config.promotion else [],
                "step_age_s": round(now - st.step_started_s, 1), "waiting_for": st.waiting,
                "weights": {v.name: w for v, w in
                            zip(st.config.variants, st.weights, strict=True)},
                "shadows": [s.name for s in st.config.shadows],
                "interleaving": self._interleaving(st),
                "variants": {n: {"bundle_version": self._version(st, n),
                                 "window": st.window(n).summary(),
                                 "usd_per_1k": self._usd_per_1k(st.totals.get(n, {})),
                                 "totals": st.totals.get(n, {}),
                                 "guardrails": (self.guardrails(name, n)
                                                if n != st.config.primary.name else [])}
                             for n in names},
            }
        return {"revision": self.revision, "config": self.config.model_dump(mode="json"),
                "stages": stages, "replicas": self.active_replicas(),
                "decisions": [asdict(d) for d in list(self.decisions)[-50:]],
                "decision_counts": [{"stage": s, "action": a, "count": c}
                                    for (s, a), c in sorted(self.decision_counts.items())]}

    def _usd_per_1k(self, totals: dict[str, float]) -> float | None:
        """The CPU dollars of a thousand of the variant's requests since this config was
        applied (docs/cost.md); the step's window has its CPU per request too
        (`core_ms_per_request`), which the cost_ratio guardrail compares."""
        n = totals.get("cost_requests", 0)
        return usd_per_1k(totals.get("cost_core_s", 0.0) / n, self.prices) if n else None

    @staticmethod
    def _version(st: StageState, name: str) -> str:
        for v in st.config.variants:
            if v.name == name:
                return v.bundle_version
        for sh in st.config.shadows:
            if sh.name == name:
                return sh.bundle_version
        return ""
