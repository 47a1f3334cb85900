"""``sparse3d-mesh``: extract a mesh with sparse FlexiCubes from a grid, an SDF volume, a mesh or a point cloud.

Examples::

    sparse3d-mesh input=bunny.obj resolution=256 out=bunny_256.ply
    sparse3d-mesh input=sdf.npy out=surface.glb
    sparse3d-mesh input=scan.ply resolution=512 out=scan.obj

A thin front-end over :func:`sparse3d.models.sparseflex.meshing.mesh_from_input`; it prints the mesh's size, its
open-boundary edge count, the time per stage and the process's peak memory. Bad input gives one line
``sparse3d-mesh: error: ...`` naming the file and exit status 2, with no output file left behind.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from sparse3d.cli import _hydra as H
from sparse3d.utils.errors import UserError

APP = "sparse3d-mesh"
_USAGE = f"{APP} input=<grid .npz | SDF .npy | mesh | point cloud> [resolution=256] [out=mesh.ply]"
OUT_SUFFIXES = (".ply", ".obj", ".glb")


def run_mesh(cfg: DictConfig) -> Path:
    """Extract the mesh of ``cfg.input`` and write it to ``cfg.out``; returns the written path."""
    from sparse3d.io.mesh import write_mesh
    from sparse3d.models.sparseflex.meshing import mesh_from_input

    if cfg.get("input") is None or not str(cfg.input).strip():
        raise UserError(f"input= is required: {_USAGE}")
    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else H.hydra_output_dir() / "mesh.ply"
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise UserError(f"out={out}: the mesh is written as {', '.join(OUT_SUFFIXES)}; got {out.suffix or 'no suffix'!r}")
    result = mesh_from_input(str(cfg.input), int(cfg.resolution), str(cfg.type), sign=str(cfg.sign),
                             progress=bool(cfg.get("progress", True)))
    H.remove_on_failure(out)
    write_mesh(out, result.mesh)
    times = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
    print(f"{APP}: {len(result.mesh.vertices)} vertices, {len(result.mesh.faces)} faces, "
          f"{result.boundary_edges} open-boundary edges from {result.num_cubes} cubes at {result.resolution}^3 "
          f"({result.kind}; {times}; peak RSS {result.peak_rss_mb:.0f} MB) -> {out}", flush=True)
    return out


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="mesh")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> None:
    run_mesh(cfg)


def main() -> None:
    """Console-script entry point."""
    _hydra_entry()


if __name__ == "__main__":
    main()
