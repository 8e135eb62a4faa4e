"""Scores of training.metrics against small hand-computed cases."""

import json

import numpy as np
import pytest

from training.metrics import (equitable_threat_scores, negative_water_fraction,
                              nca_step_errors, profile_error_split, regression_scores,
                              trigger_scores, water_budget_residual)


def test_regression_perfect_prediction():
    truth = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 40.0]])
    s = regression_scores(truth, truth.copy())
    assert s["per_level"]["r2"] == [1.0, 1.0]
    assert s["per_level"]["rmse"] == [0.0, 0.0]
    assert s["pooled"] == {"r2": 1.0, "rmse": 0.0, "mae": 0.0, "bias": 0.0, "n": 6}


def test_regression_constant_offset():
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    s = regression_scores(truth, truth - 0.5)
    assert len(s["per_level"]["r2"]) == 1
    assert s["pooled"]["bias"] == pytest.approx(-0.5)
    assert s["pooled"]["rmse"] == pytest.approx(0.5)
    assert s["pooled"]["mae"] == pytest.approx(0.5)
    # SSE = 4 * 0.25 = 1, SST = 2.25 + 0.25 + 0.25 + 2.25 = 5
    assert s["pooled"]["r2"] == pytest.approx(0.8)
    assert s["per_level"]["r2"][0] == pytest.approx(0.8)


def test_regression_hand_computed_levels_and_mask():
    truth = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0], [100.0, -50.0]])
    pred = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 1.0], [0.0, 0.0]])
    s = regression_scores(truth, pred, mask=np.array([True, True, True, False]))
    # level 0: errors (1, 0, -1), SST = 8 -> r2 = 1 - 2/8
    assert s["per_level"]["r2"][0] == pytest.approx(0.75)
    assert s["per_level"]["rmse"][0] == pytest.approx(np.sqrt(2 / 3))
    assert s["per_level"]["mae"][0] == pytest.approx(2 / 3)
    assert s["per_level"]["bias"][0] == pytest.approx(0.0)
    # level 1: constant truth -> SST = 0 -> r2 undefined; errors (0, 1, 0)
    assert s["per_level"]["r2"][1] is None
    assert s["per_level"]["bias"][1] == pytest.approx(1 / 3)
    # pooled over the 6 selected values: mean 1.5, SST = 2.25 + 4 * 0.25 + 6.25 = 9.5, SSE = 3
    assert s["pooled"]["n"] == 6
    assert s["pooled"]["r2"] == pytest.approx(1 - 3 / 9.5)
    assert s["pooled"]["bias"] == pytest.approx(1 / 6)
    json.dumps(s)  # JSON-serialisable, None included


def test_regression_float32_input_computed_in_float64():
    truth = np.full(4, 1e8, dtype=np.float32)
    truth[0] += 8
    s = regression_scores(truth, truth + np.float32(8))
    assert s["pooled"]["bias"] == 8.0
    assert s["pooled"]["r2"] == pytest.approx(1 - 4 * 64 / 48)


