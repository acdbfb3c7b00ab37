"""Where one batch's GPU time goes, from a ``torch.profiler`` trace: how busy the device was, and which operators
its kernels belong to.

The profiler's own table sums each row's device time, but its rows mix operators with the kernels they launched,
and CUPTI's overhead records (``Command Buffer Full``: the CPU waiting for room in the GPU's queue) are listed with
device time too, so its shares do not say how busy the GPU was. :func:`summarise` reads the events instead:

* ``busy_s``: the union of the intervals of the work the device ran (kernels, copies, sets), overlaps counted once,
  against ``wall_s``, the batch's time from its start to the device's last piece of work (the caller synchronises);
* ``by_category_s``: kernel seconds by the operator that launched them (:data:`CATEGORIES`, by operator name;
  inductor's generated kernels are launched under their own names, ``triton_*``), ``unattributed`` for kernels
  without a launching operator;
* ``overhead_s``: the overhead records, left out of everything else.
"""

from __future__ import annotations

#: Operator categories, in the order they are matched: (category, substrings of the launching operator's name).
CATEGORIES = (
    ("inductor", ("triton_",)),  # first: a fused kernel's name lists the operators it fused
    ("convolution", ("convolution", "conv2d", "conv_")),
    ("attention", ("attention", "sdpa", "flash")),
    ("matmul", ("addmm", "aten::mm", "aten::bmm", "baddbmm", "aten::linear", "matmul", "extern_kernels.mm")),
    ("normalisation", ("norm",)),
    ("copies", ("copy_", "aten::cat", "clone", "contiguous", "aten::to", "_to_copy")),
)
#: Profiler activity types of the work a device runs (libkineto's names); the others are CPU-side or overhead.
DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset", "concurrent_kernel")


def category(operator: str) -> str:
    """The :data:`CATEGORIES` name of an operator (e.g. ``aten::cudnn_convolution`` -> ``convolution``), else
    ``other``."""
    for name, parts in CATEGORIES:
        if any(part in operator for part in parts):
            return name
    return "other"


def union_seconds(intervals) -> float:
    """Length in seconds of the union of ``(start_us, end_us)`` intervals (overlapping ones counted once)."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total / 1e6


def _is_device(event) -> bool:
    return getattr(event.device_type, "name", str(event.device_type)).upper() != "CPU"


def summarise(events, wall_s: float) -> dict:
    """Figures of one profiled batch from ``events`` (``profile.events()``: FunctionEvents; device events carry
    ``activity_type`` and ``time_range`` in microseconds, operator events their launched ``kernels`` with durations
    in microseconds) and the batch's wall time in seconds. Returns seconds (see the module docstring) and
    ``busy_share`` (``busy_s / wall_s``)."""
    work, overhead_us, kernel_us = [], 0.0, 0.0
    for event in events:
        if not _is_device(event):
            continue
        span = (event.time_range.start, event.time_range.end)
        if getattr(event, "activity_type", None) in DEVICE_WORK:
            work.append(span)
            kernel_us += span[1] - span[0]
        else:
            overhead_us += span[1] - span[0]
    by_category = {name: 0.0 for name, _ in CATEGORIES}
    by_category["other"] = 0.0
    attributed_us = 0.0
    for event in events:
        if _is_device(event) or not getattr(event, "kernels", None):
            continue
        seconds = sum(kernel.duration for kernel in event.kernels)
        by_category[category(event.name)] += seconds / 1e6
        attributed_us += seconds
    by_category["unattributed"] = max(0.0, kernel_us - attributed_us) / 1e6
    busy = union_seconds(work)
    return {"wall_s": wall_s, "busy_s": busy, "busy_share": busy / wall_s if wall_s > 0 else 0.0,
            "kernel_s": kernel_us / 1e6, "by_category_s": by_category, "overhead_s": overhead_us / 1e6}


def format_summary(summary: dict) -> str:
    """The summary as a few lines of text (the head of a profile file)."""
    kernel = summary["kernel_s"]
    parts = ", ".join(f"{name} {seconds:.3f} s ({100 * seconds / kernel:.1f}%)"
                      for name, seconds in sorted(summary["by_category_s"].items(), key=lambda item: -item[1])
                      if seconds > 0) if kernel > 0 else "none"
    return (f"batch wall time {summary['wall_s']:.3f} s (under the profiler); device busy {summary['busy_s']:.3f} s "
            f"({100 * summary['busy_share']:.1f}%: the union of its kernels, copies and sets)\n"
            f"device work {kernel:.3f} s by launching operator: {parts}\n"
            f"profiler overhead records (left out above; e.g. Command Buffer Full, the CPU waiting for room in the "
            f"GPU's queue): {summary['overhead_s']:.3f} s\n")
