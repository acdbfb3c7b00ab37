"""Gap filling, resampling across frame rates, relative mode, gains and clamps, curve plots."""

from fractions import Fraction

import numpy as np
import pytest

from retarget.motion import (
    MotionTrack,
    PartGains,
    apply_gains,
    clamp_published,
    fill_gaps,
    neutral_frame,
    plot_curves,
    relative_motion,
    resample,
)


def ramp_track(n=30, rate=Fraction(30), valid=None):
    """values[k, d] = time * (d + 1): linear in time in every dimension."""
    times = np.arange(n) / float(rate)
    values = times[:, None] * np.arange(1, 56)[None, :]
    return MotionTrack(values, np.ones(n, bool) if valid is None else valid, times, rate)


def test_fill_gaps_interpolates_inside_holds_ends_and_respects_max_gap():
    valid = np.ones(30, bool)
    valid[[0, 1]] = False  # leading: held
    valid[5:8] = False  # 3 frames = 0.1 s: interpolated
    valid[12:24] = False  # 12 frames = 0.4 s: too long for max 0.2 s
    valid[28:] = False  # trailing: held
    track = ramp_track(valid=valid)
    filled = fill_gaps(track, max_gap_seconds=0.2)
    expected_valid = np.ones(30, bool)
    expected_valid[12:24] = False
    np.testing.assert_array_equal(filled.valid, expected_valid)
    np.testing.assert_allclose(filled.values[5:8], ramp_track().values[5:8], rtol=1e-5)  # exact on a ramp
    np.testing.assert_array_equal(filled.values[:2], np.repeat(track.values[2:3], 2, axis=0))
    np.testing.assert_array_equal(filled.values[28:], np.repeat(track.values[27:28], 2, axis=0))
    np.testing.assert_array_equal(filled.values[12:24], track.values[12:24])
    assert fill_gaps(track, max_gap_seconds=float("inf")).valid.all()


def test_resample_between_rates_by_time():
    source = ramp_track(50, Fraction(25))  # 2 s at 25 fps
    rate = Fraction(30000, 1001)
    times = np.arange(60) / float(rate)  # about 2 s at 29.97 fps
    linear = resample(source, times, rate)
    assert linear.rate == rate and len(linear) == 60
    inside = times < source.times[-1] + 1 / 25  # the last frame shows until the end of its frame time
    np.testing.assert_array_equal(linear.valid, inside)
    np.testing.assert_allclose(linear.values[inside][:, 0], np.minimum(times[inside], source.times[-1]), atol=1e-6)
    nearest = resample(source, times, rate, method="nearest")
    picked = np.rint(times * 25).clip(0, 49) / 25
    np.testing.assert_allclose(nearest.values[inside][:, 0], picked[inside], atol=1e-6)
    valid = np.ones(50, bool)
    valid[20] = False
    gapped = resample(ramp_track(50, Fraction(25), valid), times, rate)
    t_bad = (times > 19 / 25) & (times < 21 / 25)  # between an invalid frame and its neighbours
    assert not gapped.valid[t_bad].any() and gapped.valid[~t_bad & inside].all()


def test_a_short_source_covers_its_last_frame_to_its_end():
    """3 frames at 6 fps last 0.5 s: times up to the end of the last frame hold it; from 0.5 s on, nothing."""
    source = ramp_track(3, Fraction(6))
    times = np.array([0.0, 0.2, 0.3, 0.4333, 0.4667, 0.5, 0.6])
    for method in ("linear", "nearest"):
        out = resample(source, times, Fraction(30), method=method)
        assert out.valid.tolist() == [True, True, True, True, True, False, False], method
        np.testing.assert_allclose(out.values[3:5, 0], 2 / 6, atol=1e-6)