def test_regression_rejects_bad_shapes():
    with pytest.raises(ValueError):
        regression_scores(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        regression_scores(np.zeros((3, 2)), np.zeros((3, 2)), mask=np.ones(2, bool))


def test_trigger_scores_known_confusion():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    s = trigger_scores(truth, pred)  # tp 3, fn 1, fp 2, tn 4
    assert s["confusion"] == [[4, 2], [1, 3]]
    assert all(type(v) is int for row in s["confusion"] for v in row)
    assert s["accuracy"] == pytest.approx(0.7)
    assert s["precision"] == pytest.approx(0.6)
    assert s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert s["csi"] == pytest.approx(0.5)


def test_trigger_scores_no_events_gives_none():
    s = trigger_scores(np.zeros(5, bool), np.zeros(5, bool))
    assert s["accuracy"] == 1.0
    assert s["precision"] is None and s["recall"] is None
    assert s["f1"] is None and s["csi"] is None
    assert s["confusion"] == [[5, 0], [0, 0]]


def test_ets_perfect_forecast_is_one():
    rain = np.array([0.0, 0.2, 1.5, 3.0, 0.0, 7.0])
    ets = equitable_threat_scores(rain, rain, [0.1, 1.0, 5.0])
    assert ets == {"0.1": 1.0, "1.0": 1.0, "5.0": 1.0}


def test_ets_hand_computed_and_undefined():
    truth = np.array([2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    pred = np.array([2.0, 2.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    ets = equitable_threat_scores(truth, pred, [1.0, 10.0])
    # hits 2, misses 2, false alarms 2, N 10: random = 4 * 4 / 10 = 1.6
    assert ets["1.0"] == pytest.approx((2 - 1.6) / (6 - 1.6))
    assert ets["10.0"] is None  # no event observed or forecast


def test_ets_random_forecast_is_zero():
    truth = np.array([1.0, 1.0, 0.0, 0.0])
    pred = np.array([1.0, 0.0, 1.0, 0.0])
    # hits 1, misses 1, false alarms 1, random = 2 * 2 / 4 = 1
    assert equitable_threat_scores(truth, pred, [0.5])["0.5"] == pytest.approx(0.0)


def test_nca_step_errors():
    truth = np.array([600.0, 1200.0, 1800.0, 300.0])
    pred = np.array([660.0, 1080.0, 1800.0, 300.0 + 60.0 * (1 + 1e-9)])
    s = nca_step_errors(truth, pred, 60.0)  # errors in steps: 1, -2, 0, 1+1e-9
    assert s["n"] == 4
    assert s["mean_abs_steps"] == pytest.approx(1.0)
    assert s["within_one_step_fraction"] == pytest.approx(0.75)
    s = nca_step_errors(truth, pred, np.array([60.0, 120.0, 60.0, 30.0]))  # 1, -1, 0, 2
    assert s["within_one_step_fraction"] == pytest.approx(0.75)
    assert s["mean_abs_steps"] == pytest.approx(1.0)


def test_water_budget_conserving_column_is_zero():
    rho = np.array([[1.0, 0.5], [1.2, 0.8]])
    dz = np.array([[100.0, 200.0], [50.0, 100.0]])
    # column 0: vapour lost 2e-6 * 100 + 1e-6 * 100 = 3e-4 kg m-2 s-1, cloud water gained 1e-4
    tend = {"RQVCUTEN": np.array([[-2e-6, -1e-6], [0.0, 0.0]]),
            "RQCCUTEN": np.array([[1e-6, 0.0], [0.0, 0.0]])}
    pratec = np.array([2e-4, 0.0])
    np.testing.assert_allclose(water_budget_residual(tend, rho, dz, pratec), [0.0, 0.0], atol=1e-18)
    # doubling the rain leaves a residual of minus the extra rain
    np.testing.assert_allclose(water_budget_residual(tend, rho, dz, 2 * pratec), [-2e-4, 0.0])
    with pytest.raises(ValueError):
        water_budget_residual({"RTHCUTEN": np.zeros((2, 2))}, rho, dz, pratec)


def test_negative_water_fraction():
    q = np.array([[1e-3, 1e-4], [1e-3, 1e-4], [0.0, 0.0], [1e-3, 1e-3]])
    tend = np.array([[0.0, -1e-6], [0.0, -1e-6], [1e-9, 0.0], [-1e-6, 0.0]])
    hold = np.array([50.0, 200.0, 600.0, 2000.0])
    # column 0: 1e-4 - 5e-5 >= 0; column 1: 1e-4 - 2e-4 < 0; column 2 unchanged; column 3 < 0
    assert negative_water_fraction(q, tend, hold) == pytest.approx(0.5)
    assert negative_water_fraction(q, tend, 0.0) == 0.0


def test_profile_error_split():
    truth = np.array([[1.0, 2.0, 0.0], [1.0, 1.0, 1.0], [0.0, 3.0, 1.0]])
    top = np.array([2, 3, 3])
    # Amplitude alone: scaling each column back removes all of the error.
    split = profile_error_split(truth, truth * np.array([[2.0], [0.5], [1.0]]), top, top)
    assert split["amplitude_fraction"] == pytest.approx(1.0)
    assert split["cloud_top_off_fraction"] == 0.0
    # Column 0 reaches one level too high (SSE 1; its best factor 5/6 leaves 5/6), column 1 has
    # a wrong shape (SSE 4; its best factor 1/3 leaves 8/3), column 2 is right.
    pred = np.array([[1.0, 2.0, 1.0], [1.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    split = profile_error_split(truth, pred, top, np.array([3, 3, 3]))
    assert split["amplitude_fraction"] == pytest.approx(1 - (5 / 6 + 8 / 3) / 5)
    assert split["cloud_top_off_fraction"] == pytest.approx(1 / 5)
    assert split["n"] == 3
    # Grids of different level counts: the sums run over all of them.
    wide = np.pad(truth, ((0, 0), (0, 2)))
    both = profile_error_split([truth, wide], [pred, np.pad(pred, ((0, 0), (0, 2)))], [top, top],
                               [np.array([3, 3, 3])] * 2)
    assert (both["amplitude_fraction"], both["n"]) == (pytest.approx(split["amplitude_fraction"]), 6)
    # No error (or no column): nothing to split.
    assert profile_error_split(truth, truth, top, top)["amplitude_fraction"] is None
    assert profile_error_split(truth[:0], truth[:0], top[:0], top[:0])["cloud_top_off_fraction"] is None
    with pytest.raises(ValueError):
        profile_error_split(truth[:, 0], truth[:, 0], top, top)
