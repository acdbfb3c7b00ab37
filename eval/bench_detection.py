"""Face detection on many frames: one image at a time against several at once, in one run.

    python -m eval.bench_detection [CLIP] [--frames 96] [--threads 1,4] [--sessions ours,onnxruntime]
        [--repeats 3] [--models DIR]

Decodes the first ``--frames`` frames of CLIP (default: a synthetic 512x512 clip of a moving face), then times
:meth:`~retarget.faces.detection.Detector.detect_many` over them with each of ``--threads`` (1 = one image after
another on the calling thread; the default of the command line is :func:`~retarget.faces.detection.detection_threads`)
for each of ``--sessions`` (``ours``: the detector as the jobs open it, one onnxruntime thread per call;
``onnxruntime``: onnxruntime's default threads, one per physical core for each call and busy-waiting between calls),
in turn, ``--repeats`` rounds each, keeping each setting's fastest round. The detector is the one the jobs load
(:func:`~retarget.faces.detection.load_detector`: SCRFD from ``--models`` when it has it, else the bundled MTCNN) on
``--device``. Prints frames/s and ms per frame for each setting, the speed-up over the first, and whether every
setting found the same faces as the first (boxes and keypoints within 1e-3 px), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from retarget.faces.detection import detection_threads, load_detector
from retarget.testing.media import moving_face_frames, write_clip
from retarget.video.reader import VideoReader


def read_frames(clip: str | None, count: int, folder: str) -> tuple[np.ndarray, str]:
    """The first ``count`` frames of ``clip`` (uint8 ``[N, H, W, 3]``), or of a synthetic 512x512 face clip."""
    if clip is None:
        clip = str(write_clip(Path(folder) / "synthetic.mp4", moving_face_frames(count, width=512, height=512),
                              Fraction(30), audio=False))
    frames = []
    for chunk in VideoReader(clip).iter_chunks(count, None, None):
        frames.extend(chunk.frames)
        if len(frames) >= count:
            break
    return np.stack(frames[:count]), clip


def same_faces(a, b, tolerance: float = 1e-3) -> bool:
    """Whether two ``detect_many`` results hold the same faces per frame (boxes and keypoints within ``tolerance``)."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(np.abs(f.bbox - g.bbox).max() <= tolerance
                                 and np.abs(f.keypoints - g.keypoints).max() <= tolerance for f, g in zip(x, y))
        for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", nargs="?", help="a video (default: a synthetic 512x512 clip of a moving face)")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--threads", default=f"1,{detection_threads()}",
                        help="comma-separated thread counts to compare (default: 1 and this machine's default)")
    parser.add_argument("--sessions", default="ours",
                        help="comma-separated onnxruntime session threading to compare: ours (one thread per call, "
                             "the jobs' setting), onnxruntime (its defaults); default ours")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", help="a models folder (its antelopev2/scrfd_10g_bnkps.onnx is used if present)")
    parser.add_argument("--device", default="cpu", help="onnxruntime device: cpu, cuda or cuda:N (default cpu)")
    args = parser.parse_args(argv)
    thread_counts = [int(value) for value in args.threads.split(",") if value.strip()]
    if not thread_counts or min(thread_counts) < 1:
        parser.error("--threads: positive integers, e.g. 1,4")
    sessions = [value.strip() for value in args.sessions.split(",") if value.strip()]
    if not sessions or set(sessions) - {"ours", "onnxruntime"}:
        parser.error("--sessions: ours, onnxruntime or both, e.g. ours,onnxruntime")
    settings = [(session, threads) for session in sessions for threads in thread_counts]

    with tempfile.TemporaryDirectory() as folder:
        frames, clip = read_frames(args.clip, args.frames, folder)
        detectors = {session: load_detector(args.models, device=args.device,
                                            onnxruntime_threading=session == "onnxruntime") for session in sessions}
        for detector in detectors.values():
            detector.detect(frames[0])  # the sessions' first-run set-up, outside the timing
        best, results = {}, {}
        for _ in range(args.repeats):  # settings in turn, so a slower spell of a shared machine hits them alike
            for session, threads in settings:
                detector = detectors[session]
                detector.threads = threads
                start = time.perf_counter()
                results[session, threads] = detector.detect_many(frames)
                seconds = time.perf_counter() - start
                best[session, threads] = min(seconds, best.get((session, threads), float("inf")))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"clip={clip if args.clip else 'synthetic'} frames={len(frames)} {frames.shape[2]}x{frames.shape[1]} "
              f"detector={detector.name} device={args.device} cores={cores} best of {args.repeats}")
        first = settings[0]
        record = {"bench": "detection", "detector": detector.name, "frames": len(frames),
                  "size": [int(frames.shape[2]), int(frames.shape[1])], "cores": cores, "settings": []}
        for setting in settings:
            session, threads = setting
            same = same_faces(results[setting], results[first])
            print(f"sessions {session:>11}, threads {threads:>2}: {len(frames) / best[setting]:7.2f} frames/s, "
                  f"{1000 * best[setting] / len(frames):6.1f} ms/frame, {best[first] / best[setting]:.2f}x, "
                  f"same faces as the first: {same}")
            record["settings"].append({"sessions": session, "threads": threads, "seconds": round(best[setting], 4),
                                       "frames_per_s": round(len(frames) / best[setting], 3), "same_faces": same})
        print(json.dumps(record))
        return 0 if all(s["same_faces"] for s in record["settings"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
