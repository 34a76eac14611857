"""`funnel moderation ...`: moderation commands that read a bundle (thresholds from its
measured held-out scores)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

moderation_app = typer.Typer(help="Moderation policy tools.", no_args_is_help=True)


@moderation_app.command("thresholds")
def thresholds(
    bundle: Annotated[Path, typer.Option(help="A bundle trained by `funnel train moderation` "
                                         "(its moderation/heldout.parquet is read).")],
    out: Annotated[Path, typer.Option(help="Policy file to write.")] = Path(
        "moderation-policy.proposed.yaml"),
    policy: Annotated[Path | None, typer.Option(
        help="Base policy: thresholds of labels the bundle does not score, and review_at "
             "of the labels that are not severe (default: the shipped policy).")] = None,
    target_recall: Annotated[float, typer.Option(
        min=0.01, max=1.0, help="review_at of severe labels: recall to reach.")] = 0.90,
    target_precision: Annotated[float, typer.Option(
        min=0.01, max=1.0, help="block_at of every label: precision to reach.")] = 0.90,
    severe: Annotated[list[str] | None, typer.Option(
        help="Severe labels (repeatable; default: hate, nudity, violence, self_harm).")]
    = None,
    version: Annotated[str | None, typer.Option(
        help="The policy's version (default: <bundle version>.thresholds).")] = None,
) -> None:
    """Propose review_at / block_at per label from a bundle's measured scores: chosen on
    its validation split, measured on its test split (with 95 % intervals)."""
    import pandas as pd

    from funnel.contracts.bundle import verify_bundle
    from serve.config import DEFAULT_POLICY
    from serve.errors import PolicyError
    from serve.moderation.policy import load_policy, parse_policy
    from serve.moderation.thresholds import SEVERE_LABELS, propose

    b = verify_bundle(bundle)
    spec = (b.manifest.get("models") or {}).get("moderation") or {}
    heldout_rel = spec.get("heldout")
    if not heldout_rel:
        raise typer.BadParameter(f"{b.path} records no held-out moderation scores (train it "
                                 "with `funnel train moderation --texts`)",
                                 param_hint="--bundle")
    heldout = pd.read_parquet(b.file(heldout_rel))
    base = load_policy(policy or DEFAULT_POLICY, labels=())
    proposal = propose(heldout, spec["labels"], base=base,
                       severe=tuple(severe or SEVERE_LABELS), target_recall=target_recall,
                       target_precision=target_precision, bundle_version=b.version,
                       version=version or "")
    text = proposal.to_yaml()
    import yaml

    try:  # the written file is a policy the server accepts for this bundle's labels
        parse_policy(yaml.safe_load(text), labels=spec["labels"], source=str(out))
    except PolicyError as e:
        raise typer.BadParameter(str(e), param_hint="--version") from e
    out.write_text(text)
    table = Table(title=f"proposed thresholds ({b.version}; test split)")
    for col in ("label", "review_at", "recall (test)", "95% interval", "block_at",
                "precision (test)"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for p in proposal.labels:
        lo, hi = p.review_test.recall_ci
        table.add_row(p.label, f"{p.review_at:.4f}" + ("" if p.review_rule == "recall"
                                                        else " (base)"),
                      f"{p.review_test.recall:.3f}", f"[{lo:.3f}, {hi:.3f}]",
                      f"{p.block_at:.4f}" if p.block_reached else "1 (not reached)",
                      f"{p.block_test.precision:.3f}")
    Console().print(table)
    Console(stderr=True).print(f"wrote {out}", highlight=False)
