"""The result panel of a side-by-side render, so that ``retarget eval`` scores the result and nothing else.

How the frames are composed (:func:`retarget.video.compose.side_by_side_chunk`, then the encoder):

* ``run --side-by-side``: driving | result. The driving frame is scaled to the model's ``S`` rows (aspect kept,
  its width ``round(W * S / H)``), then the ``S x S`` result; the frame is ``round(W * S / H) + S`` wide. With
  ``--paste-back`` the result is the identity photo's canvas and both panels are scaled to its rows (at most 720).
* ``edit --side-by-side``: original | result, both at the clip's ``W x H``; the frame is ``2W x H``.
* The encoder fits an odd size to its pixel format by padding or cropping the right/bottom edge (see
  :mod:`retarget.video.encoding`): only the result panel's far edge can gain a repeated column/row or lose one.

The output's provenance record (:func:`retarget.provenance.metadata.read_provenance`) says whether it is side by
side, which command made it and the encoder's ``pix_fmt``/``odd_size``; with the left panel's source size (the
driving clip's, or the original's) the panel's box follows exactly. An output without a record is scored whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import InputError
from ..video.encoding import encoded_size, size_alignment
from ..video.reader import VideoReader

#: What each side-by-side command puts left of the result (for the messages).
LAYOUTS = {"run": "driving | result", "edit": "original | result"}


@dataclass(frozen=True)
class Box:
    """Columns ``[x0, x1)`` and rows ``[y0, y1)`` of a frame."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.x1 - self.x0, self.y1 - self.y0

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The box's pixels of ``frame`` (``[H, W, C]``), contiguous."""
        return np.ascontiguousarray(frame[self.y0:self.y1, self.x0:self.x1])


def _encoded(width: int, height: int, pix_fmt: str, odd_size: str) -> tuple[int, int]:
    """The (width, height) a ``width`` x ``height`` frame is encoded at (the encoder's own rule,
    :func:`retarget.video.encoding.encoded_size`, under the recorded ``pix_fmt`` and ``odd_size``)."""
    return encoded_size(width, height, SimpleNamespace(pix_fmt=pix_fmt, odd_size=odd_size))


def _scaled_width(size: tuple[int, int], rows: int) -> int:
    """The width of a ``size`` (width, height) picture scaled to ``rows`` (as
    :func:`retarget.video.compose.resize_to_height`)."""
    width, height = size
    return width if height == rows else max(1, round(width * rows / height))


def run_result_box(output_size: tuple[int, int], driving_size: tuple[int, int], pix_fmt: str = "yuv420p",
                   odd_size: str = "pad", result_size: tuple[int, int] | None = None) -> Box | None:
    """The result panel of an encoded ``run --side-by-side`` frame of ``output_size`` (width, height), its driving
    clip ``driving_size``: the result right of the driving frame, both scaled to the frame's rows, cut to the
    encoded frame. The result is the model's ``S x S`` face, or with ``result_size`` (``run --paste-back``: the
    photo's canvas, see :func:`retarget.jobs.run.paste_back_canvas_size`) that picture scaled to the rows. The
    rows are the ones the encoder's fit (``pix_fmt``, ``odd_size``) maps to ``output_size``; of several, the
    output's height (the model's size is a multiple of its VAE's factor, 8 when published, which no pixel format
    changes). ``None`` when no number of rows composes to ``output_size``."""
    (width, height), (driving_width, driving_height) = output_size, driving_size
    align = size_alignment(pix_fmt)[1]
    fits = []
    for side in range(max(1, height - align), height + align + 1):
        left = _scaled_width((driving_width, driving_height), side)
        right = side if result_size is None else _scaled_width(result_size, side)
        if _encoded(left + right, side, pix_fmt, odd_size) == (width, height):
            fits.append((side != height, side, left, right))
    if not fits:
        return None
    _, side, left, right = min(fits)
    return Box(left, 0, min(left + right, width), min(side, height))


