"""Smoothing filters for expression tracks (they remove per-frame jitter of the expression estimates).

All filters take values ``[N, D]`` (any D, normally 55), the per-frame validity ``[N]`` and the times ``[N]`` in
seconds, work on every dimension at once, and return float32 ``[N, D]``. Invalid frames are never used as
measurements; their output values are the input values unchanged (fill them first with
:func:`retarget.motion.gaps.fill_gaps` if they should be smoothed too).

- :func:`kalman_rts` (default of :func:`smooth`): constant-velocity Kalman filter plus Rauch-Tung-Striebel
  smoother, zero phase (no lag), uses the real timestamps (variable rate, gaps). Its frequency response is
  ``1 / (1 + (f / cutoff_hz)^4)``; default ``cutoff_hz=5`` (half gain at 5 Hz, 0.7 at 4 Hz, the fast end of
  speech movements; frame-to-frame jitter at 30 fps lies mostly above it).
- :func:`savitzky_golay`: local polynomial fit, zero phase; default window 0.3 s (9 frames at 30 fps), order 2
  (half gain near 5.5 Hz at 30 fps).
- :func:`one_euro`: causal (usable live), adaptive low-pass: little smoothing during fast motion, strong at rest;
  defaults ``min_cutoff=2`` Hz, ``beta=5`` (per unit/second of speed), ``d_cutoff=1`` Hz. Being causal it
  lags a little (under one frame at 30 fps on expression-like motion) and removes less jitter than the others.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.signal import savgol_filter

from retarget.motion.track import MotionTrack

Method = Literal["kalman", "savgol", "one_euro", "none"]


def _prepare(values: np.ndarray, valid: np.ndarray | None, times: np.ndarray | None, rate: float | None):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n = values.shape[0]
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, dtype=bool)
    if times is None:
        if rate is None:
            raise ValueError("give times or rate")
        times = np.arange(n, dtype=np.float64) / rate
    times = np.asarray(times, dtype=np.float64)
    if valid.shape != (n,) or times.shape != (n,):
        raise ValueError(f"valid and times must have shape ({n},)")
    return values, valid, times


def one_euro(
    values: np.ndarray,
    valid: np.ndarray | None = None,
    times: np.ndarray | None = None,
    *,
    rate: float | None = None,
    min_cutoff: float = 2.0,
    beta: float = 5.0,
    d_cutoff: float = 1.0,
) -> np.ndarray:
    """One-Euro filter (Casiez et al. 2012), causal, per dimension.

    Cutoff (Hz) at each step: ``min_cutoff + beta * |filtered speed|`` (speed in units per second, itself
    low-passed at ``d_cutoff`` Hz). ``times`` in seconds (or ``rate`` in frames per second for uniform frames).
    """
    x, valid, times = _prepare(values, valid, times, rate)
    out = x.copy()
    previous = None
    speed = np.zeros(x.shape[1])
    t_previous = 0.0
    for i in np.flatnonzero(valid):
        if previous is None:
            previous = x[i].copy()
        else:
            dt = times[i] - t_previous
            a_d = _alpha(dt, d_cutoff)
            speed = a_d * (x[i] - previous) / dt + (1.0 - a_d) * speed
            a = _alpha(dt, min_cutoff + beta * np.abs(speed))
            previous = a * x[i] + (1.0 - a) * previous
        out[i] = previous
        t_previous = times[i]
    return out.astype(np.float32)


def _alpha(dt: float, cutoff):
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


def savitzky_golay(
    values: np.ndarray,
    valid: np.ndarray | None = None,
    times: np.ndarray | None = None,
    *,
    rate: float | None = None,
    window_seconds: float = 0.3,
    polyorder: int = 2,
) -> np.ndarray:
    """Savitzky-Golay filter (``scipy.signal.savgol_filter``, ``mode="interp"`` at the ends), zero phase.

    The window is ``window_seconds`` times the frame rate (from ``rate`` or the median frame interval), rounded
    to an odd frame count. Invalid frames are bridged by linear interpolation while filtering. Frames are assumed
    evenly spaced (true for constant-rate video).
    """
    x, valid, times = _prepare(values, valid, times, rate)
    n = x.shape[0]
    if not valid.any():
        return x.astype(np.float32)
    fps = rate if rate is not None else (1.0 / float(np.median(np.diff(times))) if n > 1 else 1.0)
    window = max(polyorder + 2, int(round(window_seconds * fps)))
    window += 1 - window % 2
    if window > n:
        window = n if n % 2 else n - 1
    if window <= polyorder:
        return x.astype(np.float32)
    bridged = _bridge(x, valid)
    smoothed = savgol_filter(bridged, window, polyorder, axis=0, mode="interp")
    out = np.where(valid[:, None], smoothed, x)
    return out.astype(np.float32)


def _bridge(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``x`` with invalid rows replaced by linear interpolation between valid rows (held at the ends)."""
    if valid.all():
        return x
    index = np.arange(x.shape[0])
    known = np.flatnonzero(valid)
    return np.stack([np.interp(index, known, x[known, d]) for d in range(x.shape[1])], axis=1)


