"""The dataset schema: four parquet (or CSV) tables that every source follows.

The synthetic generator, the MovieLens-100K loader and user-supplied data all produce a
directory with these files; `load_dataset` validates a directory against this schema and
names the file and column of the first problem it finds. The schema is documented for users
in docs/data-schema.md; keep the two in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from funnel.contracts import names
from funnel.contracts.errors import DatasetError

HARM_LABELS: tuple[str, ...] = names.HARM_LABELS
ENGAGEMENT_TASKS: tuple[str, ...] = ("click", "like", "comment", "share", "hide")
AGE_BANDS: tuple[str, ...] = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
MODALITIES: tuple[str, ...] = ("text", "image", "video")

_TS = pa.timestamp("ms", tz="UTC")
# A harm label beyond the documented six (a label added to the taxonomy, e.g. self_harm): a
# further `label_<name>` column of the posts table, kept and trained on like the six.
EXTRA_LABEL_COLUMN = re.compile(r"^label_([a-z][a-z0-9_]{0,62})$")

# table name -> (schema, required columns). Optional columns may be absent; they are filled.
TABLES: dict[str, pa.Schema] = {
    "users": pa.schema(
        [
            ("user_id", pa.int64()),
            ("age_band", pa.string()),
            ("country", pa.string()),
            ("language", pa.string()),
            ("account_age_days", pa.int32()),
        ]
    ),
    "follows": pa.schema(
        [
            ("follower_id", pa.int64()),
            ("followee_id", pa.int64()),
        ]
    ),
    "posts": pa.schema(
        [
            ("post_id", pa.int64()),
            ("author_id", pa.int64()),
            ("topic", pa.string()),
            ("modality", pa.string()),
            ("language", pa.string()),
            ("text", pa.string()),
            ("created_at", _TS),
            *[(f"label_{h}", pa.bool_()) for h in HARM_LABELS],
        ]
    ),
    "impressions": pa.schema(
        [
            ("request_id", pa.string()),
            ("user_id", pa.int64()),
            ("post_id", pa.int64()),
            ("position", pa.int32()),
            ("timestamp", _TS),
            *[(e, pa.bool_()) for e in ENGAGEMENT_TASKS],
            ("report", pa.bool_()),
            ("dwell_s", pa.float32()),
        ]
    ),
}

# Columns a user may leave out; they get these defaults.
OPTIONAL_DEFAULTS: dict[str, dict[str, object]] = {
    "users": {"age_band": "25-34", "country": "unknown", "language": "en", "account_age_days": 0},
    "follows": {},
    "posts": {
        "modality": "text",
        "language": "en",
        "text": "",
        **{f"label_{h}": False for h in HARM_LABELS},
    },
    "impressions": {
        "request_id": "",
        "position": 0,
        **{e: False for e in ENGAGEMENT_TASKS if e != "click"},
        "report": False,
        "dwell_s": 0.0,
    },
}

ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("users", "age_band"): AGE_BANDS,
    ("posts", "modality"): MODALITIES,
}


@dataclass(frozen=True)
class Dataset:
    """One dataset in memory, one DataFrame per table, already validated."""

    name: str
    users: pd.DataFrame
    follows: pd.DataFrame
    posts: pd.DataFrame
    impressions: pd.DataFrame

    @property
    def harm_labels(self) -> tuple[str, ...]:
        """The harm labels the posts table carries: the documented six, then any further
        `label_<name>` columns, sorted (the text head's outputs, in this order)."""
        return harm_labels_of(self.posts)

    @property
    def has_harm_labels(self) -> bool:
        cols = [f"label_{h}" for h in self.harm_labels]
        return bool(self.posts[cols].to_numpy().any())

    def table(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def harm_labels_of(posts: pd.DataFrame) -> tuple[str, ...]:
    """The documented harm labels, then the extra `label_<name>` columns of `posts`, sorted."""
    extra = sorted(m.group(1) for c in posts.columns
                   if (m := EXTRA_LABEL_COLUMN.match(str(c))) and m.group(1) not in HARM_LABELS)
    return (*HARM_LABELS, *extra)


def posts_schema(posts_columns: list[str] | tuple[str, ...]) -> pa.Schema:
    """The posts table's schema with the extra harm-label columns `posts_columns` has."""
    schema = TABLES["posts"]
    for c in posts_columns:
        m = EXTRA_LABEL_COLUMN.match(str(c))
        if m and m.group(1) not in HARM_LABELS and c not in schema.names:
            schema = schema.append(pa.field(c, pa.bool_()))
    return schema


def _read_table(directory: Path, name: str) -> tuple[pa.Table, Path]:
    for suffix in (".parquet", ".csv"):
        path = directory / f"{name}{suffix}"
        if path.is_file():
            try:
                if suffix == ".parquet":
                    return pq.read_table(path), path
                return pacsv.read_csv(path), path
            except (pa.ArrowInvalid, OSError) as e:
                raise DatasetError(f"{path}: cannot be read as {suffix[1:]}: {e}") from e
    raise DatasetError(
        f"{directory}: missing table {name!r}; expected {name}.parquet or {name}.csv "
        f"(see docs/data-schema.md)"
    )


def conform(table: pa.Table, name: str, path: Path | str) -> pd.DataFrame:
    """Cast `table` to the schema of `name`, filling optional columns; raise on mismatch."""
    schema = posts_schema(table.column_names) if name == "posts" else TABLES[name]
    defaults = OPTIONAL_DEFAULTS[name]
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                if pa.types.is_timestamp(field.type) and pa.types.is_string(col.type):
                    col = pa.compute.cast(
                        pa.compute.strptime(col, format="%Y-%m-%dT%H:%M:%S", unit="ms"),
                        field.type,
                    )
                elif pa.types.is_timestamp(field.type) and pa.types.is_timestamp(col.type):
                    col = col.cast(pa.timestamp("ms", tz=col.type.tz or "UTC")).cast(field.type)
                else:
                    col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DatasetError(
                    f"{path}: column {field.name!r} has type {table.column(field.name).type}, "
                    f"expected {field.type}: {e}"
                ) from e
            if col.null_count:
                raise DatasetError(
                    f"{path}: column {field.name!r} has {col.null_count} null value(s); "
                    "nulls are not allowed"
                )
            columns[field.name] = col
        elif field.name in defaults:
            columns[field.name] = pa.array([defaults[field.name]] * table.num_rows, field.type)
        else:
            raise DatasetError(
                f"{path}: required column {field.name!r} is missing "
                f"(has: {', '.join(table.column_names) or 'none'})"
            )
    df = pa.table(columns).to_pandas()
    for (tname, col_name), allowed in ENUMS.items():
        if tname == name:
            bad = sorted(set(df[col_name].unique()) - set(allowed))
            if bad:
                raise DatasetError(
                    f"{path}: column {col_name!r} has value(s) {bad[:5]}; allowed: {list(allowed)}"
                )
    return df


def _check_references(ds: Dataset, directory: Path) -> None:
    users = set(ds.users["user_id"])
    posts = set(ds.posts["post_id"])
    if ds.users["user_id"].duplicated().any():
        raise DatasetError(f"{directory}/users: column 'user_id' has duplicate ids")
    if ds.posts["post_id"].duplicated().any():
        raise DatasetError(f"{directory}/posts: column 'post_id' has duplicate ids")
    for table, col, known in (
        ("impressions", "user_id", users),
        ("impressions", "post_id", posts),
        ("follows", "follower_id", users),
        ("follows", "followee_id", users),
    ):
        unknown = set(ds.table(table)[col].unique()) - known
        if unknown:
            raise DatasetError(
                f"{directory}/{table}: column {col!r} refers to {len(unknown)} unknown id(s), "
                f"e.g. {sorted(unknown)[:3]}"
            )
    if ds.impressions.empty:
        raise DatasetError(f"{directory}/impressions: the table is empty; training needs rows")


def load_dataset(directory: str | Path) -> Dataset:
    """Read and validate a dataset directory. Raises DatasetError naming file and column."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: dataset directory does not exist")
    frames = {}
    for name in TABLES:
        table, path = _read_table(directory, name)
        frames[name] = conform(table, name, path)
    ds = Dataset(name=directory.name, **frames)
    _check_references(ds, directory)
    return ds


def save_dataset(ds: Dataset, directory: str | Path) -> Path:
    """Write `ds` as parquet files in the documented schema."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in TABLES.items():
        df = ds.table(name)
        if name == "posts":
            schema = posts_schema(list(df.columns))
        table = pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema,
                                     preserve_index=False)
        pq.write_table(table, directory / f"{name}.parquet", compression="zstd")
    return directory
