"""The throughput benchmark's own arithmetic: how far two renders are apart, and its argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval.bench_throughput import _to_uint8, compare_outputs, device_name, main, parse_paths


def test_identical_renders_are_zero_apart():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    assert compare_outputs(images, images.copy()) == {"max_abs": 0, "mean_abs": 0.0, "psnr_db": math.inf}


def test_difference_equals_the_closed_form():
    reference = np.full((1, 2, 2, 3), 100, np.uint8)
    candidate = reference.copy()
    candidate[0, 0, 0, 0] = 110  # one value of 12 off by 10
    candidate[0, 1, 1, 2] = 97  # and one by -3
    difference = compare_outputs(candidate, reference)
    mse = (10**2 + 3**2) / 12
    assert difference["max_abs"] == 10
    assert difference["mean_abs"] == round(13 / 12, 4)
    assert difference["psnr_db"] == round(10 * math.log10(255**2 / mse), 2)
    assert compare_outputs(reference, candidate) == difference  # symmetric; no uint8 wrap-around


def test_float_images_round_to_8_bit():
    images = np.array([[[[0.0, 0.5, 1.0]]]], np.float32)
    np.testing.assert_array_equal(_to_uint8(images), [[[[0, 128, 255]]]])
    np.testing.assert_array_equal(_to_uint8(np.array([[[[-0.2, 1.3, 0.498]]]])), [[[[0, 255, 127]]]])
    already = np.array([[[[1, 2, 3]]]], np.uint8)
    assert _to_uint8(already) is already


def test_unknown_end_to_end_order_is_refused():
    with pytest.raises(SystemExit, match="unknown fast"):
        main(["--e2e", "--order", "staged,fast"])


def test_unknown_end_to_end_command_is_refused_before_any_work(monkeypatch):
    from eval import bench_throughput

    monkeypatch.setattr(bench_throughput, "e2e_inputs", lambda *a: pytest.fail("inputs written"))
    for commands, unknown in (("run,extract", "unknown extract"), (" , ", r"unknown \(none\)")):
        with pytest.raises(SystemExit, match=unknown):
            main(["--e2e", "--commands", commands])


@pytest.mark.parametrize("option", ["--frames", "--batch-size", "--steps"])
def test_counts_below_one_are_refused(option, capsys):
    with pytest.raises(SystemExit):
        main([option, "0"])
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err


def test_default_dtype_is_the_jobs(monkeypatch):
    import retarget.pipeline
    from eval import bench_throughput

    seen = []
    monkeypatch.setattr(bench_throughput, "e2e", lambda args: seen.append(args.dtype) or 0)
    assert main(["--e2e", "--device", "cpu"]) == 0
    monkeypatch.setattr(retarget.pipeline, "default_device_dtype",
                        lambda device: (torch.device(device), torch.float16))  # a GPU before Ampere
    assert main(["--e2e", "--device", "cuda:0"]) == 0
    assert main(["--e2e", "--device", "cuda:0", "--dtype", "bf16"]) == 0
    assert seen == ["fp32", "fp16", "bf16"]


def test_unknown_path_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--paths", "batched,fastest"])
    assert "unknown path(s) fastest" in capsys.readouterr().err


def test_compile_modes_are_parsed_and_checked():
    assert parse_paths(" batched, compiled,compiled:reduce-overhead ,") == [
        "batched", "compiled", "compiled:reduce-overhead"]
    with pytest.raises(ValueError, match="unknown mode in compiled:fastest"):
        parse_paths("compiled:fastest")
    with pytest.raises(ValueError, match="unknown mode in batched:max-autotune"):
        parse_paths("batched:max-autotune")
    with pytest.raises(ValueError, match="unknown path"):
        parse_paths("warp:max-autotune")
    assert parse_paths("compiled,compiled-tuned") == ["compiled", "compiled-tuned"]
    assert parse_paths("compiled-vae,compiled-vae:max-autotune-no-cudagraphs") == [
        "compiled-vae", "compiled-vae:max-autotune-no-cudagraphs"]
    with pytest.raises(ValueError, match="unknown mode in compiled-tuned:reduce-overhead"):
        parse_paths("compiled-tuned:reduce-overhead")  # its options and a mode cannot go together in torch.compile


def test_the_device_is_named(monkeypatch):
    import os

    import torch

    cpu = device_name("cpu")
    assert cpu.endswith(f", {len(os.sched_getaffinity(0))} cores") and len(cpu) > len(", 1 cores")
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: asked.append(index) or "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert device_name("cuda:1") == "NVIDIA H100 80GB HBM3" and device_name("cuda") == "NVIDIA H100 80GB HBM3"
    assert asked == [1, 0]  # the given GPU, else the current one


def test_the_cudnn_benchmark_path_renders_the_batched_paths_images(tiny_checkpoint, tmp_path):
    """``--paths cudnn-benchmark`` is the batched path with cuDNN's algorithm search on: the flag is set in its
    process only, and on the CPU (no cuDNN) its images are the batched path's, bit for bit."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    results = {}
    for path in ("batched", "cudnn-benchmark"):
        saved = tmp_path / f"{path}.npy"
        done = subprocess.run(
            [sys.executable, "-m", "eval.bench_throughput", "--path", path, "--models", str(tiny_checkpoint.models_dir),
             "--base-model", str(tiny_checkpoint.base_dir), "--frames", "2", "--batch-size", "2", "--steps", "2",
             "--warmup", "0", "--repeats", "1", "--device", "cpu", "--dtype", "fp32", "--save-output", str(saved)],
            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        results[path] = (json.loads(done.stdout.strip().splitlines()[-1]), np.load(saved))
    assert results["batched"][0]["cudnn_benchmark"] is False and results["cudnn-benchmark"][0]["cudnn_benchmark"] is True
    assert results["cudnn-benchmark"][0]["path"] == "cudnn-benchmark"
    assert results["batched"][1].shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(results["batched"][1], results["cudnn-benchmark"][1])
