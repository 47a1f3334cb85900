"""Cameras: projection-matrix decomposition against known K, R, t; projection and rays round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras, decompose_projection_matrix


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("scale", [1.0, 0.37, -2.5, 1e-3])
@pytest.mark.parametrize("skew", [0.0, 1.7])
def test_decomposition_recovers_known_camera(scale: float, skew: float) -> None:
    rng = np.random.default_rng(7)
    K = np.array([[2890.0, skew, 823.2], [0.0, 2883.0, 619.1], [0.0, 0.0, 1.0]])
    R = _random_rotation(rng)
    t = rng.normal(size=3) * 100
    P = scale * K @ np.hstack([R, t[:, None]])
    K2, R2, t2 = decompose_projection_matrix(P)
    np.testing.assert_allclose(K2, K, rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(R2, R, atol=1e-10)
    np.testing.assert_allclose(t2, t, rtol=1e-9, atol=1e-8)
    assert np.linalg.det(R2) == pytest.approx(1.0)
    # Re-composed matrix equals P up to the scale P was given in.
    recomposed = K2 @ np.hstack([R2, t2[:, None]])
    np.testing.assert_allclose(recomposed * scale, P, rtol=1e-9, atol=1e-6)


def test_decomposition_rejects_degenerate() -> None:
    with pytest.raises(ValueError, match="3x4"):
        decompose_projection_matrix(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="singular"):
        decompose_projection_matrix(np.zeros((3, 4)))


def test_project_matches_projection_matrix_and_positive_depth() -> None:
    rng = np.random.default_rng(3)
    K = np.array([[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]])
    # Camera at (0, 0, -5) looking at the origin along +z.
    R = np.eye(3)
    t = np.array([0.0, 0.0, 5.0])
    cams = Cameras.from_projection_matrices([K @ np.hstack([R, t[:, None]])], 640, 480)
    pts = torch.from_numpy(rng.uniform(-1, 1, size=(20, 3))).float()
    uv, depth = cams.project(pts)
    hom = np.c_[pts.numpy(), np.ones(20)] @ (K @ np.hstack([R, t[:, None]])).T
    np.testing.assert_allclose(uv[0].numpy(), hom[:, :2] / hom[:, 2:], rtol=1e-5, atol=1e-3)
    assert torch.all(depth > 0)
    np.testing.assert_allclose(cams.centers[0].numpy(), [0.0, 0.0, -5.0], atol=1e-6)
    # The origin projects on the principal point.
    uv0, _ = cams.project(torch.zeros(1, 3))
    np.testing.assert_allclose(uv0[0, 0].numpy(), [320.0, 240.0], atol=1e-4)


def test_pixel_rays_pass_through_pixel_centres() -> None:
    rng = np.random.default_rng(11)
    K = np.array([[80.0, 0.0, 41.0], [0.0, 82.0, 29.5], [0.0, 0.0, 1.0]])
    R = _random_rotation(rng)
    cams = Cameras.from_Rt(K[None], R[None], rng.normal(size=(1, 3)), 80, 60)
    origins, dirs = cams.pixel_rays(0)
    assert origins.shape == dirs.shape == (60, 80, 3)
    # A point along the ray through pixel (row 13, col 57) projects to that pixel's centre (57.5, 13.5).
    point = origins[13, 57] + 3.0 * dirs[13, 57]
    uv, depth = cams.project(point[None])
    np.testing.assert_allclose(uv[0, 0].numpy(), [57.5, 13.5], atol=1e-3)
    assert float(depth[0, 0]) > 0
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(60, 80))


def test_from_c2w_and_resized_and_indexing() -> None:
    K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
    c2w = np.eye(4)[None].repeat(2, 0)
    c2w[1, :3, 3] = [1.0, 2.0, 3.0]
    cams = Cameras.from_c2w(np.stack([K, K]), c2w, 100, 80)
    torch.testing.assert_close(cams.centers, torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]))
    torch.testing.assert_close(cams.c2w, torch.from_numpy(c2w).float())
    assert len(cams[1]) == 1 and len(cams[[0, 1]]) == 2
    half = cams.resized(50, 40)
    assert (half.width, half.height) == (50, 40)
    # A point at the centre of the last pixel column stays at the last pixel's centre after halving.
    torch.testing.assert_close(half.K[0], torch.tensor([[50.0, 0.0, 25.0], [0.0, 50.0, 20.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="K must have shape"):
        Cameras(K=torch.eye(3), viewmat=torch.eye(4)[None], width=1, height=1)
