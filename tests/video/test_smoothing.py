"""Smoothing filters against independent computations, and their defaults on a noisy synthetic track."""

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.signal import savgol_filter

from retarget.motion import MotionTrack, kalman_rts, one_euro, savitzky_golay, smooth


def one_euro_reference(x, t, min_cutoff, beta, d_cutoff):
    """Straightforward scalar One-Euro (Casiez et al.), one dimension, all frames valid."""
    def alpha(dt, cutoff):
        tau = 1 / (2 * math.pi * cutoff)
        return 1 / (1 + tau / dt)

    out = [x[0]]
    prev, dprev = x[0], 0.0
    for i in range(1, len(x)):
        dt = t[i] - t[i - 1]
        dx = (x[i] - prev) / dt
        dhat = alpha(dt, d_cutoff) * dx + (1 - alpha(dt, d_cutoff)) * dprev
        a = alpha(dt, min_cutoff + beta * abs(dhat))
        prev = a * x[i] + (1 - a) * prev
        dprev = dhat
        out.append(prev)
    return np.array(out)


def test_one_euro_matches_scalar_reference_per_dimension_and_skips_invalid():
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.02, 0.05, 80))
    x = np.cumsum(rng.normal(size=(80, 3)), axis=0)
    got = one_euro(x, None, t, min_cutoff=1.2, beta=0.7, d_cutoff=1.5)
    for d in range(3):
        np.testing.assert_allclose(got[:, d], one_euro_reference(x[:, d], t, 1.2, 0.7, 1.5), rtol=1e-5, atol=1e-5)
    valid = np.ones(80, bool)
    valid[[10, 11, 40]] = False
    gapped = one_euro(x, valid, t, min_cutoff=1.2, beta=0.7, d_cutoff=1.5)
    keep = np.flatnonzero(valid)
    np.testing.assert_allclose(gapped[keep, 0], one_euro_reference(x[keep, 0], t[keep], 1.2, 0.7, 1.5),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(gapped[~valid], x[~valid].astype(np.float32))


def test_savgol_matches_scipy_and_bridges_invalid_frames():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 4))
    got = savitzky_golay(x, rate=30.0)
    np.testing.assert_allclose(got, savgol_filter(x, 9, 2, axis=0, mode="interp"), rtol=1e-5, atol=1e-5)
    got25 = savitzky_golay(x, rate=25.0, window_seconds=0.5, polyorder=3)
    np.testing.assert_allclose(got25, savgol_filter(x, 13, 3, axis=0, mode="interp"), rtol=1e-5, atol=1e-5)
    valid = np.ones(60, bool)
    valid[20:23] = False
    bridged = x.copy()
    for k in (20, 21, 22):
        w = (k - 19) / 4
        bridged[k] = (1 - w) * x[19] + w * x[23]
    got = savitzky_golay(x, valid, rate=30.0)
    expected = savgol_filter(bridged, 9, 2, axis=0, mode="interp")
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[~valid], x[~valid].astype(np.float32))


def test_kalman_rts_follows_constant_velocity_exactly():
    t = np.arange(50) / 30
    x = np.stack([2.0 + 1.5 * t, -0.5 * t], axis=1)
    np.testing.assert_allclose(kalman_rts(x, None, t), x, atol=1e-4)
    valid = np.ones(50, bool)
    valid[10:20] = False  # a gap is bridged along the line
    out = kalman_rts(x, valid, t)
    np.testing.assert_allclose(out[valid], x[valid], atol=1e-4)


def batch_map_estimate(z, valid, t, cutoff_hz):
    """The RTS smoother's mean is the MAP path of the linear-Gaussian model: solve it as one linear system."""
    n = len(z)
    dt_typical = np.median(np.diff(t))
    q = (2 * math.pi * cutoff_hz) ** 4 * dt_typical
    r = 1.0
    first = int(np.flatnonzero(valid)[0])
    a = np.zeros((2 * n, 2 * n))
    b = np.zeros(2 * n)
    p0_inv = np.diag([1 / (1e6 * r), 1 / (1e6 * q)])
    a[0:2, 0:2] += p0_inv
    b[0:2] += p0_inv @ np.array([z[first], 0.0])
    for k in range(1, n):
        dt = t[k] - t[k - 1]
        f = np.array([[1, dt], [0, 1]])
        q_inv = np.linalg.inv(q * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]]))
        m = np.zeros((2, 2 * n))  # residual s_k - F s_{k-1} = M s
        m[:, 2 * k : 2 * k + 2] = np.eye(2)
        m[:, 2 * k - 2 : 2 * k] = -f
        a += m.T @ q_inv @ m
    for k in np.flatnonzero(valid):
        a[2 * k, 2 * k] += 1 / r
        b[2 * k] += z[k] / r
    return np.linalg.solve(a, b)[0::2]


