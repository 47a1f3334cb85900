"""Value checks of :func:`sparse3d.render.gaussians.rasterize_gaussians`: each kind of bad value is rejected with
a ValueError naming the argument and the number of bad Gaussians or cameras (counted here from the injected
mask), boundary values are accepted, and ``check_values=False`` skips the check without changing the render."""

from __future__ import annotations

import math
import re

import pytest
import torch

from sparse3d.render.gaussians import rasterize_gaussians

W, H, N = 32, 24, 40


def _scene(n: int = N, cameras: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    means = torch.stack([(torch.rand(n, generator=g) - 0.5) * 2, (torch.rand(n, generator=g) - 0.5) * 1.5,
                         2.0 + 2.0 * torch.rand(n, generator=g)], 1)
    viewmats = torch.eye(4).repeat(cameras, 1, 1)
    viewmats[1:, 0, 3] = 0.1
    Ks = torch.tensor([[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]]).repeat(cameras, 1, 1)
    return {
        "means": means, "quats": torch.randn(n, 4, generator=g), "scales": 0.05 + 0.1 * torch.rand(n, 3, generator=g),
        "opacities": 0.1 + 0.8 * torch.rand(n, generator=g), "colors": torch.rand(n, 3, generator=g),
        "viewmats": viewmats, "Ks": Ks, "backgrounds": torch.rand(cameras, 3, generator=g),
    }


def _render(s: dict[str, torch.Tensor], **kw):
    return rasterize_gaussians(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"],
                               s["Ks"], W, H, backgrounds=s["backgrounds"], backend="warp", **kw)


def _poison(name: str, rows: list[int], value: float, cols: slice | int = slice(None)) -> dict[str, torch.Tensor]:
    s = _scene()
    t = s[name]
    for r in rows:
        if t.dim() == 1:
            t[r] = value
        else:
            t[r].reshape(-1)[cols] = value
    return s


GAUSSIAN_CASES = {
    # name: (argument, rows, value, element selection, message tail)
    "NaN mean": ("means", [3], math.nan, 1, "non-finite (NaN or inf) values"),
    "inf mean": ("means", [0, 7, 8], math.inf, 2, "non-finite (NaN or inf) values"),
    "NaN scale": ("scales", [1, 4], math.nan, 0, "scales that are NaN, inf or <= 0"),
    "inf scale": ("scales", [5], math.inf, slice(None), "scales that are NaN, inf or <= 0"),
    "negative scale": ("scales", [2, 9, 30], -0.1, 1, "scales that are NaN, inf or <= 0"),
    "zero scale": ("scales", [39], 0.0, 2, "scales that are NaN, inf or <= 0"),
    "NaN opacity": ("opacities", [6], math.nan, slice(None), "opacities outside [0, 1] or NaN"),
    "opacity above 1": ("opacities", [0, 1], 1.5, slice(None), "opacities outside [0, 1] or NaN"),
    "negative opacity": ("opacities", [11], -1e-3, slice(None), "opacities outside [0, 1] or NaN"),
    "zero quaternion": ("quats", [12, 13], 0.0, slice(None), "zero-length or non-finite quaternions"),
    "NaN quaternion": ("quats", [14], math.nan, 0, "zero-length or non-finite quaternions"),
    "inf color": ("colors", [15], -math.inf, 2, "non-finite (NaN or inf) values"),
}


@pytest.mark.parametrize("case", list(GAUSSIAN_CASES))
def test_bad_gaussian_values_name_argument_and_count(case: str) -> None:
    name, rows, value, cols, tail = GAUSSIAN_CASES[case]
    s = _poison(name, rows, value, cols)
    with pytest.raises(ValueError) as info:
        _render(s)
    message = str(info.value)
    assert message.startswith(f"{name}: {len(rows)} of {N} Gaussians have {tail}"), message
    assert "\n" not in message


CAMERA_CASES = {
    "all-zero Ks": ("Ks", [0, 1], 0.0, slice(None), "invalid intrinsics"),
    "negative focal": ("Ks", [1], -30.0, 4, "invalid intrinsics"),  # element 4 = fy
    "NaN principal point": ("Ks", [0], math.nan, 2, "invalid intrinsics"),
    "NaN viewmat": ("viewmats", [1], math.nan, 3, "non-finite (NaN or inf) entries"),
    "inf background": ("backgrounds", [0], math.inf, 1, "non-finite (NaN or inf) values"),
}


@pytest.mark.parametrize("case", list(CAMERA_CASES))
def test_bad_camera_values_name_argument_and_count(case: str) -> None:
    name, rows, value, cols, tail = CAMERA_CASES[case]
    s = _poison(name, rows, value, cols)
    with pytest.raises(ValueError, match=rf"^{name}: {len(rows)} of 2 cameras have {re.escape(tail)}"):
        _render(s)


def test_count_matches_a_random_mask() -> None:
    """Random mixture of bad entries in one argument: the count is that of the rows hit (set semantics)."""
    g = torch.Generator().manual_seed(11)
    s = _scene()
    hit = torch.rand(N, 3, generator=g) < 0.1
    s["scales"][hit] = -1.0
    s["scales"][torch.rand(N, 3, generator=g) < 0.05] = math.nan
    expected = int((~(torch.isfinite(s["scales"]) & (s["scales"] > 0))).any(dim=1).sum())
    assert expected > 1
    with pytest.raises(ValueError, match=rf"^scales: {expected} of {N} Gaussians"):
        _render(s)


def test_boundary_values_are_accepted() -> None:
    s = _scene()
    s["opacities"][0], s["opacities"][1] = 0.0, 1.0
    s["scales"][2] = 1e-30  # tiny but positive
    s["quats"][3] = torch.tensor([0.0, 0.0, 0.0, 1e-20])  # not normalised, not zero
    colors, alphas, _ = _render(s)
    assert torch.isfinite(colors).all() and torch.isfinite(alphas).all()
    empty = {k: (v[:0] if k in ("means", "quats", "scales", "opacities", "colors") else v) for k, v in s.items()}
    colors, _, _ = _render(empty)
    torch.testing.assert_close(colors, s["backgrounds"][:, None, None, :].expand(2, H, W, 3))


def test_switch_skips_the_check_and_changes_nothing() -> None:
    s = _scene()
    checked = _render(s)
    unchecked = _render(s, check_values=False)
    torch.testing.assert_close(checked[0], unchecked[0], rtol=0, atol=0)
    torch.testing.assert_close(checked[1], unchecked[1], rtol=0, atol=0)
    bad = _poison("opacities", [0], 2.0)
    with pytest.raises(ValueError, match="^opacities: 1 of"):
        _render(bad)
    _render(bad, check_values=False)  # no value check: renders whatever the kernels make of it
    with pytest.raises(ValueError, match="check_values must be a bool"):
        _render(s, check_values=1)


def test_first_bad_argument_in_call_order_is_reported() -> None:
    s = _poison("scales", [0], -1.0)
    s["opacities"][1] = math.nan
    with pytest.raises(ValueError, match="^scales: 1 of"):
        _render(s)


def test_per_scene_3dgs_checks_values_on_its_first_step_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 3DGS method's training loop asks for the value check once per process, then skips it."""
    import numpy as np

    import sparse3d.render.gaussians as front
    from sparse3d.cameras import Cameras, look_at
    from sparse3d.models.splatting.gs3d import GaussianSplatting
    from sparse3d.views import PosedImages

    viewmats = []
    for angle in (0.0, 0.5):
        centre = np.array([3 * np.cos(angle), 3 * np.sin(angle), 0.5])
        R = look_at(centre, np.zeros(3), up=(0.0, 0.0, -1.0))
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R, -R @ centre
        viewmats.append(m)
    K = torch.tensor([[20.0, 0.0, 8.0], [0.0, 20.0, 6.0], [0.0, 0.0, 1.0]]).repeat(2, 1, 1)
    views = PosedImages(torch.rand(2, 12, 16, 3), Cameras(K, torch.tensor(np.stack(viewmats), dtype=torch.float32),
                                                          16, 12))
    calls: list[bool] = []
    original = front.rasterize_gaussians

    def spy(*args, **kwargs):
        calls.append(kwargs.get("check_values", True))
        return original(*args, **kwargs)

    monkeypatch.setattr(front, "rasterize_gaussians", spy)
    for _ in range(2):  # a second instance stands for a resumed process: it checks again, once
        method = GaussianSplatting(default_steps=3, num_points=50)
        method.setup(views, 3)
        for step in range(3):
            method.training_step(step)
        method.render(views.cameras)
    assert calls == [True, False, False, True] * 2


def test_first_bad_gaussian_argument_names_the_first_bad_argument_in_order() -> None:
    """The one-pass per-Gaussian check names the first of (means, quats, scales, opacities, colors) holding a bad
    value, whichever Gaussian holds it, accepts the boundary values and treats NaN as bad everywhere."""
    from sparse3d.kernels.gaussian_projection import first_bad_gaussian_argument

    def args(s: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [s[k] for k in ("means", "quats", "scales", "opacities", "colors")]

    s = _scene()
    s["opacities"][[0, 1]] = torch.tensor([0.0, 1.0])  # boundaries are valid
    s["quats"][2] = torch.tensor([0.0, 0.0, -1e-30, 0.0])  # tiny but non-zero
    assert first_bad_gaussian_argument(*args(s)) is None
    sh = _scene()
    sh["colors"] = torch.randn(N, 16, 3)  # SH layout (N, K, 3)
    assert first_bad_gaussian_argument(*args(sh)) is None
    sh["colors"][N - 1, 15, 2] = math.inf
    assert first_bad_gaussian_argument(*args(sh)) == "colors"
    cases = [("means", math.nan), ("means", -math.inf), ("quats", math.nan), ("quats", math.inf),
             ("scales", 0.0), ("scales", math.inf), ("scales", math.nan), ("opacities", -1e-7),
             ("opacities", math.nan), ("opacities", 1.0000001), ("colors", math.nan)]
    for name, value in cases:
        bad = _scene()
        bad[name][N - 1].view(-1)[0] = value
        assert first_bad_gaussian_argument(*args(bad)) == name, (name, value)
    zero_quat = _scene()
    zero_quat["quats"][5] = 0.0
    assert first_bad_gaussian_argument(*args(zero_quat)) == "quats"
    # Several bad arguments on different Gaussians: the earliest argument wins, not the earliest Gaussian.
    both = _scene()
    both["colors"][0, 0] = math.nan
    both["scales"][N - 1, 1] = -1.0
    assert first_bad_gaussian_argument(*args(both)) == "scales"
    empty = {k: v[:0] for k, v in _scene().items()}
    assert first_bad_gaussian_argument(*args(empty)) is None