def edit_result_box(output_size: tuple[int, int], original_size: tuple[int, int], pix_fmt: str = "yuv420p",
                    odd_size: str = "pad") -> Box | None:
    """The result panel of an encoded ``edit --side-by-side`` frame of ``output_size`` (width, height), its
    original ``original_size`` ``W x H``: columns ``[W, 2W)``, rows ``[0, H)``, cut to the encoded frame. ``None``
    when ``2W x H`` does not encode (``pix_fmt``, ``odd_size``) to ``output_size``."""
    (width, height), (original_width, original_height) = output_size, original_size
    if _encoded(2 * original_width, original_height, pix_fmt, odd_size) != (width, height):
        return None
    return Box(original_width, 0, min(2 * original_width, width), min(original_height, height))


def result_panel(output: Path, record: dict | None, mode: str, left_source: Path,
                 photo_size: tuple[int, int] | None = None) -> Box | None:
    """Where ``output``'s result is, from its provenance ``record`` (see
    :func:`~retarget.provenance.metadata.read_provenance`): ``None`` for an output that is not side by side (or
    has no record); the result's :class:`Box` for a side-by-side ``run`` (``left_source``: the driving clip; for a
    ``run --paste-back`` render, ``photo_size``: the identity photo's upright (width, height)) or ``edit``
    (``left_source``: the original). ``mode``: how it is being evaluated (``"run"``/``"edit"``).

    :class:`InputError` (one line) when the panel cannot be located exactly: a side-by-side render evaluated as
    the other command, or a frame size that the recorded composition and encoder do not produce (e.g. the file
    was re-encoded or scaled, or the wrong clip was given)."""
    settings = (record or {}).get("settings") or {}
    if not settings.get("side_by_side"):
        return None
    command = record.get("command")
    if command not in LAYOUTS:
        raise InputError(f"{output}: a side-by-side render of `retarget {command}`, whose layout eval does not "
                         "know: evaluate a render made without --side-by-side")
    if command != mode:
        needs = "--driving and --identity" if command == "run" else "--original VIDEO and --driving or --motion"
        kind = "a run" if command == "run" else "an edit"
        raise InputError(f"{output}: a side-by-side `retarget {command}` render ({LAYOUTS[command]}): evaluate it "
                         f"as {kind}, with {needs}")
    encoder = settings.get("encoder") if isinstance(settings.get("encoder"), dict) else {}
    output_info, left_info = VideoReader(output).info, VideoReader(left_source).info
    sizes = (output_info.width, output_info.height), (left_info.width, left_info.height)
    fit = (encoder.get("pix_fmt", "yuv420p"), encoder.get("odd_size", "pad"))
    try:
        if command == "run":
            pasted = settings.get("paste_back") and photo_size is not None
            box = run_result_box(*sizes, *fit, result_size=_canvas_size(photo_size) if pasted else None)
        else:
            box = edit_result_box(*sizes, *fit)
    except ValueError:  # a pixel format this FFmpeg does not know
        box = None
    if box is None:
        raise InputError(f"{output}: a side-by-side render ({LAYOUTS[command]}) whose {sizes[0][0]}x{sizes[0][1]} "
                         f"frame is not composed from {left_source.name}'s {sizes[1][0]}x{sizes[1][1]}: the result "
                         "cannot be cut out exactly (give the clip it was rendered from, or evaluate a render made "
                         "without --side-by-side)")
    return box


def _canvas_size(photo_size: tuple[int, int]) -> tuple[int, int]:
    from ..jobs.run import paste_back_canvas_size

    return paste_back_canvas_size(*photo_size)


class PanelReader(VideoReader):
    """A :class:`~retarget.video.reader.VideoReader` that yields only ``box`` of every frame; ``info`` gives the
    box's width and height (everything else is the file's)."""

    def __init__(self, path, box: Box, threads: int = 0):
        super().__init__(path, threads=threads)
        self.box = box
        width, height = box.size
        self.info = replace(self.info, width=width, height=height)

    def iter_frames(self, start: float | None = None, end: float | None = None
                    ) -> Iterator[tuple[np.ndarray, int, int]]:
        """As :meth:`VideoReader.iter_frames`, each picture cut to :attr:`box`."""
        for frame, pts, index in super().iter_frames(start, end):
            yield self.box.crop(frame), pts, index


def output_reader(path: Path, box: Box | None) -> VideoReader:
    """A reader of ``path`` that yields ``box`` of each frame (the whole frame for ``None``)."""
    return VideoReader(path) if box is None else PanelReader(path, box)
