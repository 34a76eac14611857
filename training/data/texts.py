"""Labelled texts for the moderation models alone: a CSV or parquet file of text and labels.

No users, follows or impressions: `funnel train moderation --texts FILE` reads this. The file
needs a text column (default `text`) and, for each harm label, either a column of its own or a
mapping (`--label NAME=SPEC`) from the file's columns:

    hate=is_hate          a column of 0/1, true/false, or a fraction in [0, 1]
    hate=class:0          1 where the column `class` equals 0 (several: `abuse=class:0,1`)
    hate=hate_votes/count the ratio of two columns, e.g. annotators' votes: a soft label

With no `--label`, every column named after a harm label (`hate`, `label_hate`, ...) is one.
A soft label trains as it is (BCE takes targets in [0, 1]); evaluation uses it rounded (a
majority of votes).

The split is the file's (`--split-column`, values train / val / test) or a seeded split
stratified on the combination of labels, so that a rare label has its share in each part.

Pure logic over pandas: no torch, no Ray. Every error names the file and the column or option.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from funnel.contracts.errors import DatasetError
from funnel.contracts.names import HARM_LABELS

LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test"}
MAX_TEXT_CHARS = 20_000


@dataclass(frozen=True)
class LabelSpec:
    """How one harm label is read off the file's columns."""

    name: str
    column: str
    values: tuple[str, ...] = ()  # `column:v1,v2` -> 1 where the column is one of them
    denominator: str | None = None  # `column/denominator` -> a ratio (soft)

    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.denominator is None else (self.column, self.denominator)

    def describe(self) -> str:
        if self.values:
            return f"{self.name}={self.column}:{','.join(self.values)}"
        if self.denominator:
            return f"{self.name}={self.column}/{self.denominator}"
        return f"{self.name}={self.column}"


def parse_label_spec(text: str) -> LabelSpec:
    """`NAME=COLUMN`, `NAME=COLUMN:V1,V2` or `NAME=COLUMN/DENOMINATOR`; DatasetError naming
    `--label` otherwise."""
    name, sep, rest = text.partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not rest:
        raise DatasetError(f"--label {text!r}: expected NAME=COLUMN, NAME=COLUMN:VALUE[,VALUE] "
                           "or NAME=COLUMN/DENOMINATOR")
    if not LABEL_NAME.match(name):
        raise DatasetError(f"--label {text!r}: label name {name!r} must be lower case letters, "
                           "digits and _ (e.g. hate, self_harm)")
    if ":" in rest:
        column, _, values = rest.partition(":")
        vals = tuple(v.strip() for v in values.split(",") if v.strip())
        if not column.strip() or not vals:
            raise DatasetError(f"--label {text!r}: COLUMN:VALUE needs a column and a value")
        return LabelSpec(name=name, column=column.strip(), values=vals)
    if "/" in rest:
        column, _, denominator = rest.partition("/")
        if not column.strip() or not denominator.strip():
            raise DatasetError(f"--label {text!r}: COLUMN/DENOMINATOR needs both columns")
        return LabelSpec(name=name, column=column.strip(), denominator=denominator.strip())
    return LabelSpec(name=name, column=rest)


def default_specs(columns: Sequence[str]) -> list[LabelSpec]:
    """A column per harm label (`hate` or `label_hate`, any further `label_<name>` too)."""
    specs: list[LabelSpec] = []
    for c in columns:
        name = c.removeprefix("label_")
        if (c.startswith("label_") and LABEL_NAME.match(name)) or c in HARM_LABELS:
            specs.append(LabelSpec(name=name, column=c))
    return specs


@dataclass(frozen=True)
class LabelledTexts:
    """What the moderation training reads: texts, per-label targets, and the split."""

    source: str
    texts: np.ndarray  # object [N]
    labels: tuple[str, ...]
    targets: np.ndarray  # float32 [N, labels] in [0, 1] (soft where the spec is a ratio)
    split: np.ndarray  # object [N]: train / val / test
    split_source: str  # "file:<column>" or "stratified(seed=…)"
    specs: tuple[LabelSpec, ...]

    @property
    def hard(self) -> np.ndarray:
        return (self.targets >= 0.5).astype(np.float32)

    def part(self, name: str) -> np.ndarray:
        return self.split == name

    def summary(self) -> dict[str, object]:
        """Counts only, never text: safe to print and to record in the bundle."""
        return {"rows": len(self.texts), "labels": list(self.labels),
                "mapping": [s.describe() for s in self.specs], "split": self.split_source,
                **{f"{p}_rows": int(self.part(p).sum()) for p in SPLITS},
                "positives": {lb: int(self.hard[:, j].sum())
                              for j, lb in enumerate(self.labels)}}


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"--texts {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",",
                               keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DatasetError(f"{path}: cannot be read as {suffix[1:]}: "
                           f"{str(e).splitlines()[0]}") from e
    raise DatasetError(f"--texts {path}: expected a .csv, .tsv or .parquet file")


def _str(col: Any) -> Any:
    """A column as strings (pandas-stubs type `.astype(str)` oddly)."""
    return col.astype(str)


