"""Shared fixtures: Hydra composition against the installed package, a toy model module, console scripts.

The toy module is written to a temp dir and put on ``sys.path`` (and on ``PYTHONPATH`` for
subprocesses) so tests exercise the same "user model outside the package" path a real user takes with
``--config-dir``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

TOY_MODULE_NAME = "sparse3d_toy_models"

TOY_MODULE_SOURCE = '''
"""Toy regression model and data following the sparse3d model protocol (test support)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

TRUE_WEIGHT = (1.5, -2.0, 0.5)
TRUE_BIAS = 0.3


def make_regression(num_samples: int, seed: int, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, len(TRUE_WEIGHT), generator=g)
    y = x @ torch.tensor(TRUE_WEIGHT) + TRUE_BIAS + noise * torch.randn(num_samples, generator=g)
    return x, y


def generate_regression_data(root: str, num_samples: int = 32, val_samples: int = 16, seed: int = 0) -> Path:
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", num_samples, seed), ("valid", val_samples, seed + 1)):
        x, y = make_regression(n, s)
        torch.save({"x": x, "y": y}, out / f"{split}.pt")
    return out


class RegressionDataset(Dataset):
    def __init__(self, root: str | None = None, split: str = "train", num_samples: int = 32, seed: int = 0) -> None:
        if root is not None:
            path = Path(root) / f"{split}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"no split file {path}")
            data = torch.load(path)
            self.x, self.y = data["x"], data["y"]
        else:
            self.x, self.y = make_regression(num_samples, seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


class LinearRegressor(nn.Module):
    def __init__(self, in_features: int = 3, dropout: float = 0.0, nan_at_step: int | None = None,
                 scale: float = 1.0, random_validation: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)
        self.dropout = nn.Dropout(dropout)
        self.nan_at_step = nan_at_step
        self.scale = scale
        self.random_validation = random_validation  # mimics evaluation with random subsampling
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(self.dropout(batch["x"] * self.scale)).squeeze(-1)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        err = self(batch) - batch["y"]
        loss = (err ** 2).mean()
        if self.nan_at_step is not None and self.calls == self.nan_at_step:
            loss = loss * float("nan")
        return {"loss": loss, "mae": err.abs().mean().detach()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.random_validation:
            torch.rand(1)
        err = self(batch) - batch["y"]
        return {"sq_err_sum": (err ** 2).sum(), "count": torch.tensor(float(err.numel()))}

    def aggregate_validation(self, outputs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        total = sum(float(o["sq_err_sum"]) for o in outputs)
        count = sum(float(o["count"]) for o in outputs)
        return {"mse": total / count}

    def summary(self) -> dict[str, float]:
        return {"weight_norm": float(self.linear.weight.detach().norm())}
'''

CONFIG_FILES = {
    "model/my_model.yaml": f"""
        _target_: {TOY_MODULE_NAME}.LinearRegressor
        in_features: 3
        """,
    "data/my_data.yaml": f"""
        root: ${{paths.data_dir}}/toy_regression
        generate_if_missing: true
        generator:
          _target_: {TOY_MODULE_NAME}.generate_regression_data
          root: ${{data.root}}
          num_samples: 32
          val_samples: 16
          seed: 0
        train:
          _target_: {TOY_MODULE_NAME}.RegressionDataset
          root: ${{data.root}}
          split: train
        val:
          _target_: {TOY_MODULE_NAME}.RegressionDataset
          root: ${{data.root}}
          split: valid
        batch_size: 8
        num_workers: 0
        """,
    "experiment/toy.yaml": """
        # @package _global_
        defaults:
          - override /model: my_model
          - override /data: my_data
          - override /optimizer: sgd
        experiment_name: toy
        trainer:
          device: cpu
          max_steps: 8
          ckpt_every: 4
          log_every: 2
          progress: false
        optimizer:
          lr: 0.05
          momentum: 0.0
        """,
    "generator/toy.yaml": f"""
        # @package _global_
        experiment_name: toy
        out_dir: ${{paths.data_dir}}/toy_regression
        generator:
          _target_: {TOY_MODULE_NAME}.generate_regression_data
          root: ${{out_dir}}
          num_samples: 16
        """,
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the marks here too: the wheel job runs these tests outside the tree, without pyproject."""
    config.addinivalue_line("markers", "slow: runs longer than ~30 s (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "fuzz: the kernel fuzzing job (run with -m fuzz or SPARSE3D_RUN_FUZZ=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the default run fast: ``slow`` tests run only when selected with ``-m`` (e.g. ``-m slow``) or when
    ``SPARSE3D_RUN_SLOW=1`` is set; the ``fuzz`` job only with ``-m fuzz`` or ``SPARSE3D_RUN_FUZZ=1``."""
    markexpr = config.getoption("markexpr") or ""
    run_slow = bool(markexpr) or os.environ.get("SPARSE3D_RUN_SLOW") == "1"
    run_fuzz = "fuzz" in markexpr or os.environ.get("SPARSE3D_RUN_FUZZ") == "1"
    skip_slow = pytest.mark.skip(reason="slow test: select with -m slow or set SPARSE3D_RUN_SLOW=1")
    skip_fuzz = pytest.mark.skip(reason="fuzzing job: select with -m fuzz or set SPARSE3D_RUN_FUZZ=1")
    for item in items:
        if "fuzz" in item.keywords and not run_fuzz:
            item.add_marker(skip_fuzz)
        elif "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture
def hydra_compose() -> Iterator[Callable[..., DictConfig]]:
    """``compose(config_name, overrides=[...], return_hydra_config=False)`` over ``pkg://sparse3d.configs``."""
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="sparse3d.configs"):

        def _compose(config_name: str, overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
            return compose(config_name, overrides=overrides or [], return_hydra_config=return_hydra_config)

        yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def toy_module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``sparse3d_toy_models.py`` (put on sys.path / PYTHONPATH by other fixtures)."""
    module_dir = tmp_path_factory.mktemp("toy_module")
    (module_dir / f"{TOY_MODULE_NAME}.py").write_text(textwrap.dedent(TOY_MODULE_SOURCE), encoding="utf-8")
    return module_dir


@pytest.fixture
def toy(toy_module_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The imported toy module (removed from ``sys.modules`` afterwards)."""
    monkeypatch.syspath_prepend(str(toy_module_dir))
    sys.modules.pop(TOY_MODULE_NAME, None)
    module = importlib.import_module(TOY_MODULE_NAME)
    yield module
    sys.modules.pop(TOY_MODULE_NAME, None)


@pytest.fixture(scope="session")
def toy_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user config dir (for ``--config-dir``) with model/data/experiment/generator entries for the toy."""
    config_dir = tmp_path_factory.mktemp("user_configs")
    for rel, text in CONFIG_FILES.items():
        path = config_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return config_dir


def console_script(name: str) -> str:
    """Path of an installed console script next to the running interpreter (works in any venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"console script {name!r} is not installed next to {sys.executable}")
    return found


@pytest.fixture(scope="session")
def script() -> Callable[[str], str]:
    """Resolve a console script name (``sparse3d-train``, ``torchrun``) to its installed path."""
    return console_script


@pytest.fixture(scope="session")
def run_cli(toy_module_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a console script in a subprocess with the toy module importable and a clean environment.

    The working directory is a scratch dir, so a forgotten ``paths.output_root`` never litters the repo.
    """
    scratch_cwd = tmp_path_factory.mktemp("cli_cwd")

    def _run(
        args: list[str], timeout: float = 240, extra_env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(toy_module_dir), env.get("PYTHONPATH", "")]))
        for key in ("SPARSE3D_OUTPUT_ROOT", "SPARSE3D_DATA_DIR", "SPARSE3D_ROOT", "HYDRA_FULL_ERROR",
                    "WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
            env.pop(key, None)
        env.setdefault("OMP_NUM_THREADS", "1")
        if extra_env:
            env.update(extra_env)
        if args and os.sep not in args[0]:
            args = [console_script(args[0]), *args[1:]]
        return subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(cwd or scratch_cwd)
        )

    return _run


@pytest.fixture(scope="session")
def tiny_spare_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated 64x48 SpaRe scene (lighting 3 only), shared by the per-scene method tests."""
    from sparse3d.datasets.synth.spare_scenes import generate_spare_scenes

    root = tmp_path_factory.mktemp("spare_one") / "data"
    return generate_spare_scenes(root, num_scenes=1, width=64, height=48, lightings=[3], naming="Synthetic",
                                 progress=False)
