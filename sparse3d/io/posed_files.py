"""What the LLFF, nerfstudio and COLMAP readers share: the cameras of a scene's views with the image file of each
view, the lens distortion a file declares (kept, never applied), and image loading with size checks.

Every reader in :mod:`sparse3d.io` converts its file's conventions into one :class:`~sparse3d.cameras.Cameras`
(OpenCV axes, world-to-camera, pixel centres at ``+0.5``) and returns a :class:`PosedImageFiles`; the scene
loaders in :mod:`sparse3d.datasets.posed_scenes` pick views from it and read their images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sparse3d.cameras import Cameras
from sparse3d.io.images import png_info, read_image
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages

PathLike = str | Path

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""Image files the readers list (compared case-insensitively)."""


@dataclass(frozen=True)
class LensDistortion:
    """Lens distortion as a camera file declares it; sparse3d's cameras are pinhole, so this is only kept.

    Attributes:
        model: the file's camera model name (``"OPENCV"``, ``"SIMPLE_RADIAL"``...).
        params: the coefficients under the names the format uses (``k1``, ``k2``, ``p1``...).
    """

    model: str
    params: Mapping[str, float]

    @property
    def is_zero(self) -> bool:
        """True when every coefficient is 0 (a pinhole camera written with a distortion model)."""
        return all(float(v) == 0.0 for v in self.params.values())

    def describe(self) -> str:
        values = ", ".join(f"{k}={float(v):.6g}" for k, v in self.params.items())
        return f"{self.model}({values})"


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) of an image file: from the header for PNG, by decoding otherwise."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".png":
            info = png_info(p)
            return info.width, info.height
        image = read_image(p)
    except (ValueError, OSError) as exc:
        raise UserError(f"{p}: cannot read the image ({exc})") from None
    return int(image.shape[1]), int(image.shape[0])


def fit_cameras_to_images(cameras: Cameras, width: int, height: int, source: PathLike, image: PathLike) -> Cameras:
    """``cameras`` rescaled to images of ``width`` x ``height`` (a downsampled copy, e.g. ``images_4``).

    The aspect ratio must agree up to rounding each side to whole pixels; otherwise the images do not belong to
    these cameras and a :class:`UserError` names the camera file ``source`` and the ``image`` checked.
    """
    if (cameras.width, cameras.height) == (width, height):
        return cameras
    W, H = cameras.width, cameras.height
    # A copy resized by s and rounded has |w - sW|, |h - sH| <= 1/2, hence |W h - H w| <= (W + H) / 2.
    if abs(W * height - H * width) > 0.5 * (W + H) + 1e-9:
        raise UserError(
            f"{source}: cameras are {cameras.width}x{cameras.height} but image {image} is {width}x{height} "
            "(not a resized copy: the aspect ratio differs)"
        )
    return cameras.resized(width, height)


@dataclass(frozen=True)
class PosedImageFiles:
    """The views of one scene as a camera file declares them, before any image is read.

    Attributes:
        cameras: one camera per view, at the size of the image files.
        image_paths: the image file of each view.
        names: each view's image name as the camera file gives it (relative to the image folder).
        source: the camera file (or model folder) the cameras came from, for messages.
        distortion: per view, the declared lens distortion or None; empty when the format declares none.
    """

    cameras: Cameras
    image_paths: tuple[Path, ...]
    names: tuple[str, ...]
    source: Path
    distortion: tuple[LensDistortion | None, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.cameras)
        if len(self.image_paths) != n or len(self.names) != n:
            raise ValueError(f"{n} cameras, {len(self.image_paths)} image paths and {len(self.names)} names")
        if self.distortion and len(self.distortion) != n:
            raise ValueError(f"{n} cameras but {len(self.distortion)} distortion entries")

    def __len__(self) -> int:
        return len(self.cameras)

    def select(self, indices: Sequence[int]) -> PosedImageFiles:
        """The views at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < len(self)]
        if bad:
            raise UserError(f"{self.source}: view indices {bad} outside 0..{len(self) - 1}")
        return PosedImageFiles(
            cameras=self.cameras[idx], image_paths=tuple(self.image_paths[i] for i in idx),
            names=tuple(self.names[i] for i in idx), source=self.source,
            distortion=tuple(self.distortion[i] for i in idx) if self.distortion else (),
        )

    def distorted_views(self) -> list[int]:
        """Indices of the views whose declared distortion is not zero."""
        return [i for i, d in enumerate(self.distortion) if d is not None and not d.is_zero]

    def distortion_report(self) -> str | None:
        """One line saying which views declare non-zero distortion that is not applied, or None."""
        views = self.distorted_views()
        if not views:
            return None
        kinds = sorted({self.distortion[i].describe() for i in views})  # type: ignore[union-attr]
        shown = ", ".join(kinds[:3]) + (f" and {len(kinds) - 3} more" if len(kinds) > 3 else "")
        return (f"{self.source}: {len(views)} of {len(self)} views declare lens distortion {shown}; sparse3d "
                "cameras are pinhole and the distortion is not applied (undistort the images first, e.g. with "
                "`colmap image_undistorter`)")

    def load(self, scene: str = "", name_suffix: str | None = ".png") -> PosedImages:
        """Read every view's image into :class:`PosedImages`; each image must exist and match the cameras' size.

        ``names`` become the views' names with their suffix replaced by ``name_suffix`` (renders of test views
        are written under these names as PNG); None keeps the names as they are.
        """
        images = torch.zeros(len(self), self.cameras.height, self.cameras.width, 3)
        for i, path in enumerate(self.image_paths):
            if not path.is_file():
                raise UserError(f"{self.source}: image not found: {path}")
            try:
                image = read_image(path)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            if (image.shape[1], image.shape[0]) != (self.cameras.width, self.cameras.height):
                raise UserError(f"{path}: size {image.shape[1]}x{image.shape[0]} differs from the "
                                f"{self.cameras.width}x{self.cameras.height} of the cameras in {self.source}")
            images[i] = torch.from_numpy(np.ascontiguousarray(image))
        names = self.names if name_suffix is None else tuple(
            str(Path(n).with_suffix(name_suffix)) for n in self.names)
        return PosedImages(images=images, cameras=self.cameras, scene=scene, names=names)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (the order LLFF and NeRF's loaders use)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
