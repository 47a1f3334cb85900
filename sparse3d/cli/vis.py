"""``sparse3d-vis``: look at point clouds, KITTI frames, detections, meshes, 3DGS scenes, posed image sets,
SparseFlex grids and fields, and training runs.

A thin front-end: :func:`sparse3d.vis.sources.build_scene` reads the inputs into a scene,
:mod:`sparse3d.vis.camera` places the camera and :mod:`sparse3d.vis.render` draws it -- in a window when a
display is available, else headless with ``--save``. A user mistake (missing file, unknown format, bad value)
prints one line ``sparse3d-vis: error: <file or argument>: <problem>`` and exits with status 2, without
writing an output file.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from sparse3d.utils.errors import UserError
from sparse3d.vis.camera import VIEWS
from sparse3d.vis.colors import COLOR_MODES
from sparse3d.vis.detect import TYPES
from sparse3d.vis.sparseflex import MAX_CUBES, SHOW_MODES

APP = "sparse3d-vis"
EXIT_USAGE = 2
MIN_SIZE, MAX_SIZE = 16, 8192

EXAMPLES = """\
examples:
  sparse3d-vis scan.bin                                   # a window, if a display is available
  sparse3d-vis /data/kitti --frame 000008 --view bev --save gt.png          # KITTI frame + label_2 boxes
  sparse3d-vis kitti/training/velodyne/000008.bin out/detections.json --score-threshold 0.3 --save det.png
  sparse3d-vis /data/kitti out/label_2 --frame 8 --view iso --save det.png   # KITTI result rows via calib
  sparse3d-vis sequences/00 --frame 12 --color label --save labels.png
  sparse3d-vis frames/ --frame 000012 --color intensity --save f12.png   # frames/000012.bin
  sparse3d-vis bunny.glb --wireframe --orbit 60 --save turntable.mp4     # 2 s at 30 fps
  sparse3d-vis point_cloud.ply --glyphs 2000 --view front --save splats.png
  sparse3d-vis /data/spare --frame scan1 --save cameras.png              # SpaRe / DTU scene
  sparse3d-vis outputs/train/gs3d_dtu/<run> --save run.png               # a per-scene run's 3DGS export
  sparse3d-vis grid.npz --show both --save grid.png      # SparseFlex grid (SparseSDFGrid.save): cubes + mesh
  sparse3d-vis outputs/train/sparseflex_fit/<run>/field.npz --show cubes --max-cubes 50000 --save cubes.png
  sparse3d-vis outputs/train/sparseflex_fit/<run> --save fit.png          # a SparseFlex fit run's mesh.ply
  sparse3d-vis scan.bin --lookat 10,0,0 --eye -10,0,8 --size 1280x720 --save look.png

