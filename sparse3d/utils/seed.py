"""Seeding helpers shared by the trainer and the CLIs.

One function seeds every RNG a pipeline touches (python, numpy, torch CPU and CUDA) so runs are
reproducible from a single integer; data workers get derived seeds so they do not repeat each other.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_SEED_MASK = 2**32 - 1


def seed_everything(seed: int) -> int:
    """Seed python's ``random``, numpy's global RNG and torch (all devices); return the seed used."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed & _SEED_MASK)
    torch.manual_seed(seed)
    return seed


def derive_seed(*parts: int) -> int:
    """Combine integers (seed, epoch, rank, ...) into one 63-bit seed without obvious collisions.

    A plain sum would make ``(seed=1, epoch=0)`` and ``(seed=0, epoch=1)`` identical; mixing with large
    odd multipliers keeps the streams apart.
    """
    value = 0x5EED
    for part in parts:
        value = (value * 1_000_003 + int(part) * 2_654_435_761 + 0x9E3779B9) & (2**63 - 1)
    return value


def seed_data_worker(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: seed numpy and ``random`` from torch's per-worker seed.

    torch seeds each worker's torch RNG from the loader's base seed; numpy and ``random`` would otherwise
    start from the parent's state in every worker and produce identical augmentations.
    """
    del worker_id  # the per-worker torch seed already includes it
    worker_seed = torch.initial_seed() & _SEED_MASK
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def configure_determinism(enabled: bool) -> None:
    """Ask torch for deterministic kernels (warn-only, so unsupported ops still run)."""
    if not enabled:
        return
    # cuBLAS needs this before the first CUDA call to be deterministic; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