def test_neutral_frame_choice_and_relative_mode():
    rng = np.random.default_rng(5)
    values = rng.normal(0, 1.0, (20, 55)).astype(np.float32)
    values[:, 50:52] = 0.5
    values[:, 52] = 0.1
    values[:, 53:] = 0.0
    values[7, :50] = 0.01  # the calmest face
    valid = np.ones(20, bool)
    valid[3] = False
    values[3] = 0.0  # lowest energy but invalid: never chosen
    driving = MotionTrack.constant_rate(values, valid, 25)
    assert neutral_frame(driving) == 7
    median_index = neutral_frame(driving, "median")
    med = np.median(values[valid], axis=0)
    distances = np.where(valid, np.sum((values - med) ** 2, axis=1), np.inf)
    assert median_index == int(np.argmin(distances))

    target = np.zeros(55, np.float32)
    target[50:52] = 0.2
    out = relative_motion(driving, target)
    expected = clamp_published(target + (values - values[7]))
    np.testing.assert_allclose(out.values, expected, atol=1e-6)
    np.testing.assert_array_equal(out.valid, valid)
    np.testing.assert_allclose(out.values[7], target, atol=1e-6)  # neutral frame maps to the target's face
    per_frame = np.tile(target, (20, 1))
    per_frame[:, 0] = np.arange(20)
    out2 = relative_motion(driving, per_frame, neutral=0, gains=PartGains(expression=0.5, eyelid=0.0, jaw=2.0))
    delta = values - values[0]
    np.testing.assert_allclose(out2.values[:, :50], per_frame[:, :50] + 0.5 * delta[:, :50], atol=1e-5)
    np.testing.assert_allclose(out2.values[:, 50:52], 0.2, atol=1e-6)
    with pytest.raises(ValueError, match="not a valid frame"):
        relative_motion(driving, target, neutral=3)
    with pytest.raises(ValueError, match="target expression"):
        relative_motion(driving, np.zeros(54))


def test_gains_and_published_ranges():
    values = np.zeros((3, 55), np.float32)
    values[:, :50] = 1.0
    values[:, 50:52] = [[0.6, 0.9], [-0.1, 0.2], [0.4, 0.5]]
    values[:, 52:55] = [[0.3, 0.15, -0.15], [-0.2, 0.3, -0.3], [0.0, 0.0, 0.1]]
    track = MotionTrack.constant_rate(values, None, 30)
    out = apply_gains(track, PartGains(expression=1.5, eyelid=2.0, jaw=2.0)).values
    np.testing.assert_allclose(out[:, :50], 1.5)
    np.testing.assert_allclose(out[:, 50:52], [[1.0, 1.0], [0.0, 0.4], [0.8, 1.0]])
    np.testing.assert_allclose(out[:, 52], [0.6, 0.0, 0.0])
    np.testing.assert_allclose(out[:, 53:55], [[0.2, -0.2], [0.2, -0.2], [0.0, 0.2]])
    assert PartGains().vector().tolist() == [1.0] * 55


def test_rendered_expressions_keep_the_published_ranges_at_gain_one():
    """Smoothing can overshoot a bound (a jaw opening just under 0): the rendered values are clamped even when no
    gain is set, and values inside the ranges pass unchanged."""
    from retarget.jobs.expressions import rendered_expressions
    from retarget.jobs.options import JobOptions
    from retarget.motion.smoothing import smooth

    values = np.zeros((40, 55), np.float32)
    values[:, :50] = np.linspace(-3, 3, 40)[:, None]  # expression: no bounds
    values[20:, 52] = 0.3  # the jaw opens in one step: a smoother rings around the step
    values[:, 50] = np.r_[np.zeros(20), np.ones(20)]
    track = smooth(MotionTrack.constant_rate(values, None, 30), "savgol")
    assert track.values[:, 52].min() < 0 and track.values[:, 50].max() > 1  # the overshoot this is about
    out = rendered_expressions(track, JobOptions(models="models", device="cpu"))
    np.testing.assert_array_equal(out, np.clip(track.values, clamp_published(np.full(55, -np.inf)),
                                               clamp_published(np.full(55, np.inf))))
    assert out[:, 52].min() == 0.0 and out[:, 50].max() == 1.0
    np.testing.assert_array_equal(out[:, :50], track.values[:, :50])


