"""The rollout config: per stage, the variants that serve, the shadows that only listen, the
guardrails a canary must hold, and the steps that promote it.

A config is validated twice: its shape here (pydantic, `extra="forbid"`: an unknown stage,
a weight total other than 100, a negative sample rate, a guardrail with no metric), and its
bundle versions against the bundles that exist (`check_versions`), before anything serves it.
Every error names the field (`stages.ranker.variants[1].weight`) and what is allowed; a
refused config changes nothing.

Shape (YAML):

    salt: exp-2026-11               # assignment salt; a new salt reshuffles every user
    stages:
      ranker:
        variants:                   # the first is the primary (the control)
          - {name: control, bundle_version: 20261101-..., weight: 95}
          - {name: candidate, bundle_version: 20261123-..., weight: 5}
        shadows:
          - {name: next, bundle_version: 20261124-..., sample_rate: 0.1}
        guardrails:
          - {metric: error_rate, max: 0.02}
          - {metric: p99_latency_ratio, max: 1.5}
          - {metric: overlap_at_k, k: 10, min: 0.5}
          - {metric: rank_correlation, min: 0.3}
          - {metric: drift_score, max: 0.25}
        interleaving:               # ranker only: team-draft pages of control + candidate
          variant: candidate        # a declared variant other than the primary (weight 0 ok)
          sample_rate: 0.2          # share of the primary's requests served interleaved
        promotion:                  # the canary starts at steps[0] (its declared weight)
          steps:
            - {weight: 5, min_requests: 500, min_duration_s: 300}
            - {weight: 25, min_requests: 500, min_duration_s: 300}
            - {weight: 50, min_requests: 1000, min_duration_s: 600}
            - {weight: 100, min_requests: 0, min_duration_s: 0}
          auto_rollback: true
          error_budget: 50
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from funnel.contracts.errors import RolloutConfigError

STAGES = ("retrieval", "ranker", "moderation")
Stage = Literal["retrieval", "ranker", "moderation"]
# metric -> the bound it takes: "max" (breaks above) or "min" (breaks below)
GUARDRAIL_METRICS: dict[str, Literal["max", "min"]] = {
    "error_rate": "max",          # failed requests / requests of the variant
    "p99_latency_ratio": "max",   # variant p99 / primary p99 over the same window
    "overlap_at_k": "min",        # |top-k(variant) ∩ top-k(primary)| / k, same requests
    "rank_correlation": "min",    # rank-biased overlap (p=0.9) of the two lists
    "drift_score": "max",         # PSI of the variant's scores vs the primary's
    "cost_ratio": "max",          # variant CPU per request / primary's (docs/cost.md)
}
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultSpec(_Strict):
    """Fault injection (as in a service mesh): delay and/or fail a share of this variant's
    model calls. For testing rollouts and guardrails; refused unless the app allows it
    (`args.rollout.allow_fault_injection`)."""

    delay_ms: float = Field(0.0, ge=0, le=60_000)
    error_rate: float = Field(0.0, ge=0, le=1)
    repeat: int = Field(1, ge=1, le=10, description="run each model call this many times "
                        "(a variant that does more work: the cost_ratio guardrail)")


class VariantSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    bundle_version: str = Field(min_length=1, max_length=128)
    weight: float = Field(ge=0, le=100, description="percent of users")
    fault: FaultSpec | None = None


class ShadowSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    bundle_version: str = Field(min_length=1, max_length=128)
    sample_rate: float = Field(ge=0, le=1, description="share of primary requests mirrored")
    fault: FaultSpec | None = None


class InterleavingSpec(_Strict):
    """Team-draft interleaving (ranker only): for `sample_rate` of the requests the primary
    serves, the page mixes the primary's list and `variant`'s, each position tagged with the
    ranker that contributed it, so clicks say which ranker users prefer
    (`funnel experiment report`). The variant's ranker runs on the request path for those
    requests: their latency includes a second ranker call."""

    variant: str = Field(pattern=NAME_PATTERN)
    sample_rate: float = Field(ge=0, le=1, description="share of the primary's requests")


GuardrailMetric = Literal["error_rate", "p99_latency_ratio", "overlap_at_k",
                         "rank_correlation", "drift_score",
                         "cost_ratio"]  # the keys of GUARDRAIL_METRICS


class Guardrail(_Strict):
    metric: GuardrailMetric
    max: float | None = Field(None, ge=0)
    min: float | None = Field(None, ge=0)
    k: int = Field(10, ge=1, le=1000, description="list depth for overlap_at_k")
    min_samples: int = Field(100, ge=1, le=1_000_000,
                             description="requests (or comparisons) before it can break")

    @model_validator(mode="after")
    def _bound(self) -> Guardrail:
        kind = GUARDRAIL_METRICS[self.metric]
        other = "min" if kind == "max" else "max"
        if getattr(self, other) is not None:
            raise ValueError(f"guardrail {self.metric!r} takes '{kind}', not '{other}'")
        value = getattr(self, kind)
        if value is None:
            raise ValueError(f"guardrail {self.metric!r} needs '{kind}'")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"guardrail {self.metric!r}: {kind} must be a finite number >= 0,"
                             f" got {value!r}")
        if self.metric in ("overlap_at_k", "rank_correlation", "error_rate") and value > 1:
            raise ValueError(f"guardrail {self.metric!r}: {kind} is a share in [0, 1], got "
                             f"{value!r}")
        return self

    @property
    def bound(self) -> float:
        v = self.max if GUARDRAIL_METRICS[self.metric] == "max" else self.min
        assert v is not None  # the validator guarantees it
        return v

    def holds(self, value: float) -> bool:
        return value <= self.bound if GUARDRAIL_METRICS[self.metric] == "max" \
            else value >= self.bound


class Step(_Strict):
    weight: float = Field(gt=0, le=100, description="the canary's percent at this step")
    min_requests: int = Field(0, ge=0, description="canary requests before moving on")
    min_duration_s: float = Field(0.0, ge=0, le=30 * 86400)


class Promotion(_Strict):
    steps: list[Step] = Field(min_length=1, max_length=20)
    auto_rollback: StrictBool = True
    error_budget: int = Field(50, ge=1, le=1_000_000,
                              description="canary failures a step may cost before rollback")

    @model_validator(mode="after")
    def _increasing(self) -> Promotion:
        w = [s.weight for s in self.steps]
        if any(b <= a for a, b in itertools.pairwise(w)):
            raise ValueError(f"promotion step weights must increase, got {w}")
        return self


class StageRollout(_Strict):
    salt: str | None = Field(None, max_length=128,
                             description="default: the config's salt + the stage name")
    variants: list[VariantSpec] = Field(min_length=1, max_length=8)
    shadows: list[ShadowSpec] = Field(default_factory=list, max_length=4)
    guardrails: list[Guardrail] = Field(default_factory=list, max_length=16)
    promotion: Promotion | None = None
    interleaving: InterleavingSpec | None = None
    compare_sample_rate: float = Field(
        1.0, ge=0, le=1, description="share of canary requests compared with the primary "
        "off the critical path (agreement guardrails)")

    @model_validator(mode="after")
    def _consistent(self) -> StageRollout:
        total = sum(v.weight for v in self.variants)
        if abs(total - 100.0) > 1e-6:
            raise ValueError(f"variant weights must sum to 100, got {total:g} "
                             f"({[v.weight for v in self.variants]})")
        names = [v.name for v in self.variants] + [s.name for s in self.shadows]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant and shadow names must be unique; repeated: {dup}")
        if self.interleaving is not None:
            others = [v.name for v in self.variants[1:]]
            if self.interleaving.variant not in others:
                raise ValueError(
                    f"interleaving.variant must name a variant other than the primary "
                    f"({self.variants[0].name!r}); got {self.interleaving.variant!r}, "
                    f"declared: {others}")
        if self.promotion is not None:
            if len(self.variants) != 2:
                raise ValueError("promotion needs exactly two variants (the primary first, "
                                 f"then the canary); got {len(self.variants)}")
            start, first = self.variants[1].weight, self.promotion.steps[0].weight
            if abs(start - first) > 1e-9:
                raise ValueError(f"the canary starts at the first promotion step: its weight "
                                 f"({start:g}) must equal steps[0].weight ({first:g})")
        return self

    @property
    def primary(self) -> VariantSpec:
        return self.variants[0]

    def versions(self) -> set[str]:
        return {v.bundle_version for v in self.variants} | {
            s.bundle_version for s in self.shadows}

    def shadow_only_versions(self) -> set[str]:
        """Versions only shadows use: none of their calls answers a client."""
        return {s.bundle_version for s in self.shadows} - {
            v.bundle_version for v in self.variants}


class RolloutConfig(_Strict):
    salt: str = Field("funnel", min_length=1, max_length=128)
    stages: dict[Stage, StageRollout] = Field(default_factory=dict)
    # apply bundles whose quality gate failed (a model that does not beat its same-run
    # baseline, training/quality.py); recorded as an `allow_regression` decision per stage
    allow_regression: StrictBool = False

    @model_validator(mode="after")
    def _interleaving_ranker_only(self) -> RolloutConfig:
        for name, st in self.stages.items():
            if st.interleaving is not None and name != "ranker":
                raise ValueError(f"stages.{name}.interleaving: interleaving mixes two rankers'"
                                 " lists; only the ranker stage takes it")
        return self

    def stage(self, name: str) -> StageRollout | None:
        return self.stages.get(name)  # type: ignore[call-overload]

    def salt_of(self, stage: str) -> str:
        s = self.stage(stage)
        return (s.salt if s is not None and s.salt else f"{self.salt}:{stage}")

    def faults(self) -> Iterable[tuple[str, str]]:
        """(field path, variant name) of every variant or shadow with a fault."""
        for st, cfg in self.stages.items():
            for i, v in enumerate(cfg.variants):
                if v.fault is not None:
                    yield f"stages.{st}.variants[{i}].fault", v.name
            for i, s in enumerate(cfg.shadows):
                if s.fault is not None:
                    yield f"stages.{st}.shadows[{i}].fault", s.name


def _loc(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        if p == "[key]":  # pydantic's marker for "the key itself is invalid"
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "config"


_PATH_FIRST = re.compile(r"^(stages\.[a-z]+\.[a-z_]+): (.*)$", re.S)


def parse_rollout(raw: Any) -> RolloutConfig:
    """Shape validation; RolloutConfigError lists every bad field with the value given."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise RolloutConfigError(f"a rollout config is a mapping, got {type(raw).__name__}",
                                 fields=[{"field": "config", "message": "must be a mapping"}])
    try:
        return RolloutConfig.model_validate(raw)
    except ValidationError as e:
        fields = []
        for err in e.errors():
            field, msg = _loc(err["loc"]), err["msg"].removeprefix("Value error, ")
            m = _PATH_FIRST.match(msg)  # a config-wide check names its field first
            if field == "config" and m:
                field, msg = m.group(1), m.group(2)
            fields.append({"field": field, "message": msg, "given": err.get("input")
                           if not isinstance(err.get("input"), (dict, list)) else None})
        raise RolloutConfigError("invalid rollout config: " + "; ".join(
            f"{f['field']}: {f['message']}" for f in fields), fields=fields) from e


def check_versions(config: RolloutConfig, available: Iterable[str], *,
                   allow_faults: bool = False) -> None:
    """Every bundle version the config names exists; faults only where allowed."""
    have = sorted(set(available))
    fields: list[dict[str, object]] = []
    for st, cfg in config.stages.items():
        named: list[tuple[str, list[tuple[int, str]]]] = [
            ("variants", [(i, v.bundle_version) for i, v in enumerate(cfg.variants)]),
            ("shadows", [(i, s.bundle_version) for i, s in enumerate(cfg.shadows)])]
        for kind, group in named:
            for i, version in group:
                if version not in have:
                    fields.append({"field": f"stages.{st}.{kind}[{i}].bundle_version",
                                   "message": f"unknown bundle version {version!r}; "
                                   f"available: {have}", "given": version})
    if not allow_faults:
        for path, name in config.faults():
            fields.append({"field": path, "message": f"fault injection (variant {name!r}) is "
                           "off; set args.rollout.allow_fault_injection: true to test with "
                           "it", "given": None})
    if fields:
        raise RolloutConfigError("invalid rollout config: " + "; ".join(
            f"{f['field']}: {f['message']}" for f in fields), fields=fields)
