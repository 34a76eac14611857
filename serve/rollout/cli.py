"""`funnel rollout apply FILE | status | promote STAGE | rollback STAGE`: the admin routes
(`/v1/admin/rollout`) from a terminal. The bearer token comes from the environment
(`FUNNEL_ADMIN_TOKEN` by default), never from the command line, so it stays out of shell
history and process lists.

A config is checked here first (shape; exit 2 with the fields named), then by the server
(bundle versions, loading); a refusal exits 2 and the running config keeps serving.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from serve.errors import RolloutConfigError
from training.errors import FunnelError

rollout_app = typer.Typer(help="Canary and shadow rollout (docs/rollout.md).",
                          no_args_is_help=True)

Url = Annotated[str, typer.Option(help="The serving endpoint.")]
TokenEnv = Annotated[str, typer.Option(help="Environment variable holding the admin token.")]


class AdminCallError(FunnelError):
    """The admin route answered with an error (exit 1), or could not be reached."""


def _call(url: str, token_env: str, method: str, path: str, body: Any = None
          ) -> dict[str, Any]:
    token = os.environ.get(token_env, "")
    if not token:
        raise RolloutConfigError(f"{token_env} is not set: the admin routes need the token")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method, headers={
        "authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            out: dict[str, Any] = json.loads(r.read() or b"{}")
            return out
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read())
        except ValueError:
            detail = {"detail": e.reason}
        msg = _explain(detail.get("detail"))
        if e.code in (400, 422):
            raise RolloutConfigError(f"refused ({e.code}): {msg}") from e
        raise AdminCallError(f"{method} {path}: HTTP {e.code}: {msg}") from e
    except OSError as e:
        raise AdminCallError(f"cannot reach {url}: {e}") from e


def _explain(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(f"{d.get('field')}: {d.get('message')}" if isinstance(d, dict)
                         else str(d) for d in detail)
    return str(detail)


@rollout_app.command("apply")
def apply_cmd(file: Annotated[str, typer.Argument(help="Rollout config YAML.")],
              url: Url = "http://127.0.0.1:8000", token_env: TokenEnv = "FUNNEL_ADMIN_TOKEN",
              dry_run: Annotated[bool, typer.Option(
                  help="Only check the file's shape here.")] = False) -> None:
    """Validate and apply a rollout config (replicas switch without a restart)."""
    from serve.rollout.config import parse_rollout
    from training.config import read_yaml

    raw = read_yaml(file, what="rollout config", error=RolloutConfigError)
    cfg = parse_rollout(raw)
    console = Console(stderr=True)
    if dry_run:
        console.print(f"[bold]funnel[/] {file}: valid shape ({len(cfg.stages)} stage(s)); "
                      "bundle versions are checked by the server", highlight=False)
        return
    out = _call(url, token_env, "PUT", "/v1/admin/rollout", raw)
    console.print(f"[bold]funnel[/] applied {file}: revision {out.get('revision')}",
                  highlight=False)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


@rollout_app.command("status")
def status_cmd(url: Url = "http://127.0.0.1:8000", token_env: TokenEnv = "FUNNEL_ADMIN_TOKEN",
               as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")]
               = False) -> None:
    """Each stage's weights, step, guardrails and the latest decisions."""
    s = _call(url, token_env, "GET", "/v1/admin/rollout")
    console = Console()
    if as_json:
        console.print_json(json.dumps(s))
        return
    if not s.get("stages"):
        console.print(f"no rollout: every stage serves bundle {s.get('primary_version')}"
                      + (f" (start-up config pending: {s['start_error']})"
                         if s.get("start_error") else ""))
    for stage, st in s.get("stages", {}).items():
        steps = "/".join(f"{w:g}" for w in st["steps"])
        console.print(f"[bold]{stage}[/]: {st['status']}"
                      + (f", step {st['step'] + 1} of {len(st['steps'])} ({steps} %)"
                         if st["steps"] else "")
                      + f", {st['step_age_s']:.0f} s at this step"
                      + (f"; waiting for {st['waiting_for']}" if st["waiting_for"] else ""),
                      highlight=False)
        t = Table("variant", "bundle", "weight %", "requests", "errors", "p99 ms",
                  "overlap@k", "rbo", "guardrails")
        for name, v in st["variants"].items():
            w = v["window"]
            weight = st["weights"].get(name)
            overlap = ", ".join(f"@{k} {_fmt(x)}" for k, x in w["overlap_at_k"].items())
            guards = ", ".join(
                f"{g['metric']}{'@' + str(g['k']) if g.get('k') else ''}="
                f"{_fmt(g['value'])}{'' if g['holds'] is not False else ' BREACH'}"
                for g in v["guardrails"])
            t.add_row(name + ("" if weight is not None else " (shadow)"), v["bundle_version"],
                      _fmt(weight) if weight is not None else "-", str(w["requests"]),
                      str(w["errors"]), _fmt(w["p99_ms"], 1), overlap or "-",
                      _fmt(w["rank_correlation"]), guards or "-")
        console.print(t)
    decisions = s.get("decisions", [])[-10:]
    if decisions:
        t = Table("stage", "action", "variant", "reason", title="latest decisions")
        for d in decisions:
            t.add_row(d["stage"], d["action"], d["variant"], d["reason"])
        console.print(t)


@rollout_app.command("promote")
def promote_cmd(stage: Annotated[str, typer.Argument(help="retrieval | ranker | moderation")],
                url: Url = "http://127.0.0.1:8000",
                token_env: TokenEnv = "FUNNEL_ADMIN_TOKEN") -> None:
    """Move the stage's canary to its next step now."""
    out = _call(url, token_env, "POST", f"/v1/admin/rollout/{stage}/promote")
    Console(stderr=True).print(f"[bold]funnel[/] {stage}: {out['decision']['reason']}",
                               highlight=False)


@rollout_app.command("rollback")
def rollback_cmd(stage: Annotated[str, typer.Argument(help="retrieval | ranker | moderation")],
                 url: Url = "http://127.0.0.1:8000",
                 token_env: TokenEnv = "FUNNEL_ADMIN_TOKEN") -> None:
    """Send all of the stage's traffic to the primary."""
    _call(url, token_env, "POST", f"/v1/admin/rollout/{stage}/rollback")
    Console(stderr=True).print(f"[bold]funnel[/] {stage}: rolled back to the primary",
                               highlight=False)
