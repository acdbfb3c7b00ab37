"""Loading photos and normalising image arrays to the faces API's single image type.

Every function in :mod:`retarget.faces` takes and returns images as **RGB uint8 numpy arrays of shape
[H, W, 3]** (row-major, values 0-255). This module turns whatever a user hands us into that form:

* EXIF orientation is applied, so a phone photo stored sideways comes out upright;
* grayscale (``L``, ``1``), palette (``P``), CMYK, YCbCr and LAB images are converted to RGB;
* images with transparency (``RGBA``, ``LA``, ``P`` with a transparent colour) are composited over white;
* 16-bit images (``I;16`` grayscale PNG, 48/64-bit RGB(A) PNG) are scaled to 8 bits (value / 257, rounded);
* HEIF/HEIC photos (the iPhone's format) are read with pillow-heif where it is installed (the ``heif`` extra), and
  name it in their error otherwise; AVIF is read by Pillow itself;
* a missing, empty, truncated or non-image file raises :class:`~retarget.errors.InputError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, require_file

__all__ = ["IMAGE_SUFFIXES", "enable_heif", "load_image", "to_rgb_uint8"]

#: File name endings read as photos where a file may be a photo or a video (``edit``'s SOURCE).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif")

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255)
# Major brands of the ISO-BMFF ``ftyp`` box of HEIF images with HEVC pictures (``heic``: Apple's photos).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
_heif_registered = False


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into an upright RGB uint8 array.

    Args:
        path: a file PIL can decode (JPEG, PNG, WebP, AVIF, TIFF, BMP, ...), or HEIF/HEIC with pillow-heif.

    Returns:
        RGB uint8 array [H, W, 3], EXIF orientation applied, transparency composited over white.

    Raises:
        InputError: the file does not exist, is a folder or special file, or is not a readable image.
    """
    path = require_file(path, "an image file")
    if _is_heif(path):
        _register_heif(path)
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _pil_to_rgb_uint8(upright)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).replace(f" '{path}'", "").replace(str(path), "the file").strip() or type(exc).__name__
        raise InputError(f"{path}: not a readable image file ({reason})") from exc


def _is_heif(path: Path) -> bool:
    """Whether the file starts with an ISO-BMFF ``ftyp`` box of a HEIF brand (see :data:`_HEIF_BRANDS`)."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def enable_heif() -> bool:
    """Let Pillow open HEIF/HEIC files through pillow-heif, for this whole process (done once; the web app calls it
    at start, since its photo widgets open uploads with Pillow); False when pillow-heif is not installed.
    pillow-heif applies the file's own rotation and mirroring and clears the EXIF orientation, so :func:`load_image`
    does not turn the picture twice."""
    global _heif_registered
    if not _heif_registered:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            return False
        register_heif_opener()
        _heif_registered = True
    return True


def _register_heif(path: Path) -> None:
    """:func:`enable_heif`, or InputError naming ``path`` and the fix when pillow-heif is not installed."""
    if not enable_heif():
        raise InputError(f"{path}: a HEIF/HEIC photo (the iPhone's format) needs pillow-heif: pip install pillow-heif "
                         "(the extra retarget[heif]), or save the photo as JPEG")


def _pil_to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to an RGB uint8 array [H, W, 3]."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _TRANSPARENT_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if image.mode.startswith("I;16") or image.mode == "I":
        return to_rgb_uint8(_sixteen_bit_to_uint8(np.asarray(image)))
    if image.mode == "F":
        return to_rgb_uint8(np.asarray(image, dtype=np.float32))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit samples (0-65535) to uint8 (0-255) by value / 257, rounded."""
    values = np.clip(values.astype(np.float64), 0, 65535)
    return np.rint(values / 257.0).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Normalise an in-memory image array to RGB uint8 [H, W, 3].

    Accepts [H, W] or [H, W, 1] grayscale, [H, W, 3] RGB, [H, W, 4] RGBA (composited over white) with dtype
    uint8, uint16 (scaled by 1/257) or float (values in [0, 1], clipped). The channel order of a 3-channel input
    is assumed to be RGB already; nothing is reordered.

    Raises:
        InputError: the array has an unsupported shape or dtype.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"expected an image array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {array.shape}")
    if array.dtype == np.uint16:
        array = _sixteen_bit_to_uint8(array)
    elif np.issubdtype(array.dtype, np.floating):
        array = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InputError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = np.rint(array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array)
