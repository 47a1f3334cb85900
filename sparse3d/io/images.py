"""Image and mask files: float32 HWC RGB in [0, 1] on the Python side, 8-bit PNG on disk.

OpenCV (headless) does the codec work; this module fixes the conventions around it (RGB not BGR, alpha
dropped, 16-bit scaled, grayscale expanded) and names the file when something is wrong.
"""

from __future__ import annotations

import struct
import zlib
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


MAX_IMAGE_PIXELS = 1 << 26
"""Largest image (width x height, about 67 Mpixel) decoded by default; a PNG whose header declares more is refused
before any pixel data is inflated, so a small file cannot claim gigabytes of memory (a decompression bomb).
Other formats rely on OpenCV's own limit."""


class ImageTooLarge(ValueError):
    """The image header declares more pixels than the caller's ``max_pixels``."""


def verify_png(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS) -> PngInfo:
    """Check a PNG's structure without inflating its pixels; ValueError (not naming a file) when it is broken.

    Checks: signature and IHDR, every chunk complete and with a matching CRC, at least one IDAT, an IEND chunk,
    and width x height at most ``max_pixels`` (:class:`ImageTooLarge`; None = no limit). Whether the pixel data
    inflates to exactly the declared size is left to the decoder (:func:`decode_image`).
    """
    info = png_info(data)
    if info.width == 0 or info.height == 0:
        raise ValueError(f"PNG header declares an empty image ({info.width}x{info.height})")
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise ImageTooLarge(f"PNG header declares {info.width}x{info.height} = {info.width * info.height} pixels, "
                            f"over the limit of {max_pixels}; not decoded")
    pos, size, idat = len(_PNG_SIGNATURE), len(data), False
    while True:
        if pos + 12 > size:
            raise ValueError(f"truncated PNG: {size} bytes, ends at byte {pos} before the IEND chunk")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        name = ctype.decode("latin-1")
        if length > 0x7FFFFFFF or pos + 12 + length > size:
            raise ValueError(f"truncated PNG: the {name!r} chunk at byte {pos} declares {length} bytes, "
                             f"{max(size - pos - 12, 0)} remain")
        crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != crc:
            raise ValueError(f"PNG chunk {name!r} at byte {pos} has a bad CRC (the file is corrupted)")
        idat = idat or ctype == b"IDAT"
        pos += 12 + length
        if ctype == b"IEND":
            break
    if not idat:
        raise ValueError("PNG has no image data (no IDAT chunk)")
    return info


def _decode(data: bytes, max_pixels: int | None) -> np.ndarray:
    """The one decoder: raw OpenCV array (BGR order, 8 or 16 bit); a PNG is verified (:func:`verify_png`) first."""
    if data[:8] == _PNG_SIGNATURE:
        info = verify_png(data, max_pixels)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.shape[:2] != (info.height, info.width):
            raise ValueError(f"PNG pixel data does not decode to the {info.width}x{info.height} its header "
                             "declares (corrupt or short compressed data)")
        return image
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise ValueError("cannot decode image")
    return image


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return path.read_bytes()


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    else:
        raise ValueError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"unsupported channel count {image.shape[2]}")
    return image.astype(np.float32) / scale


def decode_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode encoded image bytes fully, as :func:`read_image` does; ValueError messages do not name a file."""
    return _to_rgb(_decode(bytes(data), max_pixels))


def read_image(path: PathLike, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image as float32 RGB (H, W, 3) in [0, 1]; alpha is dropped, gray expanded, 16-bit rescaled.

    A PNG is verified completely (:func:`verify_png`: chunks, CRCs, at most ``max_pixels``) and decoded to
    exactly its declared size; errors are ValueError (:class:`ImageTooLarge` for the size cap) naming the file.
    """
    p = Path(path)
    try:
        return decode_image(_read(p), max_pixels)
    except ValueError as exc:
        raise type(exc)(f"{p}: {exc}") from None


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
    try:
        image = _decode(_read(p), MAX_IMAGE_PIXELS)
    except ValueError as exc:
        raise type(exc)(f"{p}: {exc}") from None
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
