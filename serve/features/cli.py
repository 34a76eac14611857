"""`funnel features ...`: the online feature store's operations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

features_app = typer.Typer(help="The online feature store (Redis).", no_args_is_help=True)


@features_app.command("rebuild")
def rebuild(
    since: Annotated[str, typer.Option(help="Replay the log's events of this last window "
                                       "(30m, 2h, 7d).")] = "7d",
    config: Annotated[Path, typer.Option(help="The Serve config whose args name the Redis "
                                         "URL, the key prefix, the bounds and the "
                                         "impression log.")] = Path("serve/configs/local.yaml"),
    redis_url: Annotated[str | None, typer.Option(
        help="Redis URL (default: the config's features.url or its url_env variable).")]
    = None,
    log: Annotated[str | None, typer.Option(
        help="Impression log URL (default: the config's impressions.url or url_env).")]
    = None,
    bundle: Annotated[Path | None, typer.Option(
        help="Bundle whose catalog names each reported item's author (default: the "
             "config's bundle).")] = None,
) -> None:
    """Refill the feature store from the impression log (a Redis restarted empty, a
    replica that lost its replay): events by their id, so what is there already counts
    once; served items as seen. Safe to run while serving."""
    import os
    import time
    from datetime import UTC, datetime, timedelta

    from funnel.contracts.bundle import verify_bundle
    from monitoring.drift_window import open_log, parse_duration
    from serve.catalog import Catalog
    from serve.config import load_serve_config
    from serve.features.layout import Layout
    from serve.features.rebuild import replay
    from serve.features.store import OnlineFeatures, redacted
    from training.features import FeatureTransform

    err = Console(stderr=True)
    _, args = load_serve_config(config)
    f = args.features
    url = redis_url or f.resolved_url()
    if not url:
        raise typer.BadParameter(f"no Redis URL: give --redis-url, set {f.url_env}, or set "
                                 f"features.url in {config}", param_hint="--redis-url")
    window = parse_duration(since)
    s = args.impressions
    log_url = log or os.environ.get(s.url_env) or s.url
    fs, root = open_log(log_url, s.storage_options)
    b = verify_bundle(bundle or args.bundle)
    catalog = Catalog(b.file("catalog/catalog.json").parent)
    ft = FeatureTransform.load(b.file("features/transform.json").parent)
    layout = Layout.from_settings(f, history=ft.user_history,
                                  half_life_h=args.feed.trending_half_life_h)
    store = OnlineFeatures(url, layout, timeout_s=max(f.timeout_ms / 1000.0, 5.0),
                           retry_after_s=0)
    now = datetime.now(UTC)
    err.print(f"replaying {since} of {log_url} into {redacted(url)} (prefix {f.prefix})")
    res = replay(store, fs, root, start=now - window, end=now + timedelta(minutes=10),
                 reason="command", author_of=catalog.authors_of, progress=err.print)
    store.mark_filled(time.time())
    Console().print(f"{res.events:,} event(s) read: {res.applied:,} applied, "
                    f"{res.already:,} already there; served items of {res.served_users:,} "
                    f"user(s) marked seen; {res.seconds:.1f} s")
