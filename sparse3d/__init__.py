"""sparse3d: sparse 3D perception and reconstruction on shared NVIDIA Warp sparse-voxel kernels."""

import os as _os
from pathlib import Path as _Path

# Idle OpenMP workers sleep instead of spinning (unless the user chose otherwise). With torch's default spin-wait,
# every parallel op on a shared few-core machine stalls about 8 ms for threads that other processes hold, which
# made the DSVT layers 2-5x slower. Effective only when sparse3d is imported before torch, as the console scripts do.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sparse3d import _checkout

__version__ = "0.1.0"

# In a source checkout, sparse3d.models, .kernels, ... live beside this folder: map them (see sparse3d._checkout).
_checkout.install(_Path(__file__).resolve().parent)