def test_plot_writes_png_with_chosen_channels(tmp_path):
    valid = np.ones(60, bool)
    valid[20:25] = False
    track = ramp_track(60, Fraction(30000, 1001), valid)
    smoothed = fill_gaps(track)
    default = plot_curves(track, tmp_path / "curves.png", smoothed)
    assert default.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    small = plot_curves(track, tmp_path / "two.png", channels=["exp04", 54])
    from PIL import Image

    assert Image.open(default).size[1] > Image.open(small).size[1]  # 5 panels vs 2
    with pytest.raises(ValueError, match="unknown channel"):
        plot_curves(track, tmp_path / "bad.png", channels=["mouth"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "two.png"]


def test_plot_job_draws_the_smoothed_curves_clamped_as_rendered(tmp_path, monkeypatch):
    """``retarget plot --smooth savgol`` of a jaw opening from 0: the smoother dips below 0 before the step, the
    render clamps it, and the plotted curve is the clamped one (the raw curve is drawn as it is)."""
    from retarget.jobs import plot as plot_module
    from retarget.motion import save_motion
    from retarget.motion.smoothing import smooth

    values = np.zeros((40, 55), np.float32)
    values[:, 52] = np.r_[np.zeros(20), np.full(20, 0.2)]
    motion = save_motion(MotionTrack.constant_rate(values, None, 30), tmp_path / "m.npz")
    drawn = {}
    monkeypatch.setattr(plot_module, "plot_curves", lambda raw, output, smoothed, channels, title:
                        drawn.update(raw=raw, smoothed=smoothed, title=title) or output)
    plot_module.plot_job(motion, tmp_path / "c.png", "savgol", ["jaw0"])
    assert drawn["title"] == "m.npz: raw and smoothed (savgol, as rendered)"
    assert smooth(MotionTrack.constant_rate(values, None, 30), "savgol").values[:, 52].min() < 0  # the overshoot
    np.testing.assert_array_equal(drawn["smoothed"].values,
                                  clamp_published(smooth(MotionTrack.constant_rate(values, None, 30), "savgol").values))
    assert drawn["smoothed"].values[:, 52].min() == 0.0
    np.testing.assert_array_equal(drawn["raw"].values, values)
    # frames without a face: the smoothed curve goes through them as a render fills them (the raw one does not)
    valid = np.ones(40, bool)
    valid[10:15] = False
    gapped = save_motion(MotionTrack.constant_rate(values, valid, 30), tmp_path / "g.npz")
    plot_module.plot_job(gapped, tmp_path / "g.png", "kalman", ["jaw0"])
    from retarget.jobs.common import prepared_motion

    expected = prepared_motion(MotionTrack.constant_rate(values, valid, 30), "kalman")
    assert drawn["smoothed"].valid.all() and not drawn["raw"].valid[10:15].any()
    np.testing.assert_array_equal(drawn["smoothed"].values, clamp_published(expected.values))
    plot_module.plot_job(gapped, tmp_path / "n.png", "none", ["jaw0"])
    assert drawn["smoothed"] is None and drawn["title"] == "g.npz: raw"


def test_plot_draws_a_line_at_each_cut():
    from dataclasses import replace

    from retarget.motion.plot import curves_figure

    track = ramp_track(60, Fraction(30), np.ones(60, bool))
    cuts = np.zeros(60, bool)
    cuts[[20, 45]] = True
    figure = curves_figure(replace(track, cuts=cuts), channels=["jaw0", "exp00"])
    for ax in figure.axes:
        lines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert sorted(float(line.get_xdata()[0]) for line in lines) == [20 / 30, 45 / 30]
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert labels.count("cut") == 1
    assert not [line for line in curves_figure(track, channels=["jaw0"]).axes[0].get_lines()
                if line.get_linestyle() == "--"]