def kalman_rts(
    values: np.ndarray,
    valid: np.ndarray | None = None,
    times: np.ndarray | None = None,
    *,
    rate: float | None = None,
    cutoff_hz: float = 5.0,
) -> np.ndarray:
    """Constant-velocity Kalman filter + RTS smoother, every dimension independently (same model).

    Model per dimension: state (position, velocity), white-acceleration process noise of spectral density
    ``q = (2 pi cutoff_hz)^4 * dt`` (dt = median frame interval) and unit measurement variance; only the ratio
    matters for the smoothed mean, and for evenly spaced frames the smoother's gain at frequency f is
    ``1 / (1 + (f / cutoff_hz)^4)``.
    Uses the real time between frames; invalid frames are predicted, not measured.
    """
    z, valid, times = _prepare(values, valid, times, rate)
    n, d = z.shape
    if n == 0 or not valid.any():
        return z.astype(np.float32)
    # A measurement of variance r every dt seconds is white noise of density r * dt; the smoother's gain is
    # q / (q + r * dt * (2 pi f)^4), which is one half at f = cutoff_hz for this q.
    dt_typical = float(np.median(np.diff(times))) if n > 1 else 1.0
    r = 1.0
    q = (2.0 * math.pi * cutoff_hz) ** 4 * r * dt_typical
    first = int(np.flatnonzero(valid)[0])
    mean_f = np.zeros((n, 2, d))
    cov_f = np.zeros((n, 2, 2))
    mean_p = np.zeros((n, 2, d))
    cov_p = np.zeros((n, 2, 2))
    transition = np.zeros((n, 2, 2))
    mean = np.stack([z[first], np.zeros(d)])
    cov = np.diag([1e6 * r, 1e6 * q])
    for k in range(n):
        if k > 0:
            dt = times[k] - times[k - 1]
            f = np.array([[1.0, dt], [0.0, 1.0]])
            noise = q * np.array([[dt**3 / 3.0, dt**2 / 2.0], [dt**2 / 2.0, dt]])
            mean = f @ mean
            cov = f @ cov @ f.T + noise
            transition[k] = f
        mean_p[k], cov_p[k] = mean, cov
        if valid[k]:
            gain = cov[:, 0] / (cov[0, 0] + r)
            mean = mean + gain[:, None] * (z[k] - mean[0])[None, :]
            cov = cov - np.outer(gain, cov[0])
        mean_f[k], cov_f[k] = mean, cov
    smoothed = mean_f[-1].copy()
    out = np.empty((n, d))
    out[-1] = smoothed[0]
    for k in range(n - 2, -1, -1):
        c = cov_f[k] @ transition[k + 1].T @ np.linalg.inv(cov_p[k + 1])
        smoothed = mean_f[k] + c @ (smoothed - mean_p[k + 1])
        out[k] = smoothed[0]
    return np.where(valid[:, None], out, z).astype(np.float32)


def smooth(track: MotionTrack, method: Method = "kalman", **params) -> MotionTrack:
    """``track`` with its values smoothed by ``method`` (``kalman``, ``savgol``, ``one_euro`` or ``none``), each
    shot on its own (see :attr:`MotionTrack.cuts`); ``params`` go to the filter (e.g. ``cutoff_hz=4.0``)."""
    filters = {"kalman": kalman_rts, "savgol": savitzky_golay, "one_euro": one_euro}
    if method == "none":
        return track
    if method not in filters:
        raise ValueError(f"unknown smoothing method {method!r}; choose one of kalman, savgol, one_euro, none")
    extra = {"rate": float(track.rate)} if method == "savgol" else {}
    values = track.values.copy()
    for start, stop in track.shots():
        if track.valid[start:stop].any():
            values[start:stop] = filters[method](track.values[start:stop], track.valid[start:stop],
                                                 track.times[start:stop], **extra, **params)
    return track.with_values(values)
