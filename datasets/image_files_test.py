"""Image lookup by list entry and decoding of every image kind to RGB."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from e2e_tf.datasets import image_files


def _write(path, image: Image.Image, fmt: str) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return tf.io.decode_image(data, expand_animations=False).numpy()


def test_index_finds_folder_entries_nested_and_flat_files(tmp_path):
    for relative in ("1000/1000.jpeg", "images/00/25.jpg", "images/15001.jpg", "other/7.PNG"):
        _write(tmp_path / relative, Image.new("RGB", (4, 4)), "PNG")
    index = image_files.ImageIndex(tmp_path)
    assert index.find("1000/1000") == str(tmp_path / "1000/1000.jpeg")
    assert index.find("00/25") == str(tmp_path / "images/00/25.jpg")  # IAPR TC-12 archive
    assert index.find("01/15001") == str(tmp_path / "images/15001.jpg")  # ESP Game, flat
    assert index.find("15001") == str(tmp_path / "images/15001.jpg")  # JSON image name
    assert index.find("7") == str(tmp_path / "other/7.PNG")


def test_missing_entry_error_names_entry_and_where_it_looked(tmp_path):
    index = image_files.ImageIndex(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        index.find("97/15097")
    message = str(error.value)
    assert "'97/15097'" in message and str(tmp_path) in message and "15097{.jpeg,.jpg,.png}" in message


def test_ambiguous_base_name_is_refused(tmp_path):
    for relative in ("a/5.jpg", "b/5.jpg"):
        _write(tmp_path / relative, Image.new("RGB", (4, 4)), "JPEG")
    index = image_files.ImageIndex(tmp_path)
    assert index.find("a/5") == str(tmp_path / "a/5.jpg")
    with pytest.raises(ValueError, match="'c/5' matches several files"):
        index.find("c/5")


def test_rgb_jpeg_is_passed_through_unchanged(tmp_path):
    data = _write(tmp_path / "x.jpg", Image.new("RGB", (6, 4), (200, 30, 10)), "JPEG")
    assert image_files.encoded_rgb(tmp_path / "x.jpg") == data


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("RGB", "PNG")],
)
def test_other_modes_and_formats_decode_to_three_channel_rgb(tmp_path, mode, fmt):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :3] = (255, 0, 0)
    rgb[:, 3:] = (0, 0, 255)
    image = Image.fromarray(rgb).convert(mode)
    _write(tmp_path / "x.img", image, fmt)
    expected = np.asarray(Image.open(tmp_path / "x.img").convert("RGB"))
    decoded = _decoded(image_files.encoded_rgb(tmp_path / "x.img"))
    assert decoded.shape == (4, 6, 3)
    np.testing.assert_array_equal(decoded, expected)
    if mode in ("RGBA", "P", "RGB"):  # lossless and colour-preserving
        np.testing.assert_array_equal(decoded, rgb)


def test_truncated_jpeg_error_names_the_file(tmp_path):
    data = _write(tmp_path / "x.jpg", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG")
    (tmp_path / "x.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Cannot decode image .*x.jpg.*truncated"):
        image_files.encoded_rgb(tmp_path / "x.jpg")


def test_non_image_bytes_error_names_the_file(tmp_path):
    (tmp_path / "bad.jpeg").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match=r"Cannot decode image .*bad.jpeg"):
        image_files.encoded_rgb(tmp_path / "bad.jpeg")