def test_kalman_rts_equals_batch_least_squares_with_gaps_and_uneven_times():
    rng = np.random.default_rng(4)
    t = np.cumsum(rng.uniform(0.025, 0.045, 40))
    z = np.sin(2 * np.pi * 1.3 * t) + rng.normal(0, 0.1, 40)
    valid = np.ones(40, bool)
    valid[[0, 1, 15, 16, 17, 39]] = False
    got = kalman_rts(z[:, None], valid, t, cutoff_hz=4.0)[:, 0]
    expected = batch_map_estimate(z, valid, t, 4.0)
    np.testing.assert_allclose(got[valid], expected[valid], atol=2e-4)


def speechlike(n=900, fps=30000 / 1001, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    parts = [(0.3, 0.0, 1.0), (0.8, 1.0, 0.6), (1.5, 2.0, 0.4), (3.0, 0.5, 0.2)]
    clean = np.stack([a * np.sin(2 * np.pi * f * t + p) for f, p, a in parts], axis=1)
    return t, clean, clean + rng.normal(0, 0.1, clean.shape)


def lag_frames(reference, estimate, max_lag=5):
    """Integer shift (frames) maximising the cross-correlation of the two (mean-removed) tracks."""
    a = reference[30:-30] - reference[30:-30].mean(0)
    b = estimate[30:-30] - estimate[30:-30].mean(0)
    shifts = range(-max_lag, max_lag + 1)
    scores = [np.sum(np.roll(b, -s, axis=0)[max_lag:-max_lag] * a[max_lag:-max_lag]) for s in shifts]
    return list(shifts)[int(np.argmax(scores))]


@pytest.mark.parametrize(("method", "max_rms_ratio", "max_lag"),
                         [("kalman", 0.6, 0), ("savgol", 0.6, 0), ("one_euro", 0.9, 1)])
def test_defaults_remove_jitter_without_lag(method, max_rms_ratio, max_lag):
    t, clean, noisy = speechlike()
    track = MotionTrack(np.pad(noisy, ((0, 0), (0, 51))), np.ones(len(t), bool), t, rate=30000 / 1001)
    out = smooth(track, method).values[:, :4].astype(np.float64)
    inner = slice(15, -15)
    rms_in = np.sqrt(np.mean((noisy[inner] - clean[inner]) ** 2))
    rms_out = np.sqrt(np.mean((out[inner] - clean[inner]) ** 2))
    assert rms_out < max_rms_ratio * rms_in, (rms_in, rms_out)
    assert abs(lag_frames(clean, out)) <= max_lag


def test_smooth_keeps_invalid_frames_and_rejects_unknown_method():
    t, _, noisy = speechlike(60)
    valid = np.ones(60, bool)
    valid[30:33] = False
    track = MotionTrack(np.pad(noisy, ((0, 0), (0, 51))), valid, t, rate=30000 / 1001)
    for method in ("kalman", "savgol", "one_euro"):
        out = smooth(track, method)
        np.testing.assert_array_equal(out.valid, valid)
        np.testing.assert_array_equal(out.values[~valid], track.values[~valid])
    assert smooth(track, "none") is track
    with pytest.raises(ValueError, match="unknown smoothing"):
        smooth(track, "median")


@pytest.mark.parametrize("method", ["kalman", "savgol", "one_euro"])
def test_smooth_treats_each_shot_on_its_own(method):
    """A jump at a cut stays a jump (each shot is constant, so smoothing leaves it as it is), and each shot is
    smoothed as the track of that shot alone would be."""
    t, _, noisy = speechlike(60)
    steps = np.where(np.arange(60) < 25, 0.0, 1.0)[:, None] * np.ones((1, 55))
    cuts = np.arange(60) == 25
    step_track = MotionTrack(steps, np.ones(60, bool), t, rate=30000 / 1001, cuts=cuts)
    np.testing.assert_allclose(smooth(step_track, method).values, steps, atol=1e-5)
    assert np.abs(smooth(replace(step_track, cuts=None), method).values - steps).max() > 0.05  # without the cut

    track = MotionTrack(np.pad(noisy, ((0, 0), (0, 51))) + steps, np.ones(60, bool), t, rate=30000 / 1001, cuts=cuts)
    smoothed = smooth(track, method).values
    for lo, hi in ((0, 25), (25, 60)):
        alone = MotionTrack(track.values[lo:hi], track.valid[lo:hi], t[lo:hi], rate=30000 / 1001)
        np.testing.assert_allclose(smoothed[lo:hi], smooth(alone, method).values, atol=1e-6)
