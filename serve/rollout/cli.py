"""`funnel rollout versions | apply FILE | status | promote STAGE | rollback STAGE`: the admin
routes (`/v1/admin/rollout`) from a terminal. The bearer token comes from the environment
(`FUNNEL_ADMIN_TOKEN` by default), never from the command line, so it stays out of shell
history and process lists.

`versions` lists the bundle versions a config can name: those under the local bundle root
(the one `funnel serve` uses), or, with `--server`, those the running server has. A config
is checked here first (shape; with `--dry-run`, also that every version it names exists under
the bundle root and passes its checksums), then by the server (bundle versions, loading); a
refusal exits 2 naming the field, and the running config keeps serving.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from funnel.contracts.errors import FunnelError, RolloutConfigError

if TYPE_CHECKING:
    from funnel.contracts.rollout import RolloutConfig

rollout_app = typer.Typer(help="Canary and shadow rollout (docs/rollout.md).",
                          no_args_is_help=True)

Url = Annotated[str, typer.Option(help="The serving endpoint.")]
TokenEnv = Annotated[str, typer.Option(help="Environment variable holding the admin token.")]
Bundles = Annotated[str | None, typer.Option(
    help="Bundle root: the directory of bundle versions (default: the one `funnel serve` "
    "uses with --config: args.rollout.bundle_root, else the parent of args.bundle, "
    "artifacts/).")]
ServeConfig = Annotated[str | None, typer.Option(
    "--config", help="The Ray Serve config `funnel serve` runs with (default: "
    "serve/configs/local.yaml).")]


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


_SERVE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "local.yaml"


def serving_root(bundles: str | None, config: str | None) -> tuple[Path, str, bool]:
    """The bundle root, the serving bundle and whether fault injection is allowed, as
    `funnel serve --config CONFIG` resolves them (serve/app.py `check_rollout_args`).
    `bundles` wins; given a bundle (`artifacts/latest`) rather than a root, its parent."""
    from funnel.contracts.bundle import MANIFEST
    from serve.bundles import bundle_root
    from serve.config import load_serve_config

    _, args = load_serve_config(config or _SERVE_CONFIG)
    allow = args.rollout.allow_fault_injection
    if bundles is not None:
        is_bundle = (Path(bundles) / MANIFEST).is_file()
        return (bundle_root(bundles) if is_bundle else Path(bundles)), bundles, allow
    root = Path(args.rollout.bundle_root) if args.rollout.bundle_root else bundle_root(
        args.bundle)
    return root, args.bundle, allow


class Only(StrEnum):
    serving = "serving"
    latest = "latest"


@rollout_app.command("versions")
def versions_cmd(bundles: Bundles = None, config: ServeConfig = None,
                 server: Annotated[bool, typer.Option(
                     "--server", help="Ask the running server at --url (needs the admin "
                     "token) instead of reading the bundle root here.")] = False,
                 url: Url = "http://127.0.0.1:8000",
                 token_env: TokenEnv = "FUNNEL_ADMIN_TOKEN",
                 only: Annotated[Only | None, typer.Option(
                     help="Print just one version, for scripts: 'serving' (the server's "
                     "primary; asks the server) or 'latest' (artifacts/latest).")] = None
                 ) -> None:
    """The bundle versions a rollout config can name as `bundle_version`."""
    from funnel.contracts.bundle import read_manifest, resolve_bundle
    from serve.bundles import available_versions

    console = Console()
    if only is Only.serving:
        print(_call(url, token_env, "GET", "/v1/admin/rollout").get("primary_version", ""))
        return
    if only is Only.latest:
        root, _, _ = serving_root(bundles, config)
        if not (root / "latest").exists():
            raise RolloutConfigError(f"--only latest: no {root / 'latest'}; `funnel train "
                                     f"--out {root}` writes one")
        print(resolve_bundle(root / "latest").name)
        return
    if server:
        s = _call(url, token_env, "GET", "/v1/admin/rollout")
        t = Table("bundle_version", "", title=f"{url}: {s.get('bundle_root')}")
        for v in s.get("available_versions", []):
            t.add_row(v, "serving (primary)" if v == s.get("primary_version") else "")
        console.print(t)
        return
    root, _, _ = serving_root(bundles, config)
    versions = available_versions(root)
    if not versions:
        raise RolloutConfigError(f"no bundle versions under {root} (a version is a directory "
                                 f"with a manifest.json); `funnel train --out {root}` writes "
                                 "one, or pass --bundles DIR")
    latest = resolve_bundle(root / "latest").name if (root / "latest").exists() else None
    t = Table("bundle_version", "created (UTC)", "dataset", "", title=str(root))
    for v in versions:
        try:  # the manifest only: `apply --dry-run` verifies the checksums
            m = read_manifest(root / v)
            ds = m["dataset"] if isinstance(m.get("dataset"), dict) else {}
            created = str(m.get("created_at", "-"))[:16].replace("T", " ")
            data = f"{ds.get('name', '-')}, {ds.get('users', '?')} users"
        except FunnelError as e:
            created, data = "-", f"unreadable: {e}"
        t.add_row(v, created, data, "latest" if v == latest else "")
    console.print(t)


def check_local(raw: Any, *, root: Path, serving: str, allow_faults: bool,
                policy_file: str | None = None) -> RolloutConfig:
    """What the server checks at apply, done here against the bundle root: the shape, every
    named version exists (the field named, the available versions listed), fault injection
    only where allowed, and every version passes its checksums (a moderation version: every
    label it emits has thresholds in the moderation policy `policy_file`, when given).
    RolloutConfigError otherwise."""
    from funnel.contracts.bundle import read_manifest
    from funnel.contracts.rollout import check_versions, parse_rollout
    from serve.bundles import BundleVersions, available_versions
    from serve.moderation.remote import load_serving_policy
    from serve.rollout.controller import verify_versions

    cfg = parse_rollout(raw)
    have = available_versions(root)
    try:
        check_versions(cfg, have, allow_faults=allow_faults)
    except RolloutConfigError as e:
        hint = "" if have else (f"; `funnel train --out {root}` writes one, `funnel rollout "
                                "versions --bundles DIR` lists another root's")
        raise RolloutConfigError(f"{e} (bundle root {root}{hint})", fields=e.fields) from e
    primary = read_manifest(serving) if "moderation" in cfg.stages else {}
    # version "": verify every version, the serving one too (the server verified that one
    # when it started; a dry run has not)
    # the quality gate too, for every version: here we cannot tell which one the server
    # serves (`latest` may be newer), and the server skips only that one
    policy = (load_serving_policy(policy_file, primary)
              if policy_file and "moderation" in cfg.stages else None)
    verify_versions(cfg, bundles=BundleVersions(root), primary={**primary, "version": ""},
                    policy=policy)
    return cfg


@rollout_app.command("apply")
def apply_cmd(file: Annotated[str, typer.Argument(help="Rollout config YAML.")],
              url: Url = "http://127.0.0.1:8000", token_env: TokenEnv = "FUNNEL_ADMIN_TOKEN",
              dry_run: Annotated[bool, typer.Option(
                  help="Only check here: the shape, and that every bundle version exists "
                  "under --bundles and passes its checksums.")] = False,
              bundles: Bundles = None, config: ServeConfig = None,
              allow_regression: Annotated[bool, typer.Option(
                  "--allow-regression", help="Apply even a bundle whose quality gate failed "
                  "(a model that does not beat its baseline; `funnel train` prints the "
                  "verdicts). Recorded as an allow_regression decision.")] = False) -> None:
    """Validate and apply a rollout config (replicas switch without a restart)."""
    from funnel.contracts.rollout import parse_rollout
    from training.config import read_yaml

    raw = read_yaml(file, what="rollout config", error=RolloutConfigError)
    if allow_regression and isinstance(raw, dict):
        raw = {**raw, "allow_regression": True}
    console = Console(stderr=True)
    if dry_run:
        from serve.config import load_serve_config

        root, serving, allow = serving_root(bundles, config)
        _, args = load_serve_config(config or _SERVE_CONFIG)
        cfg = check_local(raw, root=root, serving=serving, allow_faults=allow,
                          policy_file=args.moderation.policy if args.moderation.enabled
                          else None)
        versions = sorted({v for st in cfg.stages.values() for v in st.versions()})
        console.print(f"[bold]funnel[/] {file}: valid ({len(cfg.stages)} stage(s)); bundle "
                      f"versions {versions} exist under {root} and pass their checksums",
                      highlight=False)
        return
    parse_rollout(raw)
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
                  "overlap@k", "rbo", "$/1k", "guardrails")
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
                      _fmt(w["rank_correlation"]), _usd(v.get("usd_per_1k")), guards or "-")
        console.print(t)
    decisions = s.get("decisions", [])[-10:]
    if decisions:
        t = Table("stage", "action", "variant", "reason", title="latest decisions")
        for d in decisions:
            t.add_row(d["stage"], d["action"], d["variant"], d["reason"])
        console.print(t)


def _usd(x: float | None) -> str:
    """A variant's CPU dollars per thousand requests (docs/cost.md)."""
    return "-" if x is None else f"${x:.6f}"


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
