from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from funnel.contracts.errors import DatasetError
from training.data.schema import load_dataset, save_dataset
from training.data.synthetic import Profile, generate

SMALL = Profile("unit", n_users=30, n_posts=80, impressions_per_user=10, mean_follows=3)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return save_dataset(generate(SMALL, seed=1), tmp_path / "ds")


def test_round_trip_keeps_every_table(dataset_dir: Path) -> None:
    ds = load_dataset(dataset_dir)
    assert len(ds.users) == 30
    assert len(ds.posts) == 80
    assert len(ds.impressions) == 300
    assert str(ds.posts["created_at"].dtype) == "datetime64[ms, UTC]"


def test_missing_table_names_the_file(dataset_dir: Path) -> None:
    (dataset_dir / "posts.parquet").unlink()
    with pytest.raises(DatasetError, match=r"missing table 'posts'"):
        load_dataset(dataset_dir)


def test_missing_directory_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_garbled_parquet_names_the_file(dataset_dir: Path) -> None:
    (dataset_dir / "users.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(DatasetError, match=r"users\.parquet: cannot be read"):
        load_dataset(dataset_dir)


def test_missing_required_column_is_named(dataset_dir: Path) -> None:
    df = pd.read_parquet(dataset_dir / "impressions.parquet").drop(columns=["click"])
    df.to_parquet(dataset_dir / "impressions.parquet")
    with pytest.raises(DatasetError, match=r"required column 'click' is missing"):
        load_dataset(dataset_dir)


def test_bad_enum_value_lists_allowed(dataset_dir: Path) -> None:
    df = pd.read_parquet(dataset_dir / "posts.parquet")
    df.loc[0, "modality"] = "hologram"
    df.to_parquet(dataset_dir / "posts.parquet")
    with pytest.raises(DatasetError, match=r"'modality' has value\(s\) \['hologram'\]"):
        load_dataset(dataset_dir)


def test_wrong_type_is_named(dataset_dir: Path) -> None:
    df = pd.read_parquet(dataset_dir / "users.parquet")
    df["user_id"] = "abc"
    df.to_parquet(dataset_dir / "users.parquet")
    with pytest.raises(DatasetError, match=r"column 'user_id' has type string"):
        load_dataset(dataset_dir)


def test_dangling_reference_is_reported(dataset_dir: Path) -> None:
    df = pd.read_parquet(dataset_dir / "impressions.parquet")
    df.loc[0, "post_id"] = 999_999
    df.to_parquet(dataset_dir / "impressions.parquet")
    with pytest.raises(DatasetError, match=r"'post_id' refers to 1 unknown id"):
        load_dataset(dataset_dir)


def test_csv_with_only_required_columns_is_accepted(tmp_path: Path) -> None:
    d = tmp_path / "csv"
    d.mkdir()
    (d / "users.csv").write_text("user_id\n1\n2\n")
    (d / "follows.csv").write_text("follower_id,followee_id\n1,2\n")
    (d / "posts.csv").write_text("post_id,author_id,topic,created_at\n"
                                 "10,2,music,2026-01-01T10:00:00\n")
    (d / "impressions.csv").write_text("user_id,post_id,timestamp,click\n"
                                       "1,10,2026-01-02T10:00:00,true\n")
    ds = load_dataset(d)
    assert ds.posts.loc[0, "modality"] == "text"
    assert bool(ds.impressions.loc[0, "click"]) is True
    assert not ds.has_harm_labels


def test_an_extra_label_column_round_trips_after_the_six(tmp_path: Path) -> None:
    from training.data.schema import HARM_LABELS

    ds = generate(SMALL, seed=1, extra_labels=("self_harm",))
    back = load_dataset(save_dataset(ds, tmp_path / "ds"))
    assert back.harm_labels == (*HARM_LABELS, "self_harm")
    assert back.posts["label_self_harm"].dtype == bool
    assert back.posts["label_self_harm"].sum() == ds.posts["label_self_harm"].sum()
    # a column that is not a label name is not a label (and not kept)
    posts = pd.read_parquet(tmp_path / "ds" / "posts.parquet")
    posts["label_Bad Name"] = True
    posts.to_parquet(tmp_path / "ds" / "posts.parquet")
    assert load_dataset(tmp_path / "ds").harm_labels == (*HARM_LABELS, "self_harm")
