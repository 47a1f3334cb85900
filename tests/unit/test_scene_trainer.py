"""The shared per-scene loop with a toy method whose optimum is known: a per-pixel colour fitted by SGD.

The toy method renders the same learnable (H, W, 3) image for every camera, so after enough steps on the input
views the test-view PSNR must rise (the test views share the scene's colour) and an exact resume must give the
same parameters as an uninterrupted run, RNG draws included (the method samples its view with torch's RNG).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras
from sparse3d.io.images import read_image
from sparse3d.train.scene_trainer import SceneMethod, SceneTrainer
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages, SceneViews

H, W = 12, 16


class ToyColour:
    """One learnable image; each step fits it to one random input view (plus a random jitter draw)."""

    default_steps = 40

    def __init__(self, lr: float = 0.2, nan_at: int | None = None) -> None:
        self.lr, self.nan_at = lr, nan_at
        self.image: torch.Tensor | None = None
        self.views: PosedImages | None = None
        self.draws: list[int] = []

    def setup(self, views: PosedImages, max_steps: int) -> None:
        self.views = views
        self.image = torch.zeros(H, W, 3, requires_grad=True)
        self.optimizer = torch.optim.SGD([self.image], lr=self.lr, momentum=0.5)

    def training_step(self, step: int) -> Mapping[str, Any]:
        assert self.views is not None and self.image is not None
        index = int(torch.randint(len(self.views), (1,)))
        self.draws.append(index)
        loss = (self.image - self.views.images[index]).square().mean() * 100
        if self.nan_at is not None and step == self.nan_at:
            loss = loss * float("nan")
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss, "view": float(index)}

    def render(self, cameras: Cameras) -> torch.Tensor:
        assert self.image is not None
        return self.image.detach().clamp(0, 1).expand(len(cameras), H, W, 3).clone()

    def state_dict(self) -> dict[str, Any]:
        assert self.image is not None
        return {"image": self.image.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        assert self.image is not None
        with torch.no_grad():
            self.image.copy_(state["image"])
        self.optimizer.load_state_dict(state["optimizer"])

    def export(self, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / "image.npy"
        np.save(path, self.image.detach().numpy())  # type: ignore[union-attr]
        return [path]


def _scene(num_inputs: int = 3) -> SceneViews:
    K = torch.tensor([[[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]])
    def views(n: int, names: bool) -> PosedImages:
        cams = Cameras(K=K.repeat(n, 1, 1), viewmat=torch.eye(4).repeat(n, 1, 1), width=W, height=H)
        images = torch.tensor([0.2, 0.6, 0.4]).expand(n, H, W, 3).clone()
        images[:, : H // 2] += 0.2
        masks = torch.zeros(n, H, W, dtype=torch.bool)
        masks[:, 2:6, 3:9] = True
        return PosedImages(images, cams, masks, "toy", tuple(f"v{i}.png" for i in range(n)) if names else ())
    return SceneViews(views(num_inputs, False), views(2, True))


def _cfg(**kw: Any) -> dict[str, Any]:
    return {"device": "cpu", "progress": False, "log_every": 10, **kw}


def test_fit_scores_renders_exports_and_summarises(tmp_path: Path) -> None:
    method = ToyColour()
    assert isinstance(method, SceneMethod)
    summary = SceneTrainer(_cfg(), tmp_path / "run").fit(method, _scene())
    assert summary["steps"] == 40 and summary["max_steps"] == 40
    assert summary["test_initial"]["psnr"] < 10 < 30 < summary["test"]["psnr"]
    assert set(summary["test"]) == {"psnr", "ssim", "psnr_m"}
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["test"] == summary["test"] and on_disk["exports"] == [str(tmp_path / "run" / "image.npy")]
    render = read_image(tmp_path / "run" / "renders" / "test" / "v1.png")
    np.testing.assert_allclose(render, method.render(_scene().test.cameras)[0].numpy(), atol=1 / 255)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert any((tmp_path / "run" / "tb").iterdir())


def test_resume_continues_exactly(tmp_path: Path) -> None:
    full = ToyColour()
    torch.manual_seed(123)  # the loop seeds itself: an outside seed must not matter
    SceneTrainer(_cfg(seed=5, max_steps=30), tmp_path / "full").fit(full, _scene())
    first = ToyColour()
    SceneTrainer(_cfg(seed=5, max_steps=12, ckpt_every=4), tmp_path / "first").fit(first, _scene())
    second = ToyColour()
    summary = SceneTrainer(_cfg(seed=5, max_steps=30), tmp_path / "second").fit(
        second, _scene(), resume=tmp_path / "first")
    assert summary["resumed_from"] == str(tmp_path / "first" / "checkpoints" / "last.ckpt")
    assert first.draws + second.draws == full.draws  # the RNG stream continues where it stopped
    assert torch.equal(second.image, full.image)
    assert summary["test_initial"] == json.loads((tmp_path / "first" / "summary.json").read_text())["test_initial"]
    assert sorted(p.name for p in (tmp_path / "first" / "checkpoints").glob("step_*")) == [
        "step_0000004.ckpt", "step_0000008.ckpt"]  # ckpt_keep=2 pruned step 0


def test_auto_resume_of_a_finished_run_only_renders(tmp_path: Path) -> None:
    SceneTrainer(_cfg(max_steps=5), tmp_path / "run").fit(ToyColour(), _scene())
    again = ToyColour()
    summary = SceneTrainer(_cfg(max_steps=5), tmp_path / "run").fit(again, _scene(), resume="auto")
    assert again.draws == [] and summary["steps"] == 5 and summary["resumed_from"]
    fresh = SceneTrainer(_cfg(max_steps=5), tmp_path / "new").fit(ToyColour(), _scene(), resume="auto")
    assert fresh["resumed_from"] is None


def test_zero_steps_and_errors(tmp_path: Path) -> None:
    method = ToyColour()
    summary = SceneTrainer(_cfg(max_steps=0), tmp_path / "zero").fit(method, _scene())
    assert summary["steps"] == 0 and method.draws == [] and summary["test"] == summary["test_initial"]
    with pytest.raises(RuntimeError, match="non-finite training loss at step 3"):
        SceneTrainer(_cfg(), tmp_path / "nan").fit(ToyColour(nan_at=2), _scene())
    with pytest.raises(UserError, match="trainer.max_steps=-1 is out of range"):
        SceneTrainer(_cfg(max_steps=-1), tmp_path / "neg").fit(ToyColour(), _scene())
    with pytest.raises(UserError, match="invalid per-scene trainer config"):
        SceneTrainer({"max_steps": "many"}, tmp_path / "bad")
    with pytest.raises(UserError, match="not a per-scene checkpoint"):
        bad = tmp_path / "bad.ckpt"
        from sparse3d.train.checkpoint import save_checkpoint

        save_checkpoint({"model": {}, "step": 1}, bad)
        SceneTrainer(_cfg(), tmp_path / "x").fit(ToyColour(), _scene(), resume=bad)
