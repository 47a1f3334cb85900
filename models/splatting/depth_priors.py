"""Per-view depth priors for sparse-view Gaussian splatting (depth initialisation and depth losses).

A prior is a callable ``prior(views: PosedImages) -> DepthPriorMaps`` giving one map per input view; the
config group ``depth_prior`` selects one (``plane_sweep``, the default, or ``depth_anything``).

* :class:`PlaneSweepDepthPrior` -- multi-view plane-sweep stereo (:mod:`sparse3d.kernels.plane_sweep`): every
  input view is the reference once, its nearest other input views (by camera centre) the sources. Offline, no
  weights; gives *metric* depth in scene units with a per-pixel confidence (0 where the views give no evidence:
  textureless or unseen regions).
* :class:`DepthAnythingPrior` -- monocular Depth Anything (Yang et al., CVPR 2024) through ``transformers``
  from a local weights folder. Its output is *relative disparity*: affine-invariant inverse depth, larger =
  nearer, with unknown scale and shift per image. The consumer aligns it (e.g. a least-squares scale/shift fit of
  ``1 / depth`` against it, or a scale-invariant Pearson loss, as FSGS / SparseGS do); confidence is all ones.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

import sparse3d.kernels
from sparse3d.cameras import Cameras
from sparse3d.kernels.plane_sweep import MAX_SOURCES, plane_sweep
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages

__all__ = ["DepthAnythingPrior", "DepthPriorMaps", "PlaneSweepDepthPrior", "frustum_depth_range", "import_transformers"]

_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class DepthPriorMaps:
    """One prior map per input view."""

    values: torch.Tensor
    """(V, H, W) float32: camera-z depth (``kind == "depth"``) or relative disparity (``"relative_disparity"``)."""
    confidence: torch.Tensor
    """(V, H, W) float32 in [0, 1]; 0 = no evidence."""
    kind: Literal["depth", "relative_disparity"]


def _axes_meeting_distance(cameras: Cameras, ref: int, indices: list[int]) -> float | None:
    """Depth in camera ``ref`` of the point closest (least squares) to the optical axes of ``indices``; None when
    the axes are nearly parallel (smallest/largest eigenvalue of the normal matrix below 1e-2, i.e. axes within
    roughly 6 degrees) or the point is not in front of ``ref``."""
    centres = cameras.centers.double()[indices]
    forward = cameras.R.double()[indices, 2, :]
    proj = torch.eye(3, dtype=torch.float64) - forward.unsqueeze(-1) * forward.unsqueeze(-2)
    A = proj.sum(0)
    eig = torch.linalg.eigvalsh(A)
    if float(eig[0]) < 1e-2 * float(eig[-1]):
        return None
    point = torch.linalg.solve(A, (proj @ centres.unsqueeze(-1)).sum(0)).squeeze(-1)
    z = float(cameras.viewmat[ref].double()[2, :3] @ point + cameras.viewmat[ref].double()[2, 3])
    return z if z > 0 else None


def frustum_depth_range(
    cameras: Cameras, ref: int, sources: list[int], near_factor: float = 0.5, far_factor: float = 5.0,
    min_parallax_px: float = 1.0, grid: int = 9, samples: int = 512,
) -> tuple[float, float]:
    """``(near, far)`` reference-camera depths worth sweeping for view ``ref`` against ``sources``.

    * near: the smallest depth at which a point on the ray of one of ``grid x grid`` reference pixels is in front
      of and inside a source image (where the frustums start to overlap), raised to ``near_factor * z0``;
    * far: the largest depth at which such a point still moves by ``min_parallax_px`` in some source image
      against the point at infinity on the same ray (farther planes are indistinguishable), lowered to
      ``far_factor * z0``,

    where ``z0`` is the reference depth of the point where the optical axes of ``ref`` and ``sources`` meet (least
    squares); ``z0`` is skipped for nearly parallel axes. Candidates are ``samples`` log-spaced depths from
    0.01 to 10^4 baselines. Raises :class:`UserError` when the views do not overlap. For hand-held forward-facing
    captures whose axes meet far behind the scene, pass the known bounds instead (e.g. LLFF's ``poses_bounds``).
    """
    c = cameras.centers.double()
    baseline = float((c[sources] - c[ref]).norm(dim=-1).max())
    if not baseline > 0:
        raise UserError(f"view {ref}: its source views share its camera centre; no stereo depth range")
    depths = torch.logspace(math.log10(0.01 * baseline), math.log10(1e4 * baseline), samples, dtype=torch.float64)
    K = cameras.K.double()
    vm = cameras.viewmat.double()
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid * cameras.width
    v = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid * cameras.height
    uu, vv = torch.meshgrid(u, v, indexing="xy")
    pix = torch.stack([uu.reshape(-1), vv.reshape(-1), torch.ones(grid * grid, dtype=torch.float64)], -1)
    rays = pix @ torch.linalg.inv(K[ref]).T  # (G, 3), z = 1 in the reference camera
    rel = vm[sources] @ torch.linalg.inv(vm[ref])  # (S, 4, 4) ref camera -> source camera
    R, t = rel[:, :3, :3], rel[:, :3, 3]
    cam = depths[:, None, None, None] * (rays @ R.transpose(1, 2))[None] + t[None, :, None, :]  # (N, S, G, 3)
    uvw = cam @ K[sources].transpose(1, 2)[None]
    z = uvw[..., 2]
    uv = uvw[..., :2] / z.clamp_min(1e-300)[..., None]
    seen = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= cameras.width) & (uv[..., 1] >= 0) & \
        (uv[..., 1] <= cameras.height)
    inf_dir = (rays @ R.transpose(1, 2)) @ K[sources].transpose(1, 2)  # (S, G, 3) the vanishing points
    parallax = torch.where(
        inf_dir[None, ..., 2] > 0,
        (uv - inf_dir[None, ..., :2] / inf_dir[None, ..., 2:3].clamp_min(1e-300)).norm(dim=-1),
        math.inf,
    )
    overlap = seen.flatten(1).any(1)
    if not bool(overlap.any()):
        raise UserError(f"view {ref}: no source view sees any part of it; give near and far explicitly")
    near = float(depths[overlap][0])
    moving = overlap & (seen & (parallax >= min_parallax_px)).flatten(1).any(1)
    far = float(depths[moving][-1]) if bool(moving.any()) else float(depths[overlap][-1])
    z0 = _axes_meeting_distance(cameras, ref, [ref, *sources])
    if z0 is not None:
        near = max(near, near_factor * z0)
        far = min(far, far_factor * z0)
    if not far > near:
        raise UserError(f"view {ref}: empty depth range (near {near:.4g} >= far {far:.4g}); give near and far")
    return near, far


def import_transformers() -> Any:
    """``transformers``, with Hugging Face's ``kernels`` package (a dependency of it) imported first.

    Run from a source checkout (the checkout root on ``sys.path``, as with ``python -m pytest``), the name
    ``kernels`` would otherwise resolve to this project's ``kernels/`` folder, which transformers then fails to
    import hub kernels from; the checkout's folder is hidden from ``sys.path`` while the real package is imported.
    """
    own = Path(sparse3d.kernels.__file__).resolve().parent
    loaded = sys.modules.get("kernels")
    if loaded is None or Path(getattr(loaded, "__file__", None) or "/").resolve().parent == own:
        sys.modules.pop("kernels", None)
        saved = list(sys.path)
        try:
            sys.path[:] = [p for p in saved if (Path(p or ".").resolve() / "kernels") != own]
            try:
                importlib.import_module("kernels")
            except ImportError:
                pass  # not installed: transformers then finds no usable hub kernels either
        finally:
            sys.path[:] = saved
    return importlib.import_module("transformers")


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(V, H, W, 3) -> (V, H, W) luma."""
    w = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
    return (images * w).sum(-1).contiguous()


class PlaneSweepDepthPrior:
    """Metric depth and confidence of every input view by plane-sweep stereo against the other input views.

    Args:
        num_depths: fronto-parallel planes, uniform in inverse depth between near and far.
        radius: ZNCC window radius (window ``2 * radius + 1`` pixels square).
        top_k: per plane, the mean of the best ``top_k`` source costs is used (clamped to the source count).
        max_sources: the nearest (by camera centre) this many other views are the sources (at most
            :data:`~sparse3d.kernels.plane_sweep.MAX_SOURCES`).
        near, far: the depth range; ``None`` derives it per view from the frustums (:func:`frustum_depth_range`).
        near_factor, far_factor: bounds relative to where the optical axes meet (see :func:`frustum_depth_range`).
        var_eps: windows with less per-pixel variance than this are textureless (confidence 0 there).
        device: where the sweep runs (``"cpu"`` or a CUDA device).
    """

    def __init__(
        self, num_depths: int = 64, radius: int = 2, top_k: int = 2, max_sources: int = 4,
        near: float | None = None, far: float | None = None, near_factor: float = 0.5, far_factor: float = 5.0,
        var_eps: float = 1e-4, device: str = "cpu",
    ) -> None:
        if not 1 <= int(max_sources) <= MAX_SOURCES:
            raise UserError(f"depth_prior.max_sources must be in [1, {MAX_SOURCES}], got {max_sources}")
        if (near is None) != (far is None):
            raise UserError("depth_prior: give both near and far, or neither (derived from the cameras)")
        if near is not None and not 0 < float(near) < float(far):  # type: ignore[arg-type]
            raise UserError(f"depth_prior: need 0 < near < far, got near={near}, far={far}")
        if int(num_depths) < 3 or int(radius) < 0 or int(top_k) < 1:
            raise UserError(f"depth_prior: need num_depths >= 3, radius >= 0, top_k >= 1; got {num_depths}, "
                            f"{radius}, {top_k}")
        self.num_depths, self.radius, self.top_k = int(num_depths), int(radius), int(top_k)
        self.max_sources = int(max_sources)
        self.near, self.far = (None, None) if near is None else (float(near), float(far))  # type: ignore[arg-type]
        self.near_factor, self.far_factor = float(near_factor), float(far_factor)
        self.var_eps = float(var_eps)
        self.device = torch.device(device)

    def sources(self, cameras: Cameras, ref: int) -> list[int]:
        """The other views nearest to view ``ref`` by camera centre, nearest first."""
        c = cameras.centers.double()
        dist = (c - c[ref]).norm(dim=-1)
        order = [int(i) for i in torch.argsort(dist, stable=True) if int(i) != ref]
        return order[: self.max_sources]

    def depth_range(self, cameras: Cameras, ref: int, sources: list[int]) -> tuple[float, float]:
        if self.near is not None and self.far is not None:
            return self.near, self.far
        return frustum_depth_range(cameras, ref, sources, self.near_factor, self.far_factor)

    def __call__(self, views: PosedImages) -> DepthPriorMaps:
        n = len(views)
        if n < 2:
            raise UserError(f"scene {views.scene or '?'}: the plane-sweep depth prior needs at least 2 input views, "
                            f"got {n}")
        cams = views.cameras
        grey = _grey(views.images.to(self.device, torch.float32))
        K, vm = cams.K.to(self.device), cams.viewmat.to(self.device)
        depth = torch.empty(n, cams.height, cams.width, dtype=torch.float32)
        conf = torch.empty_like(depth)
        for r in range(n):
            src = self.sources(cams, r)
            near, far = self.depth_range(cams, r, src)
            out = plane_sweep(
                grey[r], grey[src], K[r], vm[r], K[src], vm[src], near, far, self.num_depths, self.radius,
                min(self.top_k, len(src)), self.var_eps,
            )
            depth[r], conf[r] = out.depth.cpu(), out.confidence.cpu()
        return DepthPriorMaps(values=depth, confidence=conf, kind="depth")


class DepthAnythingPrior:
    """Relative disparity of every input view from a Depth Anything model in a local folder.

    ``weights_dir`` is a ``save_pretrained`` folder (``config.json``, the weights, ``preprocessor_config.json``),
    e.g. a download of ``depth-anything/Depth-Anything-V2-Small-hf``; it is loaded with ``local_files_only=True``
    through ``AutoModelForDepthEstimation`` and ``AutoImageProcessor`` (nothing is fetched). The prediction is
    resized back to the image size bilinearly. Needs the optional ``transformers`` package.
    """

    def __init__(self, weights_dir: str | Path, device: str = "cpu") -> None:
        folder = Path(weights_dir).expanduser()
        if not folder.is_dir():
            raise UserError(f"depth_prior.weights_dir: {folder} is not a folder (point it at a local Depth Anything "
                            "save_pretrained folder; nothing is downloaded)")
        for name in ("config.json", "preprocessor_config.json"):
            if not (folder / name).is_file():
                raise UserError(f"depth_prior.weights_dir: {folder / name} not found (need a save_pretrained folder "
                                "with config.json, weights and preprocessor_config.json)")
        try:
            transformers = import_transformers()
        except ImportError:
            raise UserError("depth_prior=depth_anything needs the 'transformers' package: "
                            "pip install 'sparse3d[depth]'") from None
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # e.g. "no torchvision, using the PIL image processor"
        try:
            self.model = transformers.AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True)
            self.processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"depth_prior.weights_dir: cannot load a depth model from {folder}: {first}") from None
        finally:
            transformers.logging.set_verbosity(verbosity)
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """(H, W) float32 relative disparity of one (H, W, 3) float image in [0, 1]."""
        h, w = image.shape[:2]
        inputs: dict[str, Any] = self.processor(
            images=image.permute(2, 0, 1).float().cpu(), return_tensors="pt", do_rescale=False
        )
        pred = self.model(pixel_values=inputs["pixel_values"].to(self.device)).predicted_depth  # (1, h', w')
        pred = F.interpolate(pred[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        return pred[0, 0].cpu()

    def __call__(self, views: PosedImages) -> DepthPriorMaps:
        values = torch.stack([self.predict(img) for img in views.images])
        return DepthPriorMaps(values=values, confidence=torch.ones_like(values), kind="relative_disparity")
