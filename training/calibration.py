"""Calibrating the ranker's task heads: per task, a map from the head's logit to a
probability that matches observed rates, fitted on a split the ranker was not trained on.

Two strategies, chosen per task:

- temperature scaling: p = sigmoid(logit / t), one parameter fitted by minimising log loss;
  it keeps the head's ranking and fixes over- or under-confidence;
- isotonic regression: a monotone, piecewise-linear map of sigmoid(logit), stored as its
  knots and applied with `np.interp` (clipped at the ends). It fixes any monotone
  distortion but needs events to fit.

Choice rule (`fit_calibration`), per task on the fitting split: a task without both
outcomes keeps the identity; one with fewer than `min_events` positives or negatives gets
temperature scaling (isotonic would memorise a handful of events); otherwise the method
with the lower `folds`-fold cross-validated log loss wins and is refitted on the whole
split. Evaluation (`calibration_report`) is on another split: expected calibration error
over equal-width bins and a reliability table, before and after.

The bundle stores a `Calibration` as JSON (`models/calibration.json`); serving applies it
to the ranker's logits. Pure numpy (scipy and scikit-learn only while fitting).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

CALIBRATION_FILE = "models/calibration.json"
FORMAT_VERSION = 1
N_BINS = 15
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] inside log loss only


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


# ---- calibrators ---------------------------------------------------------------------------
class Calibrator(Protocol):
    """Maps one head's logits [n] to calibrated probabilities [n] (float64)."""

    @property
    def method(self) -> str: ...

    def probs(self, logits: np.ndarray) -> np.ndarray: ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Identity:
    """sigmoid(logit), unchanged: a task whose fitting split lacks positives or negatives."""

    method: ClassVar[str] = "identity"

    def probs(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method}


@dataclass(frozen=True)
class Temperature:
    """sigmoid(logit / t): t > 1 softens an over-confident head, t < 1 sharpens it."""

    t: float
    method: ClassVar[str] = "temperature"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t) and self.t > 0):
            raise ValueError(f"temperature t={self.t!r}: must be a finite number > 0")

    def probs(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.t)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "t": self.t}


@dataclass(frozen=True, eq=False)
class Isotonic:
    """np.interp(sigmoid(logit), x, y): the knots of a fitted isotonic regression, linear
    between knots and constant beyond the first and last (scikit-learn's
    `out_of_bounds="clip"`), so the bundle needs no pickle to reproduce it."""

    x: np.ndarray
    y: np.ndarray
    method: ClassVar[str] = "isotonic"

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x, np.float64), np.asarray(self.y, np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
            raise ValueError(f"isotonic knots: x has shape {x.shape} and y {y.shape}; "
                             "need two equal-length, non-empty lists")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("isotonic knots: x and y must be finite numbers")
        if (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
            raise ValueError("isotonic knots: x and y must be non-decreasing")
        if y[0] < 0 or y[-1] > 1:
            raise ValueError(f"isotonic knots: y spans [{y[0]!r}, {y[-1]!r}]; "
                             "allowed is within [0, 1]")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        return np.interp(sigmoid(logits), self.x, self.y)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "x": self.x.tolist(), "y": self.y.tolist()}


def _identity_from(d: dict[str, Any]) -> Calibrator:
    return Identity()


def _temperature_from(d: dict[str, Any]) -> Calibrator:
    return Temperature(float(d["t"]))


def _isotonic_from(d: dict[str, Any]) -> Calibrator:
    return Isotonic(np.asarray(d["x"], np.float64), np.asarray(d["y"], np.float64))


CALIBRATORS: dict[str, Callable[[dict[str, Any]], Calibrator]] = {
    "identity": _identity_from, "temperature": _temperature_from, "isotonic": _isotonic_from}


def calibrator_from_json(d: dict[str, Any]) -> Calibrator:
    method = d.get("method") if isinstance(d, dict) else None
    if method not in CALIBRATORS:
        raise ValueError(f"calibrator method {method!r} is not known; allowed: "
                         f"{', '.join(CALIBRATORS)}")
    try:
        return CALIBRATORS[str(method)](d)
    except (KeyError, TypeError) as e:
        raise ValueError(f"calibrator {d!r}: missing or malformed field ({e})") from e


# ---- the per-task calibration of one ranker -------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """One calibrator per task head, in the ranker's output order."""

    tasks: tuple[str, ...]
    calibrators: tuple[Calibrator, ...]

    def __post_init__(self) -> None:
        if len(self.tasks) != len(self.calibrators):
            raise ValueError(f"calibration: {len(self.tasks)} tasks but "
                             f"{len(self.calibrators)} calibrators")

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities [n, tasks] (float32) from the ranker's logits."""
        z = np.asarray(logits)
        if z.ndim != 2 or z.shape[1] != len(self.tasks):
            raise ValueError(f"logits of shape {z.shape}: expected [n, {len(self.tasks)}]")
        out = np.empty(z.shape, dtype=np.float32)
        for j, c in enumerate(self.calibrators):
            out[:, j] = c.probs(z[:, j])
        return out

    def method(self, task: str) -> str:
        return self.calibrators[self.tasks.index(task)].method

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION,
                "tasks": {t: c.to_json() for t, c in zip(self.tasks, self.calibrators,
                                                         strict=True)}}

    @classmethod
    def from_json(cls, obj: Any, *, tasks: Sequence[str]) -> Calibration:
        """Calibrators for `tasks`, in that order; every task must be present."""
        if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION:
            got = obj.get("format_version") if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"calibration format_version {got!r} is not supported; "
                             f"this Funnel reads {FORMAT_VERSION}")
        per_task = obj.get("tasks")
        if not isinstance(per_task, dict):
            raise ValueError("calibration has no 'tasks' mapping")
        missing = [t for t in tasks if t not in per_task]
        if missing:
            raise ValueError(f"calibration has no calibrator for task {missing[0]!r}; it has "
                             f"{sorted(per_task)}")
        return cls(tuple(tasks), tuple(calibrator_from_json(per_task[t]) for t in tasks))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: Path, *, tasks: Sequence[str]) -> Calibration:
        try:
            obj = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable calibration: {e}") from e
        return cls.from_json(obj, tasks=tasks)


