"""Continuity of the followed face across missed detections: gaps of at most ``MAX_FILLED_GAP`` frames between two
detections get interpolated keypoints and expressions in the scan and are edited like detected frames, so an edited
clip never shows the original face between edited frames; longer gaps pass through untouched.

The detector is wrapped to drop its detections on chosen frames of a clip whose every frame shows the face, so the
test knows exactly which frames were missed and what the face looked like there."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from retarget.jobs.edit import edit_job, read_expression_source
from retarget.faces.models import FaceModels
from retarget.jobs.frames import MAX_FILLED_GAP, scan_clip
from retarget.jobs.options import JobOptions
from retarget.jobs.session import RenderSession
from retarget.testing.media import moving_face_frames, write_clip
from retarget.video.encoding import EncoderSettings
from retarget.video.reader import VideoReader

COUNT = 26
SINGLE = (4, 9)  # one missed frame each, between two detections
PAIR = (12, 13)  # two missed frames in a row
LONG = tuple(range(16, 16 + MAX_FILLED_GAP + 1))  # one frame longer than the longest filled gap
DROPPED = set(SINGLE) | set(PAIR) | set(LONG)


class DroppingDetector:
    """A detector that finds nothing in the frames numbered ``drop`` (its calls counted from 0, one per frame)."""

    def __init__(self, detector, drop):
        self.detector, self.drop, self.calls = detector, set(drop), 0

    def detect(self, image):
        index, self.calls = self.calls, self.calls + 1
        faces = self.detector.detect(image)
        return [] if index in self.drop else faces


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("continuity") / "clip.mp4", moving_face_frames(COUNT),
                      Fraction(25), audio=False)


def scan_with_drops(clip, models_dir, drop):
    faces = FaceModels(models_dir, device="cpu")
    faces._detector = DroppingDetector(faces.detector, drop)
    scan = scan_clip(VideoReader(clip), faces, expressions=True, chunk_size=8, progress=False)
    assert faces._detector.calls == COUNT
    return scan


def lerp(values, before, after, frame):
    weight = (frame - before) / (after - before)
    return (1 - weight) * values[before] + weight * values[after]


def test_scan_fills_short_gaps_by_interpolation_and_leaves_long_ones(clip, cli_models):
    models, _ = cli_models
    full = scan_with_drops(clip, models, ())
    assert full.detected.all() and full.valid.all()
    scan = scan_with_drops(clip, models, DROPPED)

    missed = np.isin(np.arange(COUNT), sorted(DROPPED))
    np.testing.assert_array_equal(scan.detected, ~missed)
    np.testing.assert_array_equal(scan.valid, ~np.isin(np.arange(COUNT), LONG))
    np.testing.assert_array_equal(scan.filled, np.isin(np.arange(COUNT), SINGLE + PAIR))
    # Detected frames keep their measurements; filled ones lie on the line between the neighbouring detections.
    np.testing.assert_allclose(scan.keypoints[~missed], full.keypoints[~missed], atol=1e-4)
    np.testing.assert_allclose(scan.expressions[~missed], full.expressions[~missed], atol=1e-4)
    for frames, before, after in ((SINGLE[:1], 3, 5), (SINGLE[1:], 8, 10), (PAIR, 11, 14)):
        for frame in frames:
            np.testing.assert_allclose(scan.keypoints[frame], lerp(full.keypoints, before, after, frame), atol=1e-4)
            np.testing.assert_allclose(scan.expressions[frame], lerp(full.expressions, before, after, frame),
                                       atol=1e-4)
    # The interpolated keypoints are close to where the face really was (it moves a few pixels per frame).
    assert np.abs(scan.keypoints[list(SINGLE + PAIR)] - full.keypoints[list(SINGLE + PAIR)]).max() < 3.0
    assert not scan.keypoints[list(LONG)].any() and not scan.expressions[list(LONG)].any()
    # The motion track of a scan is valid wherever the scan is.
    np.testing.assert_array_equal(scan.motion().valid, scan.valid)
    smoothed = scan.smoothed_keypoints()
    assert np.isfinite(smoothed).all() and not smoothed[list(LONG)].any()


def face_box(keypoints):
    """Rows and columns around the five keypoints, grown by a fifth of their spread."""
    low, high = keypoints.min(axis=0), keypoints.max(axis=0)
    margin = 0.2 * (high - low)
    (x0, y0), (x1, y1) = np.floor(low - margin).astype(int), np.ceil(high + margin).astype(int)
    return slice(max(y0, 0), y1), slice(max(x0, 0), x1)


def test_edit_renders_short_gaps_and_passes_long_ones_through(clip, cli_models, media, tmp_path):
    models, base = cli_models
    options = JobOptions(models=models, base_model=base, steps=1, guidance=1.0, batch_size=8, chunk_size=8,
                         device="cpu", progress=False, encoder=EncoderSettings(preset="ultrafast"))
    full = scan_with_drops(clip, models, ())
    session = RenderSession(options)
    source = read_expression_source(media["photo"], session)  # before the wrapper: the photo is not a clip frame
    session.faces._detector = DroppingDetector(session.faces.detector, DROPPED)
    output = edit_job(clip, media["photo"], tmp_path / "edited.mp4", options, session=session, source=source)
    assert session.faces._detector.calls == COUNT

    original = np.stack([frame for frame, _, _ in VideoReader(clip).iter_frames()]).astype(np.float32)
    edited = np.stack([frame for frame, _, _ in VideoReader(output).iter_frames()]).astype(np.float32)
    assert edited.shape == original.shape
    boxes = [face_box(points) for points in full.keypoints]
    change = np.array([np.abs(edited[k][boxes[k]] - original[k][boxes[k]]).mean() for k in range(COUNT)])
    # Frame-to-frame jump of the output's face against the mean of its two neighbours.
    jump = np.array([np.abs(edited[k][boxes[k]] - (edited[k - 1][boxes[k]] + edited[k + 1][boxes[k]]) / 2).mean()
                     for k in range(1, COUNT - 1)])
    jump = np.concatenate([[np.nan], jump, [np.nan]])
    detected = sorted(set(range(COUNT)) - DROPPED)
    untouched = change[list(LONG)]
    print("change from the original:", np.round(change, 1))
    print("jump against the neighbours:", np.round(jump, 1))

    # Edited frames differ clearly from the original; the frames of the long gap only by re-encoding.
    assert change[detected].min() > 8 * untouched.max()
    assert untouched.max() < 6.0
    for frame in SINGLE + PAIR:
        # Edited like its neighbours: as far from the original as they are, and no jump back to the original face.
        assert change[frame] > 0.6 * change[detected].min()
        assert jump[frame] < 0.5 * change[frame]


def test_motion_for_a_motion_file_marks_only_detected_frames_valid(clip, cli_models):
    """A motion file records measurements: filled frames keep their interpolated values but count as missing, while
    the track the jobs render from counts them as valid."""
    models, _ = cli_models
    scan = scan_with_drops(clip, models, DROPPED)
    measured, rendered = scan.motion(filled=False), scan.motion()
    np.testing.assert_array_equal(measured.valid, scan.detected)
    np.testing.assert_array_equal(rendered.valid, scan.valid)
    np.testing.assert_array_equal(measured.values, rendered.values)
