"""Labelled texts for moderation training (training.data.texts): specs, checks, split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from funnel.contracts.errors import DatasetError
from training.data.texts import (
    LabelSpec,
    load_labelled_texts,
    parse_label_spec,
    stratified_split,
)


def test_label_specs() -> None:
    assert parse_label_spec("hate=is_hate") == LabelSpec("hate", "is_hate")
    assert parse_label_spec("abuse=class:0,1") == LabelSpec("abuse", "class", values=("0", "1"))
    assert parse_label_spec("hate=votes/count") == LabelSpec("hate", "votes",
                                                             denominator="count")
    for bad in ("hate", "Hate=x", "hate=", "hate=class:", "hate=/count", "1x=y"):
        with pytest.raises(DatasetError, match="--label"):
            parse_label_spec(bad)


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "texts.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _frame(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cls = rng.choice([0, 1, 2], size=n, p=[0.1, 0.6, 0.3])
    return pd.DataFrame({"text": [f"post number {i}" for i in range(n)], "class": cls,
                         "votes": rng.integers(0, 4, n), "count": 3,
                         "hate": (cls == 0).astype(int)})


def test_default_columns_and_class_mapping(tmp_path: Path) -> None:
    f = _frame()
    only = _csv(tmp_path, f[["text", "hate"]])
    d = load_labelled_texts(only)
    assert d.labels == ("hate",) and d.targets[:, 0].sum() == f["hate"].sum()
    d = load_labelled_texts(_csv(tmp_path, f, "all.csv"),
                            label_specs=["hate=class:0", "abuse=class:0,1"])
    assert d.labels == ("hate", "abuse")
    assert (d.targets[:, 1] == f["class"].isin([0, 1])).all()
    assert "hate=class:0" in d.summary()["mapping"]
    assert "text" not in str(d.summary()).lower().replace("texts", "")  # counts, no text


def test_soft_labels_from_votes(tmp_path: Path) -> None:
    f = _frame()
    f["votes"] = np.where(f["class"] == 0, 3, f["votes"] % 2)
    d = load_labelled_texts(_csv(tmp_path, f), label_specs=["hate=votes/count"])
    assert np.allclose(np.unique(d.targets), [0.0, 1 / 3, 1.0])
    assert d.hard.sum() == (f["votes"] >= 2).sum()


def test_stratified_split_keeps_each_label_share() -> None:
    strata = np.array(["1"] * 100 + ["0"] * 900, dtype=object)
    split = stratified_split(strata, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert (split[:100] == "test").sum() == 20 and (split[:100] == "val").sum() == 10
    assert (split[100:] == "test").sum() == 180
    again = stratified_split(strata, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert (split == again).all()


def test_split_column_from_the_file(tmp_path: Path) -> None:
    f = _frame(30)
    f["split"] = ["train"] * 20 + ["validation"] * 5 + ["test"] * 5
    f.loc[0, "hate"] = 1
    d = load_labelled_texts(_csv(tmp_path, f[["text", "hate", "split"]]), split_column="split")
    assert d.part("val").sum() == 5 and d.split_source == "file:split"


@pytest.mark.parametrize(("frame_edit", "kwargs", "message"), [
    (lambda f: f.drop(columns=["text"]), {}, "no text column 'text'"),
    (lambda f: f[["text"]], {}, "no label columns"),
    (lambda f: f, {"label_specs": ["hate=nope"]}, "no column 'nope'"),
    (lambda f: f.assign(hate=0), {"label_specs": ["hate=hate"]}, "has no positive row"),
    (lambda f: f.assign(hate=5), {"label_specs": ["hate=hate"]}, "outside \\[0, 1\\]"),
    (lambda f: f.assign(text=[""] + ["x"] * (len(f) - 1)), {}, "row 2 is empty"),
    (lambda f: f.assign(split="later"), {"split_column": "split"}, "expected train, val"),
    (lambda f: f, {"label_specs": ["hate=class:0", "hate=hate"]}, "mapped twice"),
    (lambda f: f.assign(count=0), {"label_specs": ["hate=votes/count"]}, "must be > 0"),
])
def test_bad_files_name_the_column(tmp_path: Path, frame_edit, kwargs, message) -> None:
    path = _csv(tmp_path, frame_edit(_frame()))
    with pytest.raises(DatasetError, match=message):
        load_labelled_texts(path, **kwargs)


def test_unreadable_or_unknown_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_labelled_texts(tmp_path / "missing.csv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"expected a \.csv"):
        load_labelled_texts(tmp_path / "x.json")


def test_parquet_and_sample(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    _frame(300).to_parquet(path)
    d = load_labelled_texts(path, label_specs=["hate=class:0"], sample_rows=100)
    assert len(d.texts) == 100


def test_cli_refuses_bad_texts_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from funnel.cli import main

    path = _csv(tmp_path, _frame()[["text", "hate"]])

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["funnel", *args])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out + out.err

    code, out = run("train", "moderation", "--texts", str(path), "--label", "hate=class:0",
                    "--out", str(tmp_path / "o"))
    assert code == 2 and "no column 'class'" in out and "Traceback" not in out
    code, out = run("data", "validate", str(path), "--text-column", "body")
    assert code == 2 and "no text column 'body'" in out
    code, out = run("data", "validate", str(path))
    assert code == 0 and "train positives" in out