# ---- calibration error -----------------------------------------------------------------------
@dataclass(frozen=True)
class Reliability:
    """Per equal-width probability bin over [0, 1]: rows, mean predicted probability and
    observed positive rate (None for an empty bin)."""

    count: tuple[int, ...]
    mean_pred: tuple[float | None, ...]
    observed: tuple[float | None, ...]

    @property
    def ece(self) -> float:
        """Expected calibration error: |mean predicted - observed| per bin, weighted by the
        bin's share of rows."""
        n = sum(self.count)
        if n == 0:
            return 0.0
        return float(sum(c * abs(p - o) for c, p, o in
                         zip(self.count, self.mean_pred, self.observed, strict=True)
                         if c and p is not None and o is not None) / n)

    def to_json(self, *, digits: int = 4) -> dict[str, list[Any]]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, digits)

        return {"count": list(self.count), "mean_pred": [r(v) for v in self.mean_pred],
                "observed": [r(v) for v in self.observed]}


def reliability(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = N_BINS) -> Reliability:
    """Bin i holds p in [i/n_bins, (i+1)/n_bins); p = 1 falls in the last bin."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"labels of shape {y.shape} and probs of shape {p.shape} differ")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return Reliability(
        count=tuple(int(c) for c in count),
        mean_pred=tuple(float(s / c) if c else None for s, c in zip(sum_p, count, strict=True)),
        observed=tuple(float(s / c) if c else None for s, c in zip(sum_y, count, strict=True)))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, *,
                               n_bins: int = N_BINS) -> float:
    return reliability(labels, probs, n_bins=n_bins).ece


# ---- fitting ---------------------------------------------------------------------------------
def fit_temperature(logits: np.ndarray, labels: np.ndarray, *,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> Temperature:
    """The t in `bounds` minimising the log loss of sigmoid(logit / t) (a 1-d bounded search
    over log t; the loss is convex in 1/t)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def loss(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + e^s) - y s: the log loss of sigmoid(s), stable for large |s|
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    res = minimize_scalar(loss, bounds=(math.log(bounds[0]), math.log(bounds[1])),
                          method="bounded", options={"xatol": 1e-5})
    return Temperature(float(math.exp(res.x)))