KITTI frames (a root, training/ or testing/ folder, or velodyne/<id>.bin with calib/ and label_2/ beside
velodyne/) show their label_2 boxes as ground truth (blue); DontCare regions are not drawn. Detections
(sparse3d-detect's detections.json, its label_2 result rows, or its output folder) are predictions (green), read
for --frame, else for the frame of the scan or KITTI frame given with them. Boxes carry a heading tick; points
inside boxes take the box colour. Mesh boundary edges (used by one triangle) are magenta. SparseFlex .npz files
are a grid or a fit's field by their keys (--type grid|field overrides); their active cubes are teal edges,
subsampled (with a note) above --max-cubes.
In a window: drag to orbit, W toggles the wireframe, +/- point size, H lists Open3D's keys.
"""


class _UsageError(Exception):
    """An argparse error, reported in the one-line format instead of argparse's usage block."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _argparse_message(message: str) -> str:
    """argparse's wording as ``<argument>: <problem>``."""
    if message.startswith("argument "):
        return message[len("argument "):]
    for prefix, problem in (("the following arguments are required: ", "required"),
                            ("unrecognized arguments: ", "unrecognized argument")):
        if message.startswith(prefix):
            return f"{message[len(prefix):]}: {problem}"
    return message


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 960x720, got {text!r}")
    w, h = int(parts[0]), int(parts[1])
    if not (MIN_SIZE <= w <= MAX_SIZE and MIN_SIZE <= h <= MAX_SIZE):
        raise argparse.ArgumentTypeError(f"width and height must lie in {MIN_SIZE}..{MAX_SIZE}, got {w}x{h}")
    return w, h


def _vec3(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v == v and abs(v) != float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected three finite numbers x,y,z, got {text!r}")
    return values  # type: ignore[return-value]


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``sparse3d-vis`` argument parser."""
    p = _Parser(prog=APP, description="Show sparse3d data in a window, or render it headless to PNG / MP4.",
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="point cloud (.bin .npy .pcd .ply), KITTI root / training folder / velodyne .bin, "
                        "detections.json or KITTI label_2 results, mesh (.ply .obj .glb .off .stl), 3DGS .ply, "
                        "SpaRe/DTU root or scene folder, SparseFlex grid or field .npz, training run folder, or a "
                        "folder of frames")
    p.add_argument("--type", choices=("auto", *TYPES), default="auto",
                   help="read every PATH as this type instead of detecting it from the content")
    p.add_argument("--color", choices=COLOR_MODES, default="auto",
                   help="point colouring (auto: rgb, else intensity, else height)")
    p.add_argument("--view", choices=VIEWS, default=None,
                   help="preset camera: bev (top-down, +x up), front (level, looking along +x), iso (default)")
    p.add_argument("--lookat", type=_vec3, metavar="X,Y,Z", help="camera target (with --eye)")
    p.add_argument("--eye", type=_vec3, metavar="X,Y,Z", help="camera position (with --lookat)")
    p.add_argument("--save", type=Path, metavar="FILE", help="render headless to FILE (.png, or .mp4 with --orbit)")
    p.add_argument("--orbit", type=_positive_int, metavar="N", help="N-frame turntable (needs --save FILE.mp4)")
    p.add_argument("--fps", type=_positive_float, default=30.0, help="turntable frame rate (default 30)")
    p.add_argument("--size", type=_size, default=(960, 720), metavar="WxH", help="image size (default 960x720)")
    p.add_argument("--frame", metavar="ID",
                   help="frame id in a folder of frames, a KITTI folder or detection results, or scene name in a "
                        "SpaRe root")
    p.add_argument("--score-threshold", type=_finite_float, default=None, metavar="S",
                   help="draw only the predicted boxes scoring at least S (default: all)")
    p.add_argument("--glyphs", type=_positive_int, metavar="K",
                   help="3DGS: draw the K most opaque Gaussians as ellipsoids instead of all centres as points")
    p.add_argument("--wireframe", action="store_true", help="meshes: draw the triangle edges")
    p.add_argument("--normals", action="store_true", help="meshes: draw vertex normals")
    p.add_argument("--voxel-size", type=_positive_float, metavar="S",
                   help="points: draw the occupied voxels of edge S instead of the points")
    p.add_argument("--show", choices=SHOW_MODES, default="both",
                   help="SparseFlex grids and fields: the active cubes, the extracted mesh, or both (default)")
    p.add_argument("--max-cubes", type=_positive_int, default=MAX_CUBES, metavar="N",
                   help=f"SparseFlex: draw at most N cubes, an evenly strided subset beyond (default {MAX_CUBES})")
    p.add_argument("--point-size", type=_positive_float, default=2.0, metavar="PX",
                   help="point diameter in pixels (default 2)")
    return p


def _check_output(args: argparse.Namespace) -> None:
    """Combinations argparse cannot check; all before any file is read or written."""
    if (args.lookat is None) != (args.eye is None):
        raise UserError("--lookat/--eye: give both, or neither")
    if args.lookat is not None and args.view is not None:
        raise UserError("--view: give either --view or --lookat/--eye")
    if args.lookat is not None and tuple(args.lookat) == tuple(args.eye):
        raise UserError("--eye: must differ from --lookat")
    if args.save is None:
        if args.orbit is not None:
            raise UserError("--orbit: needs --save FILE.mp4")
        return
    suffix = args.save.suffix.lower()
    if suffix not in (".png", ".mp4"):
        raise UserError(f"--save: {args.save}: the file name must end in .png or .mp4")
    if suffix == ".mp4" and args.orbit is None:
        raise UserError(f"--save: {args.save}: an .mp4 is a turntable; add --orbit N")
    if suffix == ".png" and args.orbit is not None:
        raise UserError(f"--orbit: writes a video; use --save FILE.mp4, not {args.save}")
    if args.orbit is not None and args.lookat is not None:
        raise UserError("--orbit: turns around the scene centre; combine it with --view, not --lookat/--eye")
    if suffix == ".mp4" and (args.size[0] % 2 or args.size[1] % 2):
        raise UserError(f"--size: an MP4 needs an even width and height, got {args.size[0]}x{args.size[1]}")
    if not args.save.parent.is_dir():
        raise UserError(f"--save: {args.save}: folder {args.save.parent} does not exist")
    if args.save.is_dir():
        raise UserError(f"--save: {args.save} is a folder")


def run(args: argparse.Namespace) -> Path | None:
    """Build the scene, place the camera, render; returns the written file (None for a window)."""
    _check_output(args)
    from sparse3d.vis import camera as cam
    from sparse3d.vis import render
    from sparse3d.vis.sources import VisOptions, build_scene

    options = VisOptions(type=args.type, color=args.color, frame=args.frame, glyphs=args.glyphs or 0,
                         wireframe=args.wireframe, normals=args.normals, voxel_size=args.voxel_size,
                         point_size=args.point_size, score_threshold=args.score_threshold, show=args.show,
                         max_cubes=args.max_cubes)
    scene = build_scene(args.paths, options)
    for note in scene.notes:
        print(f"{APP}: note: {note}", flush=True)
    width, height = args.size
    if args.orbit is not None:
        cameras = cam.orbit_cameras(scene, args.orbit, width, height, view=args.view or "iso")
        return render.save_turntable(scene, cameras, args.save, fps=args.fps)
    if args.lookat is not None:
        camera = cam.look_at_camera(args.eye, args.lookat, scene.up, width, height, image_up_fallback=scene.forward)
    else:
        camera = cam.view_camera(scene, args.view or "iso", width, height)
    if args.save is not None:
        return render.save_png(scene, camera, args.save)
    render.show(scene, camera)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0, or 2 for a user error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        written = run(args)
    except _UsageError as exc:
        print(f"{APP}: error: {_argparse_message(str(exc))}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except UserError as exc:
        print(f"{APP}: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if written is not None:
        print(f"{APP}: wrote {written}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
