"""SparseFlex field files: the ``field.npz`` a fit writes, how to tell it from a saved grid, and its mesh.

A field holds ``sdf`` and ``deform`` per shared cube corner (the index space of
:func:`sparse3d.kernels.flexicubes.cube_corner_table` over ``cube_coords``), raw ``beta`` (N, 12), ``alpha`` (N, 8) and
``gamma`` (N,) weights per cube, ``resolution`` and ``cube_coords`` (N, 3), and optionally ``center`` / ``scale``
(``world = local * scale + center``; identity without). :func:`read_field` validates every entry and raises one
line naming the file; :func:`field_mesh` is the FlexiCubes inference extraction with the stored weights, in
input coordinates, exactly as the fit exports ``mesh.ply``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sparse3d.utils.errors import UserError

__all__ = ["FIELD_KEYS", "field_mesh", "npz_kind", "read_field", "write_field"]

FIELD_KEYS: tuple[str, ...] = ("sdf", "deform", "beta", "alpha", "gamma", "resolution", "cube_coords")
"""Entries every SparseFlex ``field.npz`` holds (``center`` and ``scale`` are optional: identity without)."""
_GRID_FORMAT = "sparse3d.sparse_sdf_grid"  # SparseSDFGrid.save's format entry (kept here to avoid importing Warp)


def _npz_keys(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return list(data.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npz archive ({' '.join(str(exc).split()) or type(exc).__name__})") from None


def npz_kind(path: str | Path) -> str:
    """``grid`` for a :meth:`SparseSDFGrid.save` file, ``field`` for a SparseFlex ``field.npz``;
    :class:`UserError` naming the file and its entries for any other ``.npz``."""
    p = Path(path)
    keys = _npz_keys(p)
    if "format" in keys:
        with np.load(p, allow_pickle=False) as data:
            fmt = data["format"]
        if fmt.shape == () and fmt.dtype.kind == "U" and str(fmt) == _GRID_FORMAT:
            return "grid"
    if all(k in keys for k in FIELD_KEYS):
        return "field"
    raise UserError(f"{p}: .npz is neither a SparseFlex grid (format={_GRID_FORMAT!r}) nor a SparseFlex field "
                    f"({', '.join(FIELD_KEYS)}); it holds {', '.join(sorted(keys)) or 'nothing'}")


def read_field(path: str | Path) -> dict[str, np.ndarray]:
    """The entries of a field file, checked for the shapes the extraction needs (one-line UserError otherwise)."""
    path = Path(path)
    keys = _npz_keys(path)
    missing = [k for k in FIELD_KEYS if k not in keys]
    if missing:
        raise UserError(f"{path}: not a SparseFlex field: missing entries {', '.join(missing)}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    res = arrays["resolution"]
    if res.shape != () or not np.issubdtype(res.dtype, np.integer) or not 1 <= int(res) <= 4096:
        raise UserError(f"{path}: resolution must be an integer in 1..4096, got {res.tolist()!r}")
    r = int(res)
    coords = arrays["cube_coords"]
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.issubdtype(coords.dtype, np.integer):
        raise UserError(f"{path}: cube_coords must be an (N, 3) integer array, got {coords.dtype} {coords.shape}")
    if coords.size and (coords.min() < 0 or coords.max() >= r):
        raise UserError(f"{path}: cube_coords must lie in [0, {r})")
    n = len(coords)
    if len(np.unique(coords.astype(np.int64) @ np.array([r * r, r, 1], np.int64))) != n:
        raise UserError(f"{path}: cube_coords has duplicate cubes")
    for name, shape in (("beta", (n, 12)), ("alpha", (n, 8)), ("gamma", (n,))):
        if arrays[name].shape != shape:
            raise UserError(f"{path}: {name} must have shape {shape} (one row per cube), got {arrays[name].shape}")
    for name in ("sdf", "deform", "beta", "alpha", "gamma"):
        if not np.issubdtype(arrays[name].dtype, np.floating) or not np.isfinite(arrays[name]).all():
            raise UserError(f"{path}: {name} must hold finite floats")
    center = np.asarray(arrays.get("center", np.zeros(3)), np.float64)
    scale = np.asarray(arrays.get("scale", np.float64(1.0)), np.float64)
    if center.shape != (3,) or scale.shape != () or not np.isfinite(center).all() or not float(scale) > 0:
        raise UserError(f"{path}: center must be 3 finite numbers and scale a number > 0")
    arrays["center"], arrays["scale"] = center, scale
    return arrays


def write_field(path: str | Path, arrays: dict[str, Any]) -> Path:
    """Write a field atomically (temporary file, then rename) as a compressed ``.npz``."""
    from sparse3d.train.checkpoint import atomic_write

    missing = [k for k in FIELD_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"a field needs the entries {', '.join(missing)}")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a path
            np.savez_compressed(handle, **arrays)

    return atomic_write(path, write)


def field_mesh(arrays: dict[str, np.ndarray], path: str | Path = "field") -> tuple[np.ndarray, np.ndarray]:
    """FlexiCubes inference mesh of a :func:`read_field` result: vertices (V, 3) float32 in input coordinates and
    faces (F, 3) int64."""
    import torch

    from sparse3d.kernels.flexicubes import cube_corner_table, extract_mesh

    r = int(arrays["resolution"])
    cubes = torch.from_numpy(np.ascontiguousarray(arrays["cube_coords"], dtype=np.int64))
    keys, table = cube_corner_table(cubes, r)
    v = len(keys)
    if arrays["sdf"].shape != (v,) or arrays["deform"].shape != (v, 3):
        raise UserError(f"{path}: sdf and deform must have one row per shared cube corner ({v}), got "
                        f"{arrays['sdf'].shape} and {arrays['deform'].shape}")

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[name], dtype=np.float32))

    with torch.no_grad():
        mesh = extract_mesh(cubes, r, t("sdf"), t("deform"), t("beta"), t("alpha"), t("gamma"), training=False,
                            corners=(keys, table))
    local = mesh.vertices.cpu().numpy().astype(np.float64)
    world = local * float(arrays.get("scale", 1.0)) + np.asarray(arrays.get("center", np.zeros(3)), np.float64)
    return world.astype(np.float32), mesh.faces.cpu().numpy().astype(np.int64)
