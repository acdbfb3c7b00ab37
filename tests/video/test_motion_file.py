"""Motion file round trip and strict rejection of anything else."""

import zipfile
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from retarget.errors import InputError
from retarget.motion import MotionTrack, load_motion, save_motion


def sample_track(n=40):
    rng = np.random.default_rng(3)
    valid = np.ones(n, bool)
    valid[[5, 6, 30]] = False
    return MotionTrack.constant_rate(rng.normal(size=(n, 55)), valid, Fraction(30000, 1001),
                                     metadata={"source": "driving.mp4"})


def valid_arrays(track):
    return {
        "format": np.array("retarget-motion"), "version": np.array(1, np.int64), "values": track.values,
        "valid": track.valid, "times": track.times, "rate": np.array([30000, 1001], np.int64),
    }


def test_round_trip_is_exact(tmp_path):
    track = sample_track()
    path = save_motion(track, tmp_path / "m.npz")
    loaded = load_motion(path)
    assert loaded.rate == Fraction(30000, 1001)
    np.testing.assert_array_equal(loaded.values, track.values)
    assert loaded.values.dtype == np.float32 and loaded.values.shape == (40, 55)
    np.testing.assert_array_equal(loaded.valid, track.valid)
    np.testing.assert_array_equal(loaded.times, track.times)
    assert loaded.times[1] == 1001 / 30000
    assert loaded.metadata == {"source": "driving.mp4"}
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(["format", "version", "values", "valid", "times", "rate",
                                                "metadata_keys", "metadata_values"])
        assert all(archive[name].dtype != object for name in archive.files)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def _bad_files(tmp_path):
    track = sample_track()
    files = {}
    files["text"] = tmp_path / "text.npz"
    files["text"].write_text("hello\n")
    files["npy"] = tmp_path / "single.npz"
    np.save(open(files["npy"], "wb"), np.zeros(3))
    files["foreign"] = tmp_path / "foreign.npz"
    np.savez(files["foreign"], weights=np.zeros(3))
    for name, change in {
        "tag": {"format": np.array("something-else")},
        "version": {"version": np.array(7, np.int64)},
        "shape": {"values": np.zeros((40, 54), np.float32)},
        "dtype": {"values": track.values.astype(np.float64)},
        "valid": {"valid": np.ones(39, bool)},
        "times": {"times": track.times[::-1].copy()},
        "rate": {"rate": np.array([30000, 0], np.int64)},
        "nan": {"values": np.full((40, 55), np.nan, np.float32)},
    }.items():
        arrays = valid_arrays(track)
        arrays.update(change)
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], **arrays)
    files["pickle"] = tmp_path / "pickle.npz"
    arrays = valid_arrays(track)
    arrays["values"] = np.array([{"a": 1}], dtype=object)
    np.savez(files["pickle"], **arrays)
    good = save_motion(track, tmp_path / "good.npz")
    files["truncated"] = tmp_path / "truncated.npz"
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["missing"] = tmp_path / "missing.npz"
    return files


def test_junk_foreign_and_corrupt_files_raise_one_line_input_error(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(InputError) as caught:
            load_motion(path)
        message = str(caught.value)
        assert message.startswith(str(path)), name
        assert "\n" not in message, name
        assert "unsafely" not in message, name  # numpy's advice to load a file unsafely is not passed on
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"notes.npz: not a motion file \(not an .npz archive\)$"):
        load_motion(text)


def test_corrupt_member_is_rejected(tmp_path):
    good = save_motion(sample_track(), tmp_path / "good.npz")
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item.filename, data[: len(data) // 3] if item.filename == "values.npy" else data)
    with pytest.raises(InputError, match="broken.npz"):
        load_motion(broken)


def test_cuts_round_trip_and_a_malformed_cuts_array_is_one_line(tmp_path):
    track = sample_track()
    cuts = np.zeros(len(track), bool)
    cuts[[12, 30]] = True
    path = save_motion(replace(track, cuts=cuts), tmp_path / "m.npz")
    np.testing.assert_array_equal(load_motion(path).cuts, cuts)
    assert load_motion(save_motion(track, tmp_path / "plain.npz")).cuts is None
    bad = tmp_path / "bad.npz"
    np.savez(bad, **valid_arrays(track), cuts=np.zeros(len(track), np.int64))
    with pytest.raises(InputError, match=r"'cuts' must be bool \[40\]"):
        load_motion(bad)
