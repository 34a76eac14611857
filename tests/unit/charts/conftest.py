"""Fixtures the chart tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.charts import chart_harness as h


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `helm template --skip-schema-validation` sees: validateValues alone must refuse."""
    dest = tmp_path_factory.mktemp("chart") / "funnel"
    shutil.copytree(h.CHART, dest)  # links followed
    (dest / "values.schema.json").unlink()
    return dest
