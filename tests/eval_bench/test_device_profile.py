"""The profile summary of one batch: device busy time as the union of its work, kernel time by launching operator,
CUPTI overhead records kept apart (synthetic events shaped like torch.profiler's; names from an H200 profile)."""

from collections import namedtuple
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from eval.device_profile import category, format_summary, summarise, union_seconds

Kernel = namedtuple("Kernel", ["name", "device", "duration"])


def _device(name, start, end, activity="kernel"):
    return SimpleNamespace(name=name, device_type=DeviceType.CUDA, activity_type=activity,
                           time_range=SimpleNamespace(start=start, end=end))


def _operator(name, *durations):
    return SimpleNamespace(name=name, device_type=DeviceType.CPU, activity_type="cpu_op",
                           time_range=SimpleNamespace(start=0, end=1),
                           kernels=[Kernel("k", 0, d) for d in durations])


def test_operators_fall_in_their_categories():
    assert category("aten::cudnn_convolution") == "convolution"
    assert category("aten::_cudnn_attention_forward") == "attention"
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert category("aten::addmm") == "matmul" and category("aten::mm") == "matmul"
    assert category("triton_poi_fused_clone_convolution_native_group_norm_silu_123") == "inductor"
    assert category("aten::native_group_norm") == "normalisation"
    assert category("aten::copy_") == "copies" and category("aten::cat") == "copies"
    assert category("aten::add_") == "other"


def test_union_counts_overlaps_once():
    assert union_seconds([]) == 0
    assert union_seconds([(0, 10), (5, 20), (30, 40), (35, 38), (40, 41)]) == pytest.approx(31e-6)
    assert union_seconds([(30, 40), (0, 10)]) == pytest.approx(20e-6)  # any order


def test_summary_of_a_batch():
    events = [
        _device("sm90_xmma_fprop_implicit_gemm", 0, 400_000),
        _device("cudnn_generated_fort_native_sdpa", 400_000, 700_000),
        _device("nvjet_sm90_tst", 650_000, 800_000, "concurrent_kernel"),  # overlaps the one before
        _device("Memcpy DtoH (Device -> Pageable)", 900_000, 950_000, "gpu_memcpy"),
        _device("Command Buffer Full", 0, 500_000, "overhead"),
        _operator("aten::cudnn_convolution", 250_000, 150_000),
        _operator("aten::_cudnn_attention_forward", 300_000),
        _operator("aten::addmm", 150_000),
        _operator("aten::empty"),  # no kernels
    ]
    summary = summarise(events, wall_s=1.0)
    assert summary["busy_s"] == pytest.approx(0.85)  # 0-0.8 s and 0.9-0.95 s
    assert summary["busy_share"] == pytest.approx(0.85)
    assert summary["kernel_s"] == pytest.approx(0.9)  # every piece of work, overlaps included
    assert summary["overhead_s"] == pytest.approx(0.5)
    by = summary["by_category_s"]
    assert by["convolution"] == pytest.approx(0.4) and by["attention"] == pytest.approx(0.3)
    assert by["matmul"] == pytest.approx(0.15)
    assert by["unattributed"] == pytest.approx(0.05)  # the copy had no launching operator here
    assert sum(by.values()) == pytest.approx(summary["kernel_s"])
    text = format_summary(summary)
    assert "device busy 0.850 s (85.0%" in text and "convolution 0.400 s (44.4%)" in text
    assert "Command Buffer Full" in text and "0.500 s" in text
    assert summarise([], 0.0)["busy_share"] == 0.0 and "none" in format_summary(summarise([], 1.0))
