"""Every shared name list comes from funnel/contracts/names.py, and the registries that
implement the names (sources, filters) name exactly those."""

from __future__ import annotations

from funnel.contracts import names
from monitoring import experiments, metrics
from serve import api
from serve.config import FILTER_NAMES, SOURCE_NAMES
from serve.filters import FILTERS
from serve.sources import SOURCES
from training.data.schema import HARM_LABELS
from training.data.synthetic import HARM_MIX, HARM_PHRASES, HARM_PHRASES_LATE


def test_candidate_sources() -> None:
    assert tuple(SOURCES) == SOURCE_NAMES == names.SOURCES
    assert metrics.SOURCES == SOURCE_NAMES
    assert {f"source:{s}" for s in SOURCE_NAMES} <= set(metrics.DEGRADED_STAGES)


def test_filters() -> None:
    assert tuple(FILTERS) == FILTER_NAMES == names.FILTERS


def test_event_types() -> None:
    assert metrics.EVENT_TYPES == api.EVENT_TYPES == experiments.EVENT_TYPES == names.EVENT_TYPES


def test_harm_labels() -> None:
    assert HARM_LABELS == names.HARM_LABELS
    for table in (HARM_MIX, HARM_PHRASES, HARM_PHRASES_LATE):
        assert set(table) == set(HARM_LABELS)
