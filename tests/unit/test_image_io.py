"""PNG/mask IO conventions: RGB order, alpha dropped, 16-bit scaled, header parsing without decoding."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sparse3d.io.images import png_info, read_image, read_mask, write_mask, write_png


def test_write_read_roundtrip_is_rgb_and_8bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    p = write_png(tmp_path / "a" / "img.png", image)
    np.testing.assert_array_equal(read_image(p), image.astype(np.float32) / 255.0)
    # OpenCV (BGR) sees the channels reversed: proves the file holds RGB, not BGR.
    np.testing.assert_array_equal(cv2.imread(str(p))[..., ::-1], image)
    assert png_info(p) == (13, 9, 8, 2) and png_info(p.read_bytes()).is_rgb8


def test_float_input_rounds_and_clips(tmp_path: Path) -> None:
    image = np.array([[[0.0, 0.5, 1.2], [-0.1, 0.999, 0.002]]], dtype=np.float32)
    back = read_image(write_png(tmp_path / "f.png", image))
    np.testing.assert_array_equal(np.rint(back * 255), [[[0, 128, 255], [0, 255, 1]]])
    with pytest.raises(ValueError, match="NaN"):
        write_png(tmp_path / "n.png", np.full((2, 2, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="RGB"):
        write_png(tmp_path / "g.png", np.zeros((2, 2), dtype=np.float32))


def test_rgba_and_16bit_and_gray_are_normalised(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 2] = 200  # red in BGRA order
    rgba[..., 3] = 10
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    info = png_info(tmp_path / "rgba.png")
    assert info.color_type == 6 and not info.is_rgb8
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png")[0, 0], [200 / 255, 0, 0])
    deep = np.full((3, 3, 3), 65535, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert png_info(tmp_path / "deep.png").bit_depth == 16
    np.testing.assert_allclose(read_image(tmp_path / "deep.png"), 1.0)
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((2, 2), 51, dtype=np.uint8))
    np.testing.assert_allclose(read_image(tmp_path / "gray.png"), 0.2)


def test_mask_roundtrip_and_errors(tmp_path: Path) -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[2:4, 1:5] = True
    np.testing.assert_array_equal(read_mask(write_mask(tmp_path / "m.png", mask)), mask)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all, really not one")
    with pytest.raises(ValueError, match="not a PNG"):
        png_info(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="cannot decode"):
        read_image(tmp_path / "bad.png")
