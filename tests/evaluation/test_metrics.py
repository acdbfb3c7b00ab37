"""The metric core against known answers and independent (loop) computations."""

from __future__ import annotations

import numpy as np
import pytest

from retarget.evaluation.metrics import (
    FlickerMeter,
    channel_correlation,
    exp_mse,
    flicker,
    identity_summary,
    jitter,
    jitter_ratio,
)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_exp_mse_parts_and_validity(rng):
    target = rng.normal(size=(20, 55)).astype(np.float32)
    achieved = target.copy()
    achieved[:, 3] += 0.5        # an expression value off by 0.5
    achieved[:, 51] -= 0.2       # an eyelid value off by 0.2
    achieved[:, 54] += 0.1       # a jaw value off by 0.1
    achieved[4] += 100.0         # a frame that is not valid: must not count
    valid = np.ones(20, bool)
    valid[4] = False
    result = exp_mse(achieved, target, valid)
    assert set(result) == {"exp_mse", "expression", "eyelid", "jaw"}
    assert result["exp_mse"] == pytest.approx((0.25 + 0.04 + 0.01) / 55, rel=1e-5)
    assert result["expression"] == pytest.approx(0.25 / 50, rel=1e-5)
    assert result["eyelid"] == pytest.approx(0.04 / 2, rel=1e-5)
    assert result["jaw"] == pytest.approx(0.01 / 3, rel=1e-5)
    assert exp_mse(target, target)["exp_mse"] == 0.0
    assert all(np.isnan(v) for v in exp_mse(achieved, target, np.zeros(20, bool)).values())
    with pytest.raises(ValueError, match=r"\[N, 55\]"):
        exp_mse(achieved[:, :50], target[:, :50])


def test_channel_correlation_against_loop(rng):
    target = rng.normal(size=(30, 55))
    achieved = 2.0 * target + 1.0 + 0.3 * rng.normal(size=(30, 55))
    achieved[:, 10] = -target[:, 10]   # perfectly anti-correlated
    achieved[:, 20] = 3.0              # constant in the output: undefined
    target[:, 30] = -1.0               # constant in the target: undefined
    valid = rng.random(30) > 0.2
    result = channel_correlation(achieved, target, valid)
    assert result.shape == (55,) and result.dtype == np.float32
    for channel in range(55):
        if channel in (20, 30):
            assert np.isnan(result[channel])
            continue
        expected = np.corrcoef(achieved[valid, channel], target[valid, channel])[0, 1]
        assert result[channel] == pytest.approx(expected, abs=1e-5)
    assert result[10] == pytest.approx(-1.0, abs=1e-6)
    assert np.isnan(channel_correlation(achieved, target, np.eye(30, dtype=bool)[0])).all()


def _jitter_loop(values, valid):
    values = np.asarray(values, float).reshape(len(values), -1)
    terms = []
    for t in range(1, len(values) - 1):
        if valid[t - 1] and valid[t] and valid[t + 1]:
            terms.extend(np.abs(values[t + 1] - 2 * values[t] + values[t - 1]))
    return float(np.mean(terms)) if terms else float("nan")


def test_jitter_against_loop_and_known_answer(rng):
    values = rng.normal(size=(40, 6))
    valid = rng.random(40) > 0.25
    assert jitter(values, valid) == pytest.approx(_jitter_loop(values, valid), rel=1e-12)
    # A still or linearly moving signal has no jitter.
    ramp = np.outer(np.arange(40.0), np.linspace(-1, 1, 6))
    assert jitter(ramp) == pytest.approx(0.0, abs=1e-12)
    # +a, -a, +a, ... on one of 6 channels: every second difference there is 4a, elsewhere 0.
    a = 0.05
    shaken = ramp.copy()
    shaken[:, 2] += a * (-1.0) ** np.arange(40)
    assert jitter(shaken) == pytest.approx(4 * a / 6, rel=1e-9)
    assert np.isnan(jitter(values, np.array([True, True, False] * 13 + [True])))
    # A clip against itself: ratio 1; a shaken output against a still driving clip: infinite; both still: 1.
    assert jitter_ratio(values, values, valid) == pytest.approx(1.0)
    still = np.zeros((40, 6))
    shaken_still = still.copy()
    shaken_still[:, 2] += a * (-1.0) ** np.arange(40)
    assert jitter_ratio(shaken_still, still) == float("inf")
    assert jitter_ratio(still, still) == 1.0
    # On a moving clip the ratio rises by the shake's jitter over the clip's own (ramp + sine: smooth motion).
    smooth = ramp + np.sin(np.arange(40.0) / 3.0)[:, None]
    moving_shaken = smooth.copy()
    moving_shaken[:, 2] += a * (-1.0) ** np.arange(40)
    expected = _jitter_loop(moving_shaken, np.ones(40, bool)) / _jitter_loop(smooth, np.ones(40, bool))
    assert jitter_ratio(moving_shaken, smooth) == pytest.approx(expected, rel=1e-9)
    assert jitter_ratio(moving_shaken, smooth) > 1.2


def test_flicker_known_answers(rng):
    still = np.repeat(rng.integers(0, 256, size=(1, 16, 16, 3), dtype=np.uint8), 5, axis=0)
    assert flicker(still) == 0.0
    faces = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    valid = np.array([True, True, False, True, True, True])
    pairs = [(0, 1), (3, 4), (4, 5)]
    expected = np.mean([np.abs(faces[j].astype(float) - faces[i]).mean() for i, j in pairs])
    assert flicker(faces, valid) == pytest.approx(expected, rel=1e-9)
    # A uniform step of 10 grey levels between two frames.
    step = np.stack([np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 110, np.uint8)])
    assert flicker(step) == 10.0
    meter = FlickerMeter()
    assert np.isnan(meter.update(step[0])) and meter.update(step[1]) == 10.0
    assert np.isnan(meter.update(None, False)) and np.isnan(meter.update(step[0]))
    assert meter.value == 10.0
    assert np.isnan(flicker(faces[:1]))


def test_identity_summary():
    cosines = np.array([0.9, 0.8, 0.1, 0.7, 0.6, 0.5])
    valid = np.array([True, True, False, True, True, True])
    summary = identity_summary(cosines, valid)
    kept = cosines[valid]
    assert summary["mean"] == pytest.approx(kept.mean())
    assert summary["p05"] == pytest.approx(np.percentile(kept, 5))
    assert summary["drift"] == pytest.approx(np.mean([0.1, 0.1, 0.1]))
    assert identity_summary(np.full(4, 0.5))["drift"] == 0.0
    assert all(np.isnan(v) for v in identity_summary(cosines, np.zeros(6, bool)).values())
