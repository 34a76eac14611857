"""The moderation policy: per-label score thresholds -> allow | review | block.

A policy is a versioned YAML file (serve/configs/moderation-policy.yaml is the default):

    version: "2026-11-23.1"
    labels:
      nudity: {review_at: 0.20, block_at: 0.80}
      ...

For each label, a score at or above `block_at` blocks the content and one at or above
`review_at` sends it to human review; the decision is the most severe over all labels, and
`reasons` names every label that crossed a threshold, most severe first. Low `review_at` on
the severe labels (nudity, violence, hate) trades reviewer time for recall: a doubtful item
is looked at by a person rather than served.

One policy covers the union of the labels the serving models emit. It must give thresholds
for every label the serving bundle's models score (a missing one is refused at load: a typo
would otherwise leave a real label unguarded). It may also give thresholds for labels no
serving model emits yet: they are dormant until a canary text head that adds the label
serves (docs/rollout.md, "Moderation label sets"); the rollout controller refuses a head with
a label the policy lacks. A label a variant does not emit is simply not scored for its
content, as nudity is not for a text-only post.

Pure logic: no Ray, FastAPI or model imports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serve.errors import PolicyError
from training.config import read_yaml

Decision = Literal["allow", "review", "block"]
DECISIONS: tuple[Decision, ...] = ("allow", "review", "block")
_SEVERITY = {d: i for i, d in enumerate(DECISIONS)}
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    review_at: float = Field(ge=0.0, le=1.0)
    block_at: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.review_at > self.block_at:
            raise ValueError(f"review_at ({self.review_at}) must not exceed block_at "
                             f"({self.block_at})")
        return self


class PolicySpec(BaseModel):
    """The file's contents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    labels: dict[str, Thresholds] = Field(min_length=1)


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ModerationPolicy:
    """A loaded, validated policy; `decide` is the whole algorithm."""

    version: str
    thresholds: Mapping[str, Thresholds]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.thresholds)

    def missing(self, labels: Sequence[str]) -> list[str]:
        """The labels of `labels` this policy has no thresholds for."""
        return [lb for lb in labels if lb not in self.thresholds]

    def outcomes(self, scores: Mapping[str, float]) -> dict[str, Decision]:
        """Each scored label's own outcome (which of its thresholds the score crossed): the
        per-label rates that metrics and drift monitors follow."""
        out: dict[str, Decision] = {}
        for label, t in self.thresholds.items():
            if label in scores:
                s = float(scores[label])
                out[label] = "block" if s >= t.block_at else (
                    "review" if s >= t.review_at else "allow")
        return out

    def decide(self, scores: Mapping[str, float]) -> Verdict:
        """The most severe decision any label's score calls for, with the reasons."""
        hits: list[tuple[int, float, str]] = []
        for label, t in self.thresholds.items():
            if label not in scores:
                continue  # not scored for this content (e.g. nudity of a text-only post)
            s = float(scores[label])
            if s >= t.block_at:
                hits.append((2, s, f"{label}: score {s:.3f} >= block_at {t.block_at:g}"))
            elif s >= t.review_at:
                hits.append((1, s, f"{label}: score {s:.3f} >= review_at {t.review_at:g}"))
        if not hits:
            return Verdict("allow", ())
        hits.sort(key=lambda h: (-h[0], -h[1]))
        return Verdict(DECISIONS[hits[0][0]], tuple(h[2] for h in hits))


def more_severe(a: Decision, b: Decision) -> Decision:
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


def parse_policy(raw: Any, *, labels: Sequence[str], source: str = "policy") -> ModerationPolicy:
    """Validate a policy document against the labels the serving models score: each needs
    thresholds; further labels are kept, dormant, after them (for a canary head that adds a
    label)."""
    try:
        spec = PolicySpec.model_validate(raw)
    except ValidationError as e:
        raise PolicyError(f"{source}: " + "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: "
            f"{err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})"
            for err in e.errors())) from e
    bad = [lb for lb in spec.labels if not LABEL_NAME.match(lb)]
    if bad:
        raise PolicyError(f"{source}: labels.{bad[0]}: not a label name (lower case letters, "
                          "digits and _, starting with a letter)")
    missing = [lb for lb in labels if lb not in spec.labels]
    if missing:
        raise PolicyError(f"{source}: labels.{missing[0]}: no thresholds for {missing}; every "
                          "scored label needs review_at and block_at")
    order = [*labels, *(lb for lb in spec.labels if lb not in labels)]
    return ModerationPolicy(version=spec.version,
                            thresholds={lb: spec.labels[lb] for lb in order})


def dormant_labels(policy: ModerationPolicy, labels: Sequence[str]) -> list[str]:
    """The policy's labels that none of `labels` (what the serving models score) is."""
    return [lb for lb in policy.labels if lb not in labels]


def load_policy(path: str | Path, *, labels: Sequence[str]) -> ModerationPolicy:
    """Read and validate a policy file; PolicyError (CLI exit 2) names the bad field."""
    p = Path(path)
    raw = read_yaml(p, what="moderation policy", error=PolicyError)
    return parse_policy(raw, labels=labels, source=str(p))
