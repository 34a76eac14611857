"""The Helm chart's JSON Schema for `rollout` (charts/funnel/values.schema.json), generated
from the pydantic rollout model (funnel/contracts/rollout.py), so that a new guardrail, field or
bound reaches the chart without a hand edit.

    python -m serve.rollout.chart_schema            # rewrite the chart's schema in place
    python -m serve.rollout.chart_schema --check    # exit 1 if it is out of date

The per-stage shape is written once, under `$defs`, and each stage refers to it. pydantic's
schema is reduced to what Helm validates: titles, defaults and descriptions go, and an
optional field becomes a nullable type (`["string", "null"]`) or, for an optional object,
the object itself (a values file leaves it out rather than writing null).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from funnel.contracts.rollout import STAGES, RolloutConfig

CHART_SCHEMA = Path(__file__).resolve().parents[2] / "charts" / "funnel" / "values.schema.json"
_DROP = {"title", "default", "description"}
_STAGE_DEF = "rolloutStage"


def _reduce(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_reduce(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _reduce(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) == 1:
            nullable = len(options) < len(node["anyOf"])
            inner = _reduce(options[0], defs)
            rest = {k: _reduce(v, defs) for k, v in node.items()
                    if k != "anyOf" and k not in _DROP}
            if nullable and inner.get("type") != "object":
                inner = {**inner, "type": [inner["type"], "null"]}
            return {**inner, **rest}
    return {k: _reduce(v, defs) for k, v in node.items() if k not in _DROP and k != "$defs"}


_ORDER = ("type", "enum", "pattern", "minLength", "maxLength", "exclusiveMinimum", "minimum",
          "maximum", "minItems", "maxItems", "items", "properties", "additionalProperties",
          "required")


def _ordered(node: Any) -> Any:
    """The chart's key order (type first, then bounds, properties, required), for a
    readable diff."""
    if isinstance(node, list):
        return [_ordered(x) for x in node]
    if not isinstance(node, dict):
        return node
    keys = sorted(node, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))
    return {k: (_ordered(node[k]) if k != "properties" else
                {p: _ordered(v) for p, v in node[k].items()}) for k in keys}


def rollout_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the chart's `properties.rollout`, the `$defs` entry for one stage)."""
    full = RolloutConfig.model_json_schema()
    defs = full.get("$defs", {})
    stage = _ordered(_reduce(defs["StageRollout"], defs))
    salt = _ordered(_reduce(full["properties"]["salt"], defs))
    rollout = {
        "type": "object",
        "properties": {
            "salt": salt,
            "stages": {
                "type": "object",
                "properties": {s: {"$ref": f"#/$defs/{_STAGE_DEF}"} for s in STAGES},
                "additionalProperties": False,
                "description": "per stage: " + ", ".join(STAGES),
            },
        },
        "additionalProperties": False,
        "description": "funnel/contracts/rollout.py RolloutConfig; docs/rollout.md",
    }
    return rollout, stage


def updated(chart: dict[str, Any]) -> dict[str, Any]:
    rollout, stage = rollout_schema()
    out = dict(chart)
    out["properties"] = {**chart["properties"], "rollout": rollout}
    out["$defs"] = {**chart.get("$defs", {}), _STAGE_DEF: stage}
    return out


def render(chart: dict[str, Any]) -> str:
    return json.dumps(chart, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve.rollout.chart_schema",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the chart is out of date")
    p.add_argument("--schema", type=Path, default=CHART_SCHEMA)
    a = p.parse_args(argv)
    text = a.schema.read_text()
    new = render(updated(json.loads(text)))
    if a.check:
        if new != text:
            print(f"{a.schema}: the rollout schema is out of date; run "
                  "`python -m serve.rollout.chart_schema`", file=sys.stderr)
            return 1
        return 0
    a.schema.write_text(new)
    print(f"wrote {a.schema}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
