"""Per-request variant choice inside an ingress replica: the routing table the controller
hands out, sticky assignment, shadow sampling, and the canary's local error budget.

Pure (no Ray): the replica calls `update` with each new table from the controller and
`assign` / `shadows` per request. A canary is served only while this replica's share of the
step's error budget (`canary_budget`, from the controller) exceeds its failures not yet
reported plus its canary requests in flight, so the failures a canary can cost before the
controller rolls it back stay within the budget even between two reports; past it, its users
get the primary until the controller decides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from serve.rollout.assign import BUCKETS, assign, bucket


@dataclass(frozen=True)
class Assignment:
    stage: str
    variant: str
    bundle_version: str
    fault: tuple[tuple[str, float], ...] | None
    primary: bool
    compare: bool  # compare this canary request with the primary, off the critical path

    @property
    def key(self) -> tuple[str, tuple[tuple[str, float], ...] | None]:
        return self.bundle_version, self.fault


def fault_key(fault: dict[str, float] | None) -> tuple[tuple[str, float], ...] | None:
    return tuple(sorted((k, float(v)) for k, v in fault.items())) if fault else None


class Router:
    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.revision = -1
        self.stages: dict[str, dict[str, Any]] = {}
        self._inflight: dict[str, int] = {}
        self._unreported: dict[str, int] = {}

    def update(self, table: dict[str, Any]) -> None:
        self.stages = dict(table.get("stages") or {})
        self.revision = int(table.get("revision", 0))

    def unreported(self) -> dict[str, int]:
        """Canary failures counted here and not yet sent to the controller, per stage."""
        return dict(self._unreported)

    def reported(self, sent: dict[str, int]) -> None:
        """`sent` (a snapshot of `unreported()` taken with the report) reached the controller:
        its table's budget share accounts for them. Failures counted while the report was
        on its way stay counted here until the next one."""
        for stage, n in sent.items():
            self._unreported[stage] = max(0, self._unreported.get(stage, 0) - n)

    def assign(self, stage: str, key: int | str) -> Assignment | None:
        st = self.stages.get(stage)
        if st is None:
            return None
        vs = st["variants"]
        name = assign(st["salt"], key, [v["name"] for v in vs], [v["weight"] for v in vs])
        v = next(x for x in vs if x["name"] == name)
        primary = v is vs[0]
        if not primary and st.get("canary_budget") is not None and (
                self._unreported.get(stage, 0) + self._inflight.get(stage, 0)
                >= st["canary_budget"]):
            v, primary = vs[0], True  # this replica's budget share is spent
        compare = not primary and self._rng.random() < float(st.get("compare_sample_rate", 1))
        return Assignment(stage, v["name"], v["bundle_version"], fault_key(v.get("fault")),
                          primary, compare)

    def shadows(self, stage: str) -> list[Assignment]:
        st = self.stages.get(stage)
        if st is None:
            return []
        return [Assignment(stage, s["name"], s["bundle_version"], fault_key(s.get("fault")),
                           False, True)
                for s in st.get("shadows", ()) if self._rng.random() < s["sample_rate"]]

    def interleave(self, stage: str, request_id: str, served: Assignment | None
                   ) -> Assignment | None:
        """The variant whose list is interleaved with the primary's for this request, or None.
        Only requests the primary serves are sampled (a canary's users see the canary alone);
        the draw hashes the request id, so a replayed request is interleaved again."""
        st = self.stages.get(stage)
        il = st.get("interleaving") if st else None
        if st is None or il is None or served is None or not served.primary:
            return None
        if bucket(f"{st['salt']}:interleaving", request_id) >= il["sample_rate"] * BUCKETS:
            return None
        v = next((x for x in st["variants"] if x["name"] == il["variant"]), None)
        if v is None:
            return None
        return Assignment(stage, v["name"], v["bundle_version"], fault_key(v.get("fault")),
                          False, False)

    def overlap_ks(self, stage: str) -> list[int]:
        return list(self.stages.get(stage, {}).get("overlap_ks", [10]))

    def begin(self, a: Assignment | None) -> None:
        if a is not None and not a.primary:
            self._inflight[a.stage] = self._inflight.get(a.stage, 0) + 1

    def end(self, a: Assignment | None, *, failed: bool) -> None:
        if a is None or a.primary:
            return
        self._inflight[a.stage] = max(0, self._inflight.get(a.stage, 0) - 1)
        if failed:
            self._unreported[a.stage] = self._unreported.get(a.stage, 0) + 1

    def versions(self, stage: str) -> set[tuple[str, tuple[tuple[str, float], ...] | None]]:
        """(bundle version, fault) of every variant and shadow of the stage."""
        st = self.stages.get(stage) or {}
        return {(v["bundle_version"], fault_key(v.get("fault")))
                for v in [*st.get("variants", ()), *st.get("shadows", ())]}
