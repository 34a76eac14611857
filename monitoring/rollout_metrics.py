"""Prometheus metrics of the rollout, cluster-wide: built from the rollout controller's
status (which merges every ingress replica's reports), so any replica's `/metrics` shows the
same totals and a scrape through the load balancer does not see one replica's share only.

Families (labels are bounded: stages are three, variants and metrics come from the config):

- funnel_rollout_requests_total / _errors_total {stage, variant}: served requests (shadows:
  mirrored ones) and those whose stage failed (a degraded response for a served variant).
- funnel_rollout_shadow_dropped_total {stage, variant}: comparison jobs dropped, queue full.
- funnel_rollout_comparisons_total {stage, variant}: lists compared with the primary's.
- funnel_rollout_weight_percent {stage, variant}: the current weight.
- funnel_rollout_step {stage}, funnel_rollout_status {stage, status} (1 for the current one).
- funnel_rollout_agreement {stage, variant, measure}: the current step's mean overlap@k
  (`overlap_at_<k>`), rank correlation (`rbo`), score delta and latency delta (ms).
- funnel_rollout_guardrail_value / _breached {stage, variant, metric}.
- funnel_rollout_decisions_total {stage, action}: apply, promote, complete, hold, rollback,
  manual_promote, manual_rollback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

STATUSES = ("serving", "canary", "held", "rolled_back", "complete")
ACTIONS = ("apply", "promote", "complete", "hold", "rollback", "manual_promote",
           "manual_rollback")


class _Snapshot:
    def __init__(self, status: dict[str, Any]) -> None:
        self._s = status

    def collect(self) -> Iterator[Metric]:
        s = self._s
        sv = ["stage", "variant"]
        req = CounterMetricFamily("funnel_rollout_requests", "Requests served (shadows: "
                                  "mirrored) per stage variant", labels=sv)
        err = CounterMetricFamily("funnel_rollout_errors", "Requests whose stage failed per "
                                  "stage variant", labels=sv)
        drop = CounterMetricFamily("funnel_rollout_shadow_dropped", "Shadow/compare jobs "
                                   "dropped because the queue was full", labels=sv)
        cmp_ = CounterMetricFamily("funnel_rollout_comparisons", "Ranked lists compared with "
                                   "the primary's", labels=sv)
        weight = GaugeMetricFamily("funnel_rollout_weight_percent", "Current weight",
                                   labels=sv)
        step = GaugeMetricFamily("funnel_rollout_step", "Current promotion step (0-based)",
                                 labels=["stage"])
        status = GaugeMetricFamily("funnel_rollout_status", "1 for the stage's current status",
                                   labels=["stage", "status"])
        agree = GaugeMetricFamily("funnel_rollout_agreement", "Mean agreement with the primary"
                                  " over the current step", labels=[*sv, "measure"])
        gval = GaugeMetricFamily("funnel_rollout_guardrail_value", "Guardrail metric value "
                                 "over the current step", labels=[*sv, "metric"])
        gbr = GaugeMetricFamily("funnel_rollout_guardrail_breached", "1 when the guardrail "
                                "breaks", labels=[*sv, "metric"])
        for stage, st in s.get("stages", {}).items():
            step.add_metric([stage], float(st["step"]))
            for name in STATUSES:
                status.add_metric([stage, name], 1.0 if st["status"] == name else 0.0)
            for variant, w in st["weights"].items():
                weight.add_metric([stage, variant], float(w))
            for variant, v in st["variants"].items():
                t = v["totals"]
                req.add_metric([stage, variant], float(t.get("requests", 0)))
                err.add_metric([stage, variant], float(t.get("errors", 0)))
                drop.add_metric([stage, variant], float(t.get("dropped", 0)))
                cmp_.add_metric([stage, variant], float(t.get("comparisons", 0)))
                win = v["window"]
                for k, x in (win.get("overlap_at_k") or {}).items():
                    if x is not None:
                        agree.add_metric([stage, variant, f"overlap_at_{k}"], float(x))
                for key, label in (("rank_correlation", "rbo"), ("score_delta", "score_delta"),
                                   ("latency_delta_ms", "latency_delta_ms")):
                    if win.get(key) is not None:
                        agree.add_metric([stage, variant, label], float(win[key]))
                for g in v["guardrails"]:
                    metric = g["metric"] + (f"_{g['k']}" if g.get("k") else "")
                    if g["value"] is not None:
                        gval.add_metric([stage, variant, metric], float(g["value"]))
                        gbr.add_metric([stage, variant, metric], 0.0 if g["holds"] else 1.0)
        dec = CounterMetricFamily("funnel_rollout_decisions", "Rollout decisions",
                                  labels=["stage", "action"])
        counts = {(d["stage"], d["action"]): float(d["count"])
                  for d in s.get("decision_counts", [])}
        for stage in s.get("stages", {}):  # every action from 0, so increase() sees the first
            for action in ACTIONS:
                counts.setdefault((stage, action), 0.0)
        for (stage, action), n in sorted(counts.items()):
            dec.add_metric([stage, action], n)
        yield from (req, err, drop, cmp_, weight, step, status, agree, gval, gbr, dec)


def render(status: dict[str, Any]) -> bytes:
    """Prometheus text exposition of a controller status."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(status))
    return generate_latest(registry)


def collector(status: dict[str, Any]) -> _Snapshot:
    """The rollout's families from a controller status, for rendering with other metrics."""
    return _Snapshot(status)
