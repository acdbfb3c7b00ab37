"""The face models' notes on stderr wait for the job's first output (retarget.held_notes)."""

from __future__ import annotations

import io
import logging

from retarget.held_notes import HeldNotes, ReleasingStream


def _setup():
    out = io.StringIO()
    target = logging.StreamHandler(out)
    target.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    notes = HeldNotes(target)
    return out, notes, ReleasingStream(out, notes)


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_notes_are_written_before_the_first_other_output_in_order():
    out, notes, stream = _setup()
    notes.handle(_record("retarget.faces.detection", logging.INFO, "face detector: MTCNN"))
    notes.handle(_record("retarget.faces.expressions", logging.INFO, "SMIRK crop: keypoints"))
    assert out.getvalue() == ""
    stream.write("faces clip.mp4:   0% 0/8\n")  # a bar's first line
    assert out.getvalue().splitlines() == ["retarget.faces.detection: face detector: MTCNN",
                                           "retarget.faces.expressions: SMIRK crop: keypoints", "faces clip.mp4:   0% 0/8"]
    notes.handle(_record("retarget.faces.detection", logging.INFO, "later note"))  # no longer held
    assert out.getvalue().splitlines()[-1] == "retarget.faces.detection: later note"


def test_another_record_or_a_face_warning_publishes_the_notes_first():
    out, notes, _ = _setup()
    notes.handle(_record("retarget.faces.detection", logging.INFO, "face detector: MTCNN"))
    notes.handle(_record("retarget.faces.tracking", logging.WARNING, "2 faces in the photo"))
    assert out.getvalue().splitlines() == ["retarget.faces.detection: face detector: MTCNN",
                                           "retarget.faces.tracking: 2 faces in the photo"]


def test_dropped_notes_are_never_written():
    out, notes, stream = _setup()
    notes.handle(_record("retarget.faces.detection", logging.INFO, "face detector: MTCNN"))
    notes.drop()
    stream.write("retarget: error: photo.png: no face found in the photo\n")
    notes.publish()
    assert out.getvalue() == "retarget: error: photo.png: no face found in the photo\n"
    assert stream.getvalue() == out.getvalue()  # everything else is the stream's
