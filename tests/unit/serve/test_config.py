from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.config import load_serve_config, parse_app_args
from serve.errors import ServeConfigError

LOCAL = Path(__file__).resolve().parents[3] / "serve" / "configs" / "local.yaml"


def test_the_shipped_local_config_is_a_serve_config_with_valid_args() -> None:
    doc, args = load_serve_config(LOCAL)
    assert doc["applications"][0]["import_path"] == "serve.app:build_app"
    assert args.feed.sources["ann"].quota == 200
    assert args.triton.grpc_port == 8011
    assert args.feed.ranker.url.endswith(":8011")


@pytest.mark.parametrize(("args", "needle"), [
    ({"feed": {"sources": {"annn": {}}}}, "unknown source(s) ['annn']"),
    ({"feed": {"ranker": {"weights": {"clik": 1.0}}}}, "unknown task(s) ['clik']"),
    ({"feed": {"filters": {"enabled": ["seen", "seen"]}}}, "listed twice"),
    ({"feed": {"rerank": {"mmr_lambda": 1.5}}}, "args.feed.rerank.mmr_lambda"),
    ({"feed": {"sources": {"ann": {"timeout_ms": 0}}}}, "args.feed.sources.ann.timeout_ms"),
    ({"feed": {"max_candidates": 0}}, "args.feed.max_candidates"),
    ({"bundel": "x"}, "args.bundel"),
])
def test_bad_args_are_refused_naming_the_field(args: dict[str, object], needle: str) -> None:
    with pytest.raises(ServeConfigError) as e:
        parse_app_args(args)
    assert needle in str(e.value)
    assert e.value.exit_code == 2


def test_a_file_without_applications_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"http_options": {"port": 1}}))
    with pytest.raises(ServeConfigError, match="applications"):
        load_serve_config(p)
    with pytest.raises(ServeConfigError, match="cannot read"):
        load_serve_config(tmp_path / "missing.yaml")
    p.write_text("applications: [\n")
    with pytest.raises(ServeConfigError, match="not valid YAML"):
        load_serve_config(p)
