"""The `funnel` command's root (funnel/cli.py): `funnel bench` comes from a source
checkout's benchmarks/ package, which is not in the wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]

_COMMANDS = """
import sys
{block}
from funnel.cli import app
import typer.main
group = typer.main.get_command(app)
print(" ".join(sorted(group.commands)))
"""

_BLOCK_BENCHMARKS = """
import importlib.abc
class _NoBenchmarks(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "benchmarks" or name.startswith("benchmarks."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoBenchmarks())
"""


def _commands(block: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", _COMMANDS.format(block=block)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_bench_is_mounted_from_a_checkout_and_absent_without_benchmarks() -> None:
    with_bench = _commands("")
    without = _commands(_BLOCK_BENCHMARKS)
    assert "bench" in with_bench
    assert "bench" not in without
    assert with_bench - {"bench"} == without
    assert {"serve", "train", "rollout", "review", "drift", "experiment"} <= without


def test_the_wheel_holds_the_platform_and_not_the_benchmarks() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = conf["tool"]["setuptools"]["packages"]["find"]["include"]
    top = {p.split(".")[0] for p in find_packages(str(ROOT), include=include)}
    assert top == {"funnel", "serve", "training", "monitoring"}
    assert conf["project"]["scripts"]["funnel"] == "funnel.cli:main"


def test_python_dash_m_funnel_is_the_funnel_command() -> None:
    r = subprocess.run([sys.executable, "-m", "funnel", "--help"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    assert "rollout" in r.stdout and "serve" in r.stdout
