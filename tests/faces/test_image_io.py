import numpy as np
import pytest
from PIL import Image

from retarget.errors import InputError
from retarget.faces.image_io import load_image, to_rgb_uint8


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    image = np.zeros((60, 90, 3), np.uint8)
    image[:, :45] = [200, 30, 30]
    image[:, 45:] = [30, 30, 200]
    return image + rng.integers(0, 5, image.shape, dtype=np.uint8)


def test_exif_rotation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    Image.fromarray(photo).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.shape == (90, 60, 3)
    assert loaded[5, 30, 0] > 150 and loaded[85, 30, 2] > 150  # red (left) now on top


def test_grayscale_rgba_cmyk_and_16_bit(tmp_path, photo):
    Image.fromarray(photo[:, :, 0]).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (60, 90, 3) and np.array_equal(gray[..., 0], photo[..., 0]) and np.array_equal(gray[..., 1], gray[..., 2])

    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    assert loaded.shape == (60, 90, 3) and (loaded[:10] == 255).all() and np.array_equal(loaded[10:], photo[10:])

    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    cmyk = load_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (60, 90, 3) and np.abs(cmyk.astype(int) - photo).mean() < 6

    sixteen = (photo[:, :, 1].astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    deep = load_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and np.array_equal(deep[..., 0], photo[:, :, 1])


def test_heic_and_avif_photos(tmp_path, photo, monkeypatch):
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif (the heif extra) is not installed")
    from retarget.faces import image_io

    pillow_heif.register_heif_opener()  # to write the test file
    Image.fromarray(photo).save(tmp_path / "IMG_0001.HEIC", quality=95)
    assert (tmp_path / "IMG_0001.HEIC").read_bytes()[4:12] == b"ftypheic"
    loaded = load_image(tmp_path / "IMG_0001.HEIC")
    assert loaded.shape == (60, 90, 3) and loaded.dtype == np.uint8 and np.abs(loaded.astype(int) - photo).mean() < 6
    Image.fromarray(photo).save(tmp_path / "photo.avif", quality=95)
    assert np.abs(load_image(tmp_path / "photo.avif").astype(int) - photo).mean() < 6

    # without pillow-heif: one error naming the file and the fix
    monkeypatch.setattr(image_io, "_heif_registered", False)
    monkeypatch.setitem(__import__("sys").modules, "pillow_heif", None)
    with pytest.raises(InputError, match=r"IMG_0001.HEIC: a HEIF/HEIC photo .* needs pillow-heif: pip install"):
        load_image(tmp_path / "IMG_0001.HEIC")


def test_unreadable_files_are_input_errors_naming_the_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not an image")
    with pytest.raises(InputError, match="notes.jpg"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(InputError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError) as caught:
        load_image(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a folder, not an image file"
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png"):
        load_image(tmp_path / "empty.png")


def test_truncated_file_is_an_input_error(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_arrays_are_normalised():
    assert to_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert to_rgb_uint8(np.full((4, 5, 3), 65535, np.uint16)).max() == 255
    assert to_rgb_uint8(np.full((4, 5, 3), 0.5, np.float32))[0, 0, 0] == 128
    with pytest.raises(InputError):
        to_rgb_uint8(np.zeros((4, 5, 2), np.uint8))
