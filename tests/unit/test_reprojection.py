"""Nearest-view reprojection baseline against analytic renders of a textured plane, resizing and identity."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras, look_at
from sparse3d.models.baselines.reprojection import NearestViewReprojection, plane_homography, warp_to_target
from sparse3d.train.scene_trainer import SceneMethod
from sparse3d.views import PosedImages

W, H, F = 96, 72, 80.0
PLANE_Z = 5.0


def _look_at(centre: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera R, t of an OpenCV camera at ``centre`` looking at ``target``."""
    R = look_at(centre, target, up=(0.0, -1.0, 0.0))
    return R, -R @ centre


def _camera(centre: list[float], target: list[float], width: int = W, height: int = H) -> Cameras:
    R, t = _look_at(np.asarray(centre, float), np.asarray(target, float))
    K = np.array([[F, 0.0, width / 2], [0.0, F, height / 2], [0.0, 0.0, 1.0]])
    return Cameras.from_Rt(K[None], R[None], t[None], width, height)


def _texture(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Smooth colour pattern on the plane (period ~16 px at the test distance, so bilinear error is small)."""
    a = 2 * np.pi / 1.0
    return np.stack([0.5 + 0.4 * np.sin(a * X) * np.cos(a * Y),
                     0.5 + 0.4 * np.cos(a * X + 0.7),
                     0.5 + 0.4 * np.sin(a * Y + 1.3)], axis=-1)


def _render_plane(cam: Cameras) -> np.ndarray:
    """Ray-trace the plane z = PLANE_Z by hand: every pixel centre's ray hits the plane, look up the texture."""
    K = cam.K[0].double().numpy()
    V = cam.viewmat[0].double().numpy()
    R, t = V[:3, :3], V[:3, 3]
    centre = -R.T @ t
    j, i = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5, indexing="xy")
    pix = np.stack([j, i, np.ones_like(j)], axis=-1)
    dirs = pix @ np.linalg.inv(K).T @ R  # (R^T K^-1 x) for every pixel, as row vectors
    s = (PLANE_Z - centre[2]) / dirs[..., 2]
    assert np.all(s > 0), "test set-up: every pixel must see the plane"
    hit = centre + s[..., None] * dirs
    return _texture(hit[..., 0], hit[..., 1]).astype(np.float32)


def _views(*cams: Cameras) -> PosedImages:
    batch = Cameras(K=torch.cat([c.K for c in cams]), viewmat=torch.cat([c.viewmat for c in cams]), width=W, height=H)
    images = torch.from_numpy(np.stack([_render_plane(c) for c in cams]))
    return PosedImages(images=images, cameras=batch)


def _inside_source(H_ts: np.ndarray, margin: float = 1.5) -> np.ndarray:
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5, indexing="xy")
    src = np.stack([j, i, np.ones_like(j)], axis=-1) @ H_ts.T
    u, v = src[..., 0] / src[..., 2], src[..., 1] / src[..., 2]
    return (u > margin) & (u < W - margin) & (v > margin) & (v < H - margin)


def test_warp_reproduces_an_analytic_plane_render() -> None:
    focus = [0.0, 0.0, PLANE_Z]
    source = _camera([0.8, -0.4, 0.3], focus)
    far = _camera([-3.0, 0.5, 1.0], focus)
    target = _camera([0.0, 0.0, 0.0], focus)  # fronto-parallel to the plane: the plane *is* the object plane
    method = NearestViewReprojection()
    assert isinstance(method, SceneMethod) and method.default_steps == 0
    method.setup(_views(far, source))
    assert method.nearest_view(target) == 1
    out = method.render(target)
    assert out.shape == (1, H, W, 3) and out.dtype == torch.float32
    truth = _render_plane(target)
    valid = _inside_source(plane_homography(source, target, np.array(focus)))
    assert valid.mean() > 0.6
    err = np.abs(out[0].numpy() - truth)[valid]
    assert err.max() < 0.03 and err.mean() < 0.0045, (err.max(), err.mean())
    assert np.all(out[0].numpy()[~_inside_source(plane_homography(source, target, np.array(focus)), -1.0)] == 0)
    # The same warp through a plane at the wrong depth is clearly worse: the test can tell depths apart.
    wrong = NearestViewReprojection(plane_point=[0.0, 0.0, PLANE_Z + 1.5])
    wrong.setup(_views(far, source))
    bad = np.abs(wrong.render(target)[0].numpy() - truth)[valid]
    assert bad.mean() > 5 * err.mean()


