"""Image metrics against analytic cases and a hand-written NumPy SSIM (sparse3d.metrics.image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse3d.metrics import image as M


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured image in [0, 1] with structure at several scales (so SSIM is far from 0 and 1)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(7 * xx + 3 * yy), np.cos(5 * yy - 2 * xx), np.sin(11 * xx * yy)], axis=-1)
    return np.clip(0.5 + 0.35 * base + 0.1 * rng.standard_normal((h, w, 3)), 0, 1)


# ------------------------------------------------------------------------------------------------------ PSNR
def test_identical_images_give_infinite_psnr_and_unit_ssim() -> None:
    img = _smooth_image(np.random.default_rng(0), 32, 40)
    assert math.isinf(float(M.psnr(img, img))) and float(M.psnr(img, img)) > 0
    assert float(M.ssim(img, img)) == pytest.approx(1.0, abs=1e-6)
    batch = np.stack([img, img])
    batch_pred = batch.copy()
    batch_pred[1, 0, 0, 0] = 1.0 - batch_pred[1, 0, 0, 0]
    values = M.psnr(batch_pred, batch)  # per image: inf for the identical one, finite for the other
    assert values.shape == (2,) and math.isinf(float(values[0])) and math.isfinite(float(values[1]))


@pytest.mark.parametrize("delta", [0.1, 3 / 255, 0.25])
def test_uniform_noise_of_known_amplitude(delta: float) -> None:
    """pred = gt +- delta at every sample -> MSE = delta^2 -> PSNR = 20 log10(1 / delta) exactly."""
    rng = np.random.default_rng(1)
    gt = rng.uniform(delta, 1 - delta, size=(20, 24, 3))
    pred = gt + delta * rng.choice([-1.0, 1.0], size=gt.shape)
    assert float(M.psnr(pred, gt)) == pytest.approx(20 * math.log10(1 / delta), abs=1e-9)
    assert float(M.psnr(torch.from_numpy(pred), torch.from_numpy(gt))) == pytest.approx(
        20 * math.log10(1 / delta)
    )


def test_masked_psnr_relations_with_the_mask_fraction() -> None:
    """Error only inside the mask: PSNR-M = PSNR + 10 log10(f); masked_full = PSNR; background ignored."""
    rng = np.random.default_rng(2)
    h, w = 30, 40
    gt = rng.uniform(0.2, 0.8, size=(h, w, 3))
    mask = np.zeros((h, w), dtype=bool)
    mask[5:17, 8:28] = True
    frac = mask.mean()
    pred = gt.copy()
    pred[mask] += rng.uniform(-0.1, 0.1, size=(int(mask.sum()), 3))
    full = float(M.psnr(pred, gt))
    masked = float(M.psnr_masked(pred, gt, mask))
    assert masked == pytest.approx(full + 10 * math.log10(frac), abs=1e-9)
    assert float(M.psnr_masked(pred, gt, mask, mode="masked_full")) == pytest.approx(full, abs=1e-9)
    # literal definition of the default mode: MSE over mask pixels x channels
    expected = -10 * math.log10(np.mean((pred[mask] - gt[mask]) ** 2))
    assert masked == pytest.approx(expected, abs=1e-9)
    # background errors change PSNR but not PSNR-M (either mode)
    noisy = pred.copy()
    noisy[~mask] = np.clip(noisy[~mask] + 0.2, 0, 1)
    assert float(M.psnr(noisy, gt)) < full - 1
    assert float(M.psnr_masked(noisy, gt, mask)) == pytest.approx(masked, abs=1e-12)
    assert float(M.psnr_masked(noisy, gt, mask, mode="masked_full")) == pytest.approx(full, abs=1e-12)


def test_masked_psnr_errors() -> None:
    img = np.full((8, 8, 3), 0.5)
    with pytest.raises(ValueError, match="no object pixels"):
        M.psnr_masked(img, img, np.zeros((8, 8), dtype=bool))
    with pytest.raises(ValueError, match="mask shape"):
        M.psnr_masked(img, img, np.ones((8, 7), dtype=bool))
    with pytest.raises(ValueError, match="mode"):
        M.psnr_masked(img, img, np.ones((8, 8), dtype=bool), mode="inside")


# ------------------------------------------------------------------------------------------------ boxes
def test_mask_bbox_on_drawn_shapes() -> None:
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:21, 30:41] = True  # rows 10..20, cols 30..40
    assert M.mask_bbox(mask) == (10, 20, 30, 40)
    mask[44, 3] = True  # a stray pixel extends the box down and left
    assert M.mask_bbox(mask) == (10, 44, 3, 40)
    single = np.zeros((5, 5), dtype=bool)
    single[2, 4] = True
    assert M.mask_bbox(torch.from_numpy(single)) == (2, 2, 4, 4)
    with pytest.raises(ValueError, match="no object pixels"):
        M.mask_bbox(np.zeros((4, 4), dtype=bool))
    img = np.arange(50 * 60 * 3, dtype=np.float64).reshape(50, 60, 3)
    cropped = M.crop(img, (10, 20, 30, 40))
    assert (
        cropped.shape == (11, 11, 3)
        and cropped[0, 0, 0] == img[10, 30, 0]
        and cropped[-1, -1, 2] == img[20, 40, 2]
    )


def test_grow_bbox_keeps_box_inside_the_image() -> None:
    assert M.grow_bbox((10, 30, 5, 40), 11, 50, 60) == (10, 30, 5, 40)  # already large enough
    assert M.grow_bbox((20, 20, 30, 32), 11, 50, 60) == (15, 25, 26, 36)  # symmetric growth
    assert M.grow_bbox((0, 2, 58, 59), 11, 50, 60) == (0, 10, 49, 59)  # shifted at the borders
    with pytest.raises(ValueError, match="smaller than"):
        M.grow_bbox((0, 2, 0, 2), 11, 8, 60)


# ------------------------------------------------------------------------------------------------- SSIM
def _numpy_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM written from Wang et al. (2004): 11x11 Gaussian window (sigma 1.5) normalised to sum 1, statistics
    at every position where the window lies fully inside the image ("valid", no padding), C1 = (0.01)^2,
    C2 = (0.03)^2 for data range 1; the map is averaged over positions and channels."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    h, w, channels = x.shape
    values = []
    for c in range(channels):
        for i in range(h - 10):
            for j in range(w - 10):
                px, py = x[i : i + 11, j : j + 11, c], y[i : i + 11, j : j + 11, c]
                mx, my = (window * px).sum(), (window * py).sum()
                vx = (window * px * px).sum() - mx * mx
                vy = (window * py * py).sum() - my * my
                cov = (window * px * py).sum() - mx * my
                values.append(
                    ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
                )
    return float(np.mean(values))


@pytest.mark.parametrize("noise", [0.02, 0.15])
def test_ssim_matches_a_hand_computation(noise: float) -> None:
    rng = np.random.default_rng(3)
    gt = _smooth_image(rng, 23, 29)
    pred = np.clip(gt + noise * rng.standard_normal(gt.shape), 0, 1)
    expected = _numpy_ssim(pred, gt)
    assert 0.05 < expected < 0.99  # a non-trivial case
    assert float(M.ssim(pred, gt)) == pytest.approx(expected, abs=1e-4)
    assert float(M.ssim(gt, pred)) == pytest.approx(expected, abs=1e-4)  # symmetric


def test_ssim_batch_is_per_image() -> None:
    rng = np.random.default_rng(4)
    gts = np.stack([_smooth_image(rng, 16, 20) for _ in range(3)])
    preds = np.clip(gts + 0.05 * rng.standard_normal(gts.shape), 0, 1)
    batch = M.ssim(preds, gts)
    assert batch.shape == (3,)
    for k in range(3):
        assert float(batch[k]) == pytest.approx(float(M.ssim(preds[k], gts[k])), abs=1e-7)


def test_ssim_bbox_crops_to_the_mask_box() -> None:
    rng = np.random.default_rng(5)
    gt = _smooth_image(rng, 40, 48)
    pred = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1)
    mask = np.zeros((40, 48), dtype=bool)
    mask[8:25, 10:36] = True
    expected = _numpy_ssim(pred[8:25, 10:36], gt[8:25, 10:36])
    assert float(M.ssim_bbox(pred, gt, mask)) == pytest.approx(expected, abs=1e-4)
    # a 3-pixel-tall object: the box grows to 11 rows (rows 12..22 around rows 16..18)
    thin = np.zeros((40, 48), dtype=bool)
    thin[16:19, 10:36] = True
    expected = _numpy_ssim(pred[12:23, 10:36], gt[12:23, 10:36])
    assert float(M.ssim_bbox(pred, gt, thin)) == pytest.approx(expected, abs=1e-4)


# --------------------------------------------------------------------------------------------- bad input
def test_size_mismatch_and_bad_values_are_errors() -> None:
    a, b = np.zeros((20, 20, 3)), np.zeros((20, 21, 3))
    for fn in (M.psnr, M.ssim):
        with pytest.raises(ValueError, match="never resized"):
            fn(a, b)
    with pytest.raises(ValueError, match="never resized"):
        M.psnr_masked(a, b, np.ones((20, 20), dtype=bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.psnr(a + 1.5, a)
    with pytest.raises(ValueError, match="NaN"):
        M.psnr(np.full((4, 4, 3), np.nan), a[:4, :4])
    with pytest.raises(ValueError, match="HWC"):
        M.psnr(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="at least 11x11"):
        M.ssim(np.zeros((10, 30, 3)), np.zeros((10, 30, 3)))
