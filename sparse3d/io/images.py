"""Image and mask files: float32 HWC RGB in [0, 1] on the Python side, 8-bit PNG on disk.

OpenCV (headless) does the codec work; this module fixes the conventions around it (RGB not BGR, alpha
dropped, 16-bit scaled, grayscale expanded) and names the file when something is wrong.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

PathLike = str | Path

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PngInfo(NamedTuple):
    """Header facts of a PNG file (IHDR chunk), read without decoding the pixels."""

    width: int
    height: int
    bit_depth: int
    color_type: int  # 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA

    @property
    def is_rgb8(self) -> bool:
        return self.bit_depth == 8 and self.color_type == 2


def png_info(source: PathLike | bytes) -> PngInfo:
    """Parse the IHDR chunk of a PNG given as a path or as its bytes; ValueError if it is not a PNG."""
    head = source[:33] if isinstance(source, (bytes, bytearray)) else Path(source).open("rb").read(33)
    where = "PNG data" if isinstance(source, (bytes, bytearray)) else str(source)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{where}: not a PNG file")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", head[16:26])
    return PngInfo(int(width), int(height), int(bit_depth), int(color_type))


def _decode(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"{path}: cannot decode image")
    return image


def read_image(path: PathLike) -> np.ndarray:
    """Read an image as float32 RGB (H, W, 3) in [0, 1]; alpha is dropped, gray expanded, 16-bit rescaled."""
    p = Path(path)
    image = _decode(p)
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    else:
        raise ValueError(f"{p}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"{p}: unsupported channel count {image.shape[2]}")
    return image.astype(np.float32) / scale


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] (or uint8) RGB → uint8, rounding to nearest and clipping."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    return np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_png(path: PathLike, image: np.ndarray) -> Path:
    """Write an (H, W, 3) RGB image (float in [0, 1] or uint8) as an 8-bit RGB PNG; creates parent folders."""
    p = Path(path)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{p}: image must be (H, W, 3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8 and not np.all(np.isfinite(arr)):
        raise ValueError(f"{p}: image contains NaN or inf")
    p.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(to_uint8(arr), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{p}: PNG encoding failed")
    p.write_bytes(buf.tobytes())
    return p


def read_mask(path: PathLike) -> np.ndarray:
    """Read an object mask as bool (H, W): any channel above half intensity counts as object."""
    p = Path(path)
    image = _decode(p)
    threshold = 32767 if image.dtype == np.uint16 else 127
    if image.ndim == 3:
        image = image[..., :3].max(axis=2)
    return image > threshold


def write_mask(path: PathLike, mask: np.ndarray) -> Path:
    """Write a bool (H, W) mask as an 8-bit gray PNG (255 = object)."""
    p = Path(path)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{p}: mask must be (H, W), got shape {m.shape}")
    p.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", (m.astype(bool) * 255).astype(np.uint8))
    if not ok:
        raise OSError(f"{p}: PNG encoding failed")
    p.write_bytes(buf.tobytes())
    return p