def test_identity_target_returns_the_input_exactly() -> None:
    focus = [0.0, 0.0, PLANE_Z]
    a, b = _camera([0.8, -0.4, 0.3], focus), _camera([-1.0, 0.2, 0.5], focus)
    views = _views(a, b)
    method = NearestViewReprojection()
    method.setup(views)
    out = method.render(views.cameras)
    assert torch.equal(out, views.images)


def test_resized_target_matches_bilinear_upsampling() -> None:
    """Pixel-centre convention check: the same camera at twice the size is cv2.resize's bilinear upsampling."""
    focus = [0.0, 0.0, PLANE_Z]
    a, b = _camera([0.8, -0.4, 0.3], focus), _camera([-1.0, 0.2, 0.5], focus)
    views = _views(a, b)
    method = NearestViewReprojection()
    method.setup(views)
    big = method.render(a.resized(2 * W, 2 * H))[0].numpy()
    ref = cv2.resize(views.images[0].numpy(), (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(big[2:-2, 2:-2], ref[2:-2, 2:-2], atol=2e-3)


def test_nearest_view_selection_and_tie_break() -> None:
    focus = [0.0, 0.0, PLANE_Z]
    target = _camera([0.0, 0.0, 0.0], focus)
    far = _camera([0.0, 3.0, 0.0], focus)
    side_away = _camera([-1.0, 0.0, 0.0], [-3.0, 0.0, PLANE_Z])  # distance 1, looks 21.8 deg off the target axis
    side_toward = _camera([1.0, 0.0, 0.0], focus)  # distance 1, looks 11.3 deg off: wins the tie
    near = _camera([0.2, 0.1, 0.0], focus)
    images = torch.stack([torch.full((H, W, 3), v) for v in (0.1, 0.2, 0.3, 0.4)])
    cams = [far, side_away, side_toward, near]
    batch = Cameras(K=torch.cat([c.K for c in cams]), viewmat=torch.cat([c.viewmat for c in cams]), width=W, height=H)
    method = NearestViewReprojection(plane_point=focus)
    method.setup(PosedImages(images=images, cameras=batch))
    assert method.nearest_view(target) == 3
    assert method.nearest_view(_camera([0.0, 2.5, 0.0], focus)) == 0
    method.setup(PosedImages(images=images[:3], cameras=batch[[0, 1, 2]]))
    assert method.nearest_view(target) == 2
    out = method.render(target)[0]
    assert torch.allclose(out[H // 2, W // 2], torch.full((3,), 0.3))  # rendered from the chosen view


def test_errors() -> None:
    method = NearestViewReprojection()
    with pytest.raises(RuntimeError, match="setup"):
        method.render(_camera([0.0, 0.0, 0.0], [0.0, 0.0, 1.0]))
    one = _views(_camera([0.0, 0.0, 0.0], [0.0, 0.0, PLANE_Z]))
    with pytest.raises(ValueError, match="plane_point"):
        method.setup(one)
    method = NearestViewReprojection(plane_point=[0.0, 0.0, PLANE_Z])
    method.setup(one)
    with pytest.raises(ValueError, match="not in front"):
        method.render(_camera([0.0, 0.0, 10.0], [0.0, 0.0, 20.0]))


def test_pixels_whose_plane_point_is_behind_the_source_are_black() -> None:
    """A homography with a sign change of w: the mirrored (w < 0) half would sample inside the source."""
    image = np.ones((H, W, 3), np.float32)
    H_ts = np.array([[1.0, 0.0, -W], [0.0, 1.0, -H], [-2.0 / W, 0.0, 1.0]])
    unguarded = cv2.warpPerspective(image, H_ts, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert unguarded.max() > 0.5  # without the guard the w < 0 half picks up source pixels
    assert np.all(warp_to_target(image, H_ts, W, H) == 0)
