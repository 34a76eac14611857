"""Ranker calibration: the calibration error on hand-made cases, each method fixing a known
miscalibration on held-out synthetic scores, the choice rule, and the JSON round trip."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from training.calibration import (
    Calibration,
    Calibrator,
    Identity,
    Isotonic,
    Temperature,
    calibration_report,
    calibrator_from_json,
    expected_calibration_error,
    fit_calibration,
    fit_isotonic,
    fit_temperature,
    reliability,
    sigmoid,
)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits and outcomes drawn from them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, n)
    return z, (rng.random(n) < sigmoid(z)).astype(np.float64)


def _sqrt_logits(z: np.ndarray) -> np.ndarray:
    """Logits of sqrt(p): every probability is inflated."""
    q = np.sqrt(sigmoid(z))
    return np.log(q / (1.0 - q))


def test_ece_and_reliability_on_a_hand_made_case() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.05, 0.05, 0.05, 0.95, 1.0])  # p = 1 lands in the last bin
    r = reliability(y, p, n_bins=15)
    assert r.count[0] == 4 and r.count[14] == 2 and sum(r.count) == 6
    assert r.mean_pred[0] == pytest.approx(0.05) and r.observed[0] == pytest.approx(0.25)
    assert r.mean_pred[14] == pytest.approx(0.975) and r.observed[14] == pytest.approx(1.0)
    assert r.mean_pred[7] is None and r.observed[7] is None
    # (4 * |0.05 - 0.25| + 2 * |0.975 - 1|) / 6
    assert expected_calibration_error(y, p) == pytest.approx((0.8 + 0.05) / 6)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.5])) == 0.0
    assert r.to_json()["mean_pred"][14] == 0.975


def test_temperature_recovers_the_scale_of_overconfident_logits() -> None:
    z, y = _synthetic(20_000, seed=1)
    t = fit_temperature(2.0 * z, y)
    assert t.t == pytest.approx(2.0, rel=0.08)


@pytest.mark.parametrize(("fit", "distort"), [
    (fit_temperature, "logits_x2"), (fit_isotonic, "logits_x2"), (fit_isotonic, "sqrt_p")])
def test_each_method_lowers_held_out_ece(fit: Callable[[np.ndarray, np.ndarray], Calibrator],
                                         distort: str) -> None:
    """(Temperature scaling cannot undo sqrt(p), a shift rather than a scale: the choice
    rule picks isotonic there, see below.)"""
    def scores(z: np.ndarray) -> np.ndarray:
        return 2.0 * z if distort == "logits_x2" else _sqrt_logits(z)

    z_fit, y_fit = _synthetic(5_000, seed=2)
    z_test, y_test = _synthetic(5_000, seed=3)
    c = fit(scores(z_fit), y_fit)
    before = expected_calibration_error(y_test, sigmoid(scores(z_test)))
    after = expected_calibration_error(y_test, c.probs(scores(z_test)))
    assert before > 0.04
    assert after < before / 2


def test_the_choice_rule_per_task() -> None:
    z, y = _synthetic(5_000, seed=4)
    logits = np.stack([_sqrt_logits(z), 2.0 * z, z, z], axis=1)
    labels = np.stack([y, y, np.zeros_like(y), np.zeros_like(y)], axis=1)
    labels[:3, 3] = 1.0  # three positives: too few for isotonic
    cal, fits = fit_calibration(logits, labels, ("a", "b", "c", "d"))
    assert cal.method("a") == "isotonic"  # temperature cannot undo sqrt(p)
    assert fits[0].cv_log_loss["isotonic"] < fits[0].cv_log_loss["temperature"]
    assert cal.method("b") in ("temperature", "isotonic")
    assert cal.method("c") == "identity" and fits[2].cv_log_loss == {}
    assert cal.method("d") == "temperature" and "only 3" in fits[3].reason
    z_t, y_t = _synthetic(5_000, seed=5)
    test_logits = np.stack([_sqrt_logits(z_t), 2.0 * z_t, z_t, z_t], axis=1)
    report = calibration_report(cal, test_logits, np.stack([y_t] * 4, axis=1), fits)
    for task in ("a", "b"):
        assert report[task]["ece_after"] < report[task]["ece_before"]
        assert report[task]["log_loss_after"] < report[task]["log_loss_before"]
    assert report["c"]["ece_after"] == report["c"]["ece_before"]
    assert sum(report["a"]["reliability_after"]["count"]) == 5_000


def test_isotonic_knots_reproduce_scikit_learn() -> None:
    from sklearn.isotonic import IsotonicRegression

    z, y = _synthetic(2_000, seed=6)
    iso = IsotonicRegression(out_of_bounds="clip").fit(sigmoid(z), y)
    probe = np.linspace(-8, 8, 301)
    assert np.allclose(fit_isotonic(z, y).probs(probe), iso.predict(sigmoid(probe)))


def test_json_round_trip_applies_identically(tmp_path: Path) -> None:
    z, y = _synthetic(3_000, seed=7)
    cal = Calibration(("click", "like", "hide"),
                      (fit_isotonic(z, y), fit_temperature(2 * z, y), Identity()))
    path = cal.save(tmp_path / "models" / "calibration.json")
    back = Calibration.load(path, tasks=("click", "like", "hide"))
    probe = np.stack([np.linspace(-9, 9, 1001)] * 3, axis=1).astype(np.float32)
    assert np.array_equal(back.probs(probe), cal.probs(probe))
    assert json.loads(path.read_text())["tasks"]["like"]["method"] == "temperature"
    # a subset in another order is served in the order asked for
    swapped = Calibration.from_json(cal.to_json(), tasks=("hide", "click"))
    assert np.array_equal(swapped.probs(probe[:, :2]), cal.probs(probe)[:, [2, 0]])


def test_bad_calibration_files_are_refused_naming_the_problem() -> None:
    ok = {"format_version": 1, "tasks": {"click": {"method": "temperature", "t": 1.5}}}
    with pytest.raises(ValueError, match="'platt' is not known"):
        calibrator_from_json({"method": "platt"})
    with pytest.raises(ValueError, match=r"t=-1\.0"):
        calibrator_from_json({"method": "temperature", "t": -1.0})
    with pytest.raises(ValueError, match="non-decreasing"):
        Isotonic(np.array([0.0, 1.0]), np.array([0.9, 0.1]))
    with pytest.raises(ValueError, match="no calibrator for task 'like'"):
        Calibration.from_json(ok, tasks=("click", "like"))
    with pytest.raises(ValueError, match="format_version 7"):
        Calibration.from_json({**ok, "format_version": 7}, tasks=("click",))
    assert Calibration.from_json(ok, tasks=("click",)).calibrators[0] == Temperature(1.5)