def _target(df: pd.DataFrame, spec: LabelSpec, path: Path) -> np.ndarray:
    where = f"{path}: column {spec.column!r} (label {spec.name})"
    col = df[spec.column]
    if spec.values:
        return _str(col).str.strip().isin(spec.values).to_numpy(np.float32)
    if col.dtype == bool:
        return col.to_numpy(np.float32)
    if col.dtype == object:
        low = _str(col).str.strip().str.lower()
        mapped = low.map({"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "1": 1.0,
                          "0": 0.0})
        if mapped.isna().any():
            bad = int(np.flatnonzero(mapped.isna().to_numpy())[0])
            raise DatasetError(f"{where}: row {bad + 2} is not 0/1 or true/false")
        return mapped.to_numpy(np.float32)
    num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    if spec.denominator is not None:
        den = pd.to_numeric(df[spec.denominator], errors="coerce").to_numpy(np.float64)
        if np.isnan(den).any() or (den <= 0).any():
            bad = int(np.flatnonzero(np.isnan(den) | (den <= 0))[0])
            raise DatasetError(f"{path}: column {spec.denominator!r} (denominator of label "
                               f"{spec.name}) must be > 0; row {bad + 2} is not")
        num = num / den
    if np.isnan(num).any():
        bad = int(np.flatnonzero(np.isnan(num))[0])
        raise DatasetError(f"{where}: row {bad + 2} is empty or not a number")
    if ((num < 0) | (num > 1)).any():
        bad = int(np.flatnonzero((num < 0) | (num > 1))[0])
        raise DatasetError(f"{where}: row {bad + 2} is outside [0, 1]"
                           + ("" if spec.denominator else
                              "; for classes use NAME=COLUMN:VALUE"))
    return num.astype(np.float32)


def stratified_split(strata: np.ndarray, *, val_fraction: float, test_fraction: float,
                     seed: int) -> np.ndarray:
    """train / val / test per row, each stratum split in the same proportions (a stratum of
    fewer than 3 rows goes to train). Seeded: the same rows and seed give the same split."""
    rng = np.random.default_rng(seed)
    out = np.full(len(strata), "train", dtype=object)
    for key in sorted(set(strata.tolist())):
        idx = np.flatnonzero(strata == key)
        if len(idx) < 3:
            continue
        idx = rng.permutation(idx)
        n_test = max(1, round(len(idx) * test_fraction))
        n_val = max(1, round(len(idx) * val_fraction))
        out[idx[:n_test]] = "test"
        out[idx[n_test:n_test + n_val]] = "val"
    return out


def load_labelled_texts(path: Path, *, text_column: str = "text",
                        label_specs: Sequence[str] = (), split_column: str | None = None,
                        val_fraction: float = 0.1, test_fraction: float = 0.2,
                        seed: int = 0, sample_rows: int | None = None) -> LabelledTexts:
    """Read and check a labelled-text file; DatasetError (exit 2) naming the first problem.
    `sample_rows`: a seeded sample of the rows (in memory), for a quick run."""
    df = read_table(path)
    if sample_rows is not None and sample_rows < len(df):
        df = df.sample(sample_rows, random_state=seed).reset_index(drop=True)
    if df.empty:
        raise DatasetError(f"{path}: has no rows")
    if text_column not in df.columns:
        raise DatasetError(f"{path}: no text column {text_column!r} (--text-column); columns: "
                           f"{list(map(str, df.columns))}")
    specs = ([parse_label_spec(s) for s in label_specs] if label_specs
             else default_specs([str(c) for c in df.columns if c != text_column]))
    if not specs:
        raise DatasetError(f"{path}: no label columns (a column per harm label, e.g. 'hate' "
                           f"or 'label_hate', or --label NAME=COLUMN); columns: "
                           f"{list(map(str, df.columns))}")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"--label: {dup[0]!r} is mapped twice")
    for s in specs:
        for c in s.columns():
            if c not in df.columns:
                raise DatasetError(f"{path}: no column {c!r} (--label {s.describe()}); "
                                   f"columns: {list(map(str, df.columns))}")
    text = df[text_column]
    empty = text.isna() | (_str(text).str.strip() == "")
    if empty.any():
        raise DatasetError(f"{path}: column {text_column!r} row {int(np.flatnonzero(empty)[0]) + 2}"
                           " is empty")
    long = _str(text).str.len() > MAX_TEXT_CHARS
    if long.any():
        raise DatasetError(f"{path}: column {text_column!r} row {int(np.flatnonzero(long)[0]) + 2}"
                           f" is longer than {MAX_TEXT_CHARS} characters")
    targets = np.stack([_target(df, s, path) for s in specs], axis=1)
    hard = targets >= 0.5
    for j, s in enumerate(specs):
        if not hard[:, j].any():
            raise DatasetError(f"{path}: label {s.name} ({s.describe()}) has no positive row; "
                               "a model cannot learn it")
    if split_column is not None:
        if split_column not in df.columns:
            raise DatasetError(f"{path}: no split column {split_column!r} (--split-column)")
        raw = _str(df[split_column]).str.strip().str.lower()
        split = raw.map(_SPLIT_ALIASES)
        if split.isna().any():
            bad = int(np.flatnonzero(split.isna().to_numpy())[0])
            raise DatasetError(f"{path}: column {split_column!r} row {bad + 2} is "
                               f"{df[split_column].iloc[bad]!r}; expected train, val or test")
        split_arr = split.to_numpy(object)
        for p in SPLITS:
            if not (split_arr == p).any():
                raise DatasetError(f"{path}: column {split_column!r} has no {p!r} row")
        source = f"file:{split_column}"
    else:
        strata = np.array(["".join("1" if v else "0" for v in row) for row in hard],
                          dtype=object)
        split_arr = stratified_split(strata, val_fraction=val_fraction,
                                     test_fraction=test_fraction, seed=seed)
        source = f"stratified(seed={seed}, val={val_fraction}, test={test_fraction})"
    return LabelledTexts(source=str(path), texts=text.astype(str).to_numpy(object),
                         labels=tuple(names), targets=targets.astype(np.float32),
                         split=split_arr, split_source=source, specs=tuple(specs))
