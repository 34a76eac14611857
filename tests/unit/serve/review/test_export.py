"""Reviewer decisions -> training-label parquet -> what `funnel train` reads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from funnel.contracts.errors import DatasetError
from serve.review.export import export_labels
from serve.review.store import SqlReviewStore as ReviewStore
from training.review_labels import LABEL_COLUMNS, read_review_labels


def _queue(store: ReviewStore, cid: str, text: str | None, flagged: list[str]) -> int:
    item_id = store.record_model_decision(
        content_id=cid, decision="review", model="m", policy_version="p1", request_id="r",
        text=text, has_image=text is None, author_id=None, scores={}, flagged_labels=flagged,
        reasons=[], model_versions={})
    assert item_id is not None
    return item_id


def test_block_marks_flagged_labels_allow_marks_none(tmp_path: Path) -> None:
    store = ReviewStore(f"sqlite:///{tmp_path / 'r.db'}")
    store.decide(_queue(store, "1", "you are scum", ["hate", "abuse"]), decision="block",
                 reviewer="ana")
    store.decide(_queue(store, "2", "cheap pills", ["spam"]), decision="allow", reviewer="bo")
    store.decide(_queue(store, "3", "held while a model was down", []), decision="block",
                 reviewer="ana")
    store.decide(_queue(store, "4", None, ["nudity"]), decision="block", reviewer="ana")
    _queue(store, "5", "still pending", ["spam"])
    counts = export_labels(store, tmp_path / "labels.parquet")
    assert counts == {"rows": 3, "blocked": 2, "allowed": 1, "with_text": 2,
                      "skipped_no_label": 1}
    df = pd.read_parquet(tmp_path / "labels.parquet").set_index("content_id")
    assert df.loc["1", ["label_hate", "label_abuse", "label_spam"]].tolist() == [1, 1, 0]
    assert df.loc["2", list(LABEL_COLUMNS)].sum() == 0
    assert (df.loc["1", "reviewer"], df.loc["2", "decision"]) == ("ana", "allow")
    train = read_review_labels(tmp_path / "labels.parquet")
    assert sorted(train["content_id"]) == ["1", "2"]  # the image-only row has no text


def test_read_review_labels_names_a_missing_column_or_bad_value(tmp_path: Path) -> None:
    df = pd.DataFrame({"content_id": ["1"], "text": ["x"], "decision": ["maybe"],
                       "reviewer": ["a"], "decided_at": [pd.Timestamp.now(tz="UTC")],
                       "policy_version": ["p"], **{c: [0] for c in LABEL_COLUMNS}})
    df.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match="decision 'maybe' is not allowed"):
        read_review_labels(tmp_path / "bad.parquet")
    df.drop(columns=["label_spam"]).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(DatasetError, match="lack column 'label_spam'"):
        read_review_labels(tmp_path / "short.parquet")
    with pytest.raises(DatasetError, match="cannot read review labels"):
        read_review_labels(tmp_path / "missing.parquet")
