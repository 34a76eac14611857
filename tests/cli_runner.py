"""Run the `funnel` command in the test's own process, as a user would type it."""

from __future__ import annotations

import sys

import pytest


def run_funnel(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               *args: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `funnel ARGS`, 250 columns wide."""
    from funnel.cli import main

    monkeypatch.setattr(sys, "argv", ["funnel", *args])
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    code = e.value.code
    return (code if isinstance(code, int) else 1), out.out + out.err
