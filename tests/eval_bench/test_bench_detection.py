"""The detection benchmark: both settings timed on the same frames, and the faces they find compared."""

from __future__ import annotations

import json

import numpy as np

from eval.bench_detection import main, same_faces
from retarget.faces.detection import Face


def _face(x: float) -> Face:
    return Face(bbox=np.array([x, 0, x + 10, 10], np.float32), keypoints=np.full((5, 2), x, np.float32), score=0.99)


def test_same_faces_compares_boxes_and_keypoints_per_frame():
    a = [[_face(1.0)], [], [_face(2.0), _face(3.0)]]
    assert same_faces(a, [[_face(1.0005)], [], [_face(2.0), _face(3.0)]])
    assert not same_faces(a, [[_face(1.01)], [], [_face(2.0), _face(3.0)]])  # moved by more than 1e-3 px
    assert not same_faces(a, [[_face(1.0)], [], [_face(2.0)]])  # a face missing
    assert not same_faces(a, a[:2])


def test_bench_times_each_setting_on_a_synthetic_clip(capsys):
    assert main(["--frames", "4", "--threads", "1,2", "--repeats", "1"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["bench"] == "detection" and record["detector"] == "mtcnn" and record["frames"] == 4
    assert record["size"] == [512, 512]
    assert [(s["sessions"], s["threads"]) for s in record["settings"]] == [("ours", 1), ("ours", 2)]
    assert all(s["same_faces"] and s["seconds"] > 0 for s in record["settings"])


def test_bench_compares_session_threading_on_the_same_frames(capsys):
    """Both threading settings find the same faces: only the time differs."""
    assert main(["--frames", "3", "--threads", "2", "--sessions", "ours,onnxruntime", "--repeats", "1"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(s["sessions"], s["threads"]) for s in record["settings"]] == [("ours", 2), ("onnxruntime", 2)]
    assert all(s["same_faces"] and s["seconds"] > 0 for s in record["settings"])