def fit_isotonic(logits: np.ndarray, labels: np.ndarray) -> Isotonic:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(sigmoid(logits), np.asarray(labels, dtype=np.float64))
    return Isotonic(np.asarray(iso.X_thresholds_, np.float64),
                    np.asarray(iso.y_thresholds_, np.float64))


FITTERS: dict[str, Callable[[np.ndarray, np.ndarray], Calibrator]] = {
    "temperature": fit_temperature, "isotonic": fit_isotonic}


@dataclass(frozen=True)
class TaskFit:
    """What `fit_calibration` chose for one task, and why."""

    task: str
    calibrator: Calibrator
    reason: str
    cv_log_loss: dict[str, float]


def _cv_log_loss(logits: np.ndarray, labels: np.ndarray, fit: Callable[..., Calibrator], *,
                 folds: int, seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold

    losses = np.zeros(len(labels))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(logits, labels):
        c = fit(logits[tr], labels[tr])
        p = np.clip(c.probs(logits[te]), _EPS, 1 - _EPS)
        losses[te] = -(labels[te] * np.log(p) + (1 - labels[te]) * np.log(1 - p))
    return float(losses.mean())


def fit_calibration(logits: np.ndarray, labels: np.ndarray, tasks: Sequence[str], *,
                    folds: int = 5, min_events: int = 10, seed: int = 0
                    ) -> tuple[Calibration, list[TaskFit]]:
    """Per task, the calibrator chosen by the rule in the module docstring, fitted on
    (`logits`, `labels`) [n, tasks]: a split the ranker was not trained on."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.shape != y.shape or z.ndim != 2 or z.shape[1] != len(tasks):
        raise ValueError(f"logits {z.shape} and labels {y.shape}: expected both "
                         f"[n, {len(tasks)}]")
    fits: list[TaskFit] = []
    for j, task in enumerate(tasks):
        zj, yj = z[:, j], y[:, j]
        pos = int(yj.sum())
        neg = len(yj) - pos
        if pos == 0 or neg == 0:
            fits.append(TaskFit(task, Identity(), f"{pos} positives / {neg} negatives", {}))
            continue
        if min(pos, neg) < max(min_events, folds):
            fits.append(TaskFit(task, fit_temperature(zj, yj),
                                f"only {min(pos, neg)} of the rarer outcome", {}))
            continue
        cv = {name: _cv_log_loss(zj, yj, fit, folds=folds, seed=seed)
              for name, fit in FITTERS.items()}
        best = min(cv, key=lambda k: cv[k])
        fits.append(TaskFit(task, FITTERS[best](zj, yj), f"lower {folds}-fold log loss", cv))
    return Calibration(tuple(tasks), tuple(f.calibrator for f in fits)), fits


def calibration_report(calibration: Calibration, logits: np.ndarray, labels: np.ndarray,
                       fits: Sequence[TaskFit] = (), *, n_bins: int = N_BINS
                       ) -> dict[str, dict[str, Any]]:
    """Per task on held-out (`logits`, `labels`): ECE, log loss and reliability tables
    before (sigmoid of the logit) and after calibration, with the method and why."""
    raw = sigmoid(logits)
    cal = calibration.probs(logits)
    y = np.asarray(labels, dtype=np.float64)
    by_task = {f.task: f for f in fits}
    out: dict[str, dict[str, Any]] = {}
    for j, task in enumerate(calibration.tasks):
        before = reliability(y[:, j], raw[:, j], n_bins=n_bins)
        after = reliability(y[:, j], cal[:, j], n_bins=n_bins)
        f = by_task.get(task)
        out[task] = {
            "method": calibration.calibrators[j].method,
            "ece_before": round(before.ece, 5), "ece_after": round(after.ece, 5),
            "log_loss_before": round(log_loss(y[:, j], raw[:, j]), 5),
            "log_loss_after": round(log_loss(y[:, j], cal[:, j]), 5),
            "positives": int(y[:, j].sum()), "rows": len(y),
            "reliability_before": before.to_json(), "reliability_after": after.to_json(),
            **({"chosen_by": f.reason,
                "cv_log_loss": {k: round(v, 5) for k, v in f.cv_log_loss.items()}}
               if f is not None else {}),
        }
    return out
