"""Malformed-input corpus: hundreds of broken files and arguments against every reader, console script and public
API, each generated here from a valid tiny data set written by the project's own generators.

Every case asserts the user-facing contract for bad input:

* readers and public APIs raise :class:`~sparse3d.utils.errors.UserError` (or ``ValueError`` / ``OSError``, which
  the console scripts report the same way) with a one-line message naming the file or argument;
* console scripts (run in-process through their ``main()``, a handful also as subprocesses) exit non-zero, print
  exactly one ``<app>: error: ...`` line naming the input, never a traceback, and write no output file;
* ``sparse3d-spare check`` and :func:`~sparse3d.spare.check.check_submission` report a broken submission as
  problems naming the zip or the member (exit status 1), never by crashing.

The oracle of each case is the mutation itself: the valid input loads (checked once per data set), the mutated one
must be refused, naming what was mutated. Case ids are ``<area>-<case>``; :data:`AREA_COUNTS` tallies them.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from sparse3d.utils.errors import UserError

READER_ERRORS = (UserError, ValueError, OSError)
W, H = 40, 30  # SpaRe scene size
PW, PH = 32, 24  # posed-scene (LLFF, nerfstudio, COLMAP) full size; images_2 is 16x12


# ---------------------------------------------------------------------------------------------- case types
@dataclass
class Raises:
    """``call()`` must raise one of :data:`READER_ERRORS` with a one-line message containing one of ``needles``."""

    call: Callable[[], Any]
    needles: Sequence[str]


@dataclass
class Problems:
    """``call()`` returns submission problems: at least one, one of them naming one of ``needles``."""

    call: Callable[[], list[Any]]
    needles: Sequence[str]


@dataclass
class Cli:
    """A console script run in-process: non-zero exit, one ``<app>: error:`` line containing a needle, no
    traceback, and none of ``outputs`` created (or, for paths that existed, changed)."""

    app: str
    argv: list[str]
    needles: Sequence[str]
    outputs: Sequence[Path] = ()
    exit_code: int | None = None  # None: any non-zero status
    problems: bool = False  # `sparse3d-spare check`: the problems are listed on stdout, exit 1
    no_files: Sequence[tuple[Path, str]] = ()  # (folder, glob): nothing under folder may match after the run


@dataclass
class Ctx:
    """What a case may use: the session's valid data sets and a fresh folder to mutate copies in."""

    base: dict[str, Any]
    tmp: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def copy(self, name: str) -> Path:
        """A private copy of the valid data set ``name`` (a folder or a file)."""
        src = Path(self.base[name])
        dst = self.tmp / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return dst


Make = Callable[[Ctx], Raises | Problems | Cli]
CASES: list[tuple[str, Make]] = []


def case(area: str, name: str) -> Callable[[Make], Make]:
    def register(fn: Make) -> Make:
        CASES.append((f"{area}-{name}", fn))
        return fn

    return register


def add(area: str, name: str, fn: Make) -> None:
    CASES.append((f"{area}-{name}", fn))


# ------------------------------------------------------------------------------------------ byte helpers
def rand_bytes(n: int = 257, seed: int = 0) -> bytes:
    """Random bytes that are not valid UTF-8 text (0xff never occurs in UTF-8) nor any file magic."""
    data = bytearray(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    data[0], data[5] = 0xFF, 0xFE
    return bytes(data)


def truncate(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    return path


def png_bytes(width: int, height: int, channels: int = 3, dtype: Any = np.uint8, value: int = 100) -> bytes:
    image = np.full((height, width, channels) if channels > 1 else (height, width), value, dtype=dtype)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def jpeg_bytes(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), 100, np.uint8))
    assert ok
    return buf.tobytes()


def truncated_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR is intact (so header-only readers accept it) but whose pixel data stops half way."""
    rng = np.random.default_rng(1)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    assert ok
    data = buf.tobytes()
    return data[: len(data) // 2]


def replace_text(path: Path, old: str, new: str, count: int = 1) -> Path:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count))
    return path


def _write(ctx: Ctx, name: str, data: str | bytes) -> Path:
    path = ctx.tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _mkdir(ctx: Ctx, name: str) -> Path:
    (ctx.tmp / name).mkdir()
    return ctx.tmp / name


def _results(ctx: Ctx) -> Path:
    (ctx.tmp / "runs_in" / "0").mkdir(parents=True)
    (ctx.tmp / "runs_in" / "0" / "results.json").write_bytes(rand_bytes())
    return ctx.tmp / "runs_in"


# --------------------------------------------------------------------------------------------- base data
@pytest.fixture(scope="session")
def corpus_base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Valid tiny data sets, written once by the project's generators and checked to load."""
    from sparse3d.datasets.posed_scenes import load_colmap_scene, load_llff_scene, load_nerfstudio_scene
    from sparse3d.datasets.semantic_kitti import SemanticKittiDataset
    from sparse3d.datasets.spare import load_spare_scene
    from sparse3d.datasets.synth.lidar import generate_lidar_scenes
    from sparse3d.datasets.synth.posed_scenes import generate_posed_scenes
    from sparse3d.datasets.synth.spare_scenes import generate_spare_scenes
    from sparse3d.io.gaussian_ply import GaussianCloud, load_gaussian_ply, save_gaussian_ply
    from sparse3d.io.pointcloud import read_ply_points, write_kitti_bin, write_ply_points
    from sparse3d.io.spare import read_split, split_filename
    from sparse3d.spare.check import check_submission
    from sparse3d.spare.submission import expected_names
    from sparse3d.vis.detections import read_detections_json

    root = tmp_path_factory.mktemp("corpus_base")
    base: dict[str, Any] = {}
    spare = generate_spare_scenes(root / "spare", num_scenes=1, width=W, height=H, lightings=[3], naming="DTU",
                                  shadows=False, progress=False)
    split = spare / split_filename(1, "development")
    entries = read_split(split)
    scene = next(iter(entries))
    views = load_spare_scene(spare, split.name)
    assert views.inputs.images.shape == (3, H, W, 3) and views.test is not None
    base.update(spare=spare, split=split, scene=scene, entry=entries[scene])

    for fmt in ("llff", "nerfstudio", "colmap"):
        out = generate_posed_scenes(root / fmt, format=fmt, num_scenes=1, num_views=8, width=PW, height=PH,
                                    factors=[2], num_points=40, shadows=False, progress=False)
        (folder,) = [p for p in out.iterdir() if p.is_dir()]
        base[fmt] = folder
    assert load_llff_scene(base["llff"], factor=2).inputs.images.shape[1:3] == (PH // 2, PW // 2)
    assert load_nerfstudio_scene(base["nerfstudio"]).inputs.images.shape[1:3] == (PH, PW)
    assert load_colmap_scene(base["colmap"]).inputs.images.shape[1:3] == (PH, PW)

    lidar = generate_lidar_scenes(root / "lidar", num_scenes=2, val_scenes=1, num_beams=4, points_per_beam=32,
                                  progress=False)
    assert len(SemanticKittiDataset(lidar, split="train")[0]["points"]) > 0
    base["lidar"] = lidar

    rng = np.random.default_rng(0)
    n = 16
    cloud = GaussianCloud(
        means=torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32)),
        quats=torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n, 4)).astype(np.float32)), dim=1),
        scales=torch.full((n, 3), 0.1), opacities=torch.full((n,), 0.5),
        sh=torch.from_numpy(rng.normal(size=(n, 4, 3)).astype(np.float32)))
    base["gs_ply"] = save_gaussian_ply(root / "gaussians.ply", cloud)
    assert len(load_gaussian_ply(base["gs_ply"])) == n

    xyz = rng.normal(size=(20, 3)).astype(np.float32)
    base["points_ply"] = write_ply_points(root / "points.ply", xyz, intensity=np.ones(20, np.float32))
    ascii_rows = "\n".join(f"{x:.4f} {y:.4f} {z:.4f} 10 20 30" for x, y, z in xyz[:5])
    base["ascii_ply"] = root / "ascii.ply"
    base["ascii_ply"].write_text("ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
                                 "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
                                 f"end_header\n{ascii_rows}\n")
    assert read_ply_points(base["ascii_ply"])["colors"].shape == (5, 3)
    scan = np.concatenate([xyz, np.ones((20, 1), np.float32)], axis=1)
    base["scan_bin"] = write_kitti_bin(root / "frames" / "000000.bin", scan)
    base["boxes"] = root / "detect" / "detections.json"
    base["boxes"].parent.mkdir()
    base["boxes"].write_text(json.dumps({"000000": [{"name": "Car", "score": 0.5, "box_lidar": [0, 0, 0, 1, 1, 1, 0]}]}))
    assert len(read_detections_json(base["boxes"], "000000").boxes) == 1

    sub = root / "submission.zip"
    with zipfile.ZipFile(sub, "w") as archive:
        for name in expected_names(entries.values()):
            archive.writestr(name, png_bytes(W, H))
    assert check_submission(sub, split, W, H) == []
    base["zip"] = sub
    base["zip_names"] = expected_names(entries.values())
    return base


# ============================================================================================ SpaRe readers
def _spare_scene(ctx: Ctx) -> tuple[Path, Path, Any]:
    root = ctx.copy("spare")
    return root, root / ctx.base["scene"], ctx.base["entry"]


def _track1_split_name() -> str:
    from sparse3d.io.spare import split_filename

    return split_filename(1, "development")


def _load_all(root: Path, entry: Any, **kw: Any) -> Callable[[], Any]:
    """Load the scene's input and test views (images, masks, cameras) the way a per-scene method does."""
    from sparse3d.datasets.spare import load_spare_scene

    split = root / _track1_split_name()
    return lambda: load_spare_scene(root, split, scene=entry.scene, **kw)


def _spare_file(kind: str, view_of: str = "input") -> Callable[[Path, Any], Path]:
    from sparse3d.io.spare import camera_filename, image_filename, mask_filename

    def locate(scene_dir: Path, entry: Any) -> Path:
        view = entry.input_views[1] if view_of == "input" else entry.test_views[0]
        if kind == "camera":
            return scene_dir / "cameras" / camera_filename(view)
        if kind == "mask":
            return scene_dir / "masks" / mask_filename(entry.dataset, view)
        return scene_dir / image_filename(entry.dataset, view, 3)

    return locate


_CAMERA_MUTATIONS: dict[str, Callable[[Path], None]] = {
    "camera-11-numbers": lambda p: p.write_text(" ".join(p.read_text().split()[:11])),
    "camera-13-numbers": lambda p: p.write_text(p.read_text() + " 1.0"),
    "camera-token": lambda p: p.write_text(p.read_text().replace(p.read_text().split()[2], "1.0abc", 1)),
    "camera-nan": lambda p: p.write_text("nan " + " ".join(p.read_text().split()[1:])),
    "camera-inf": lambda p: p.write_text(" ".join(p.read_text().split()[:11]) + " inf"),
    "camera-empty": lambda p: p.write_text(""),
    "camera-random-bytes": lambda p: p.write_bytes(rand_bytes()),
    "camera-zero-matrix": lambda p: p.write_text("0 0 0 0\n0 0 0 0\n0 0 0 0\n"),
    "camera-rank-deficient": lambda p: p.write_text("1 0 0 0\n1 0 0 0\n0 0 1 1\n"),
    "camera-is-folder": lambda p: (p.unlink(), p.mkdir()),  # type: ignore[func-returns-value]
    "camera-missing": lambda p: p.unlink(),
}

_IMAGE_MUTATIONS: dict[str, Callable[[Path], None]] = {
    "truncated-png": lambda p: p.write_bytes(truncated_png(W, H)),
    "random-bytes": lambda p: p.write_bytes(rand_bytes()),
    "empty": lambda p: p.write_bytes(b""),
    "wrong-size": lambda p: p.write_bytes(png_bytes(W // 2, H // 2)),
    "transposed-size": lambda p: p.write_bytes(png_bytes(H, W)),
    "jpeg-named-png": lambda p: p.write_bytes(jpeg_bytes(W, H)),
    "is-folder": lambda p: (p.unlink(), p.mkdir()),  # type: ignore[func-returns-value]
    "missing": lambda p: p.unlink(),
    "header-only": lambda p: p.write_bytes(png_bytes(W, H)[:33]),
}


def _spare_mutation(kind: str, mutate: Callable[[Path], None], view_of: str = "input") -> Make:
    def make(ctx: Ctx) -> Raises:
        root, scene_dir, entry = _spare_scene(ctx)
        target = _spare_file(kind, view_of)(scene_dir, entry)
        mutate(target)
        return Raises(_load_all(root, entry), [target.name])

    return make


for _name, _mutate in _CAMERA_MUTATIONS.items():
    add("spare", _name, _spare_mutation("camera", _mutate))
for _name, _mutate in _IMAGE_MUTATIONS.items():
    add("spare", f"input-image-{_name}", _spare_mutation("image", _mutate))
    if _name != "missing":  # a test view without its image is allowed (the test split ships no ground truth)
        add("spare", f"test-image-{_name}", _spare_mutation("image", _mutate, "test"))
    if _name not in ("missing", "jpeg-named-png"):  # no mask is allowed; a JPEG mask decodes as a mask
        add("spare", f"mask-{_name}", _spare_mutation("mask", _mutate))


@case("spare", "scene-folder-missing")
def _(ctx: Ctx) -> Raises:
    root, scene_dir, entry = _spare_scene(ctx)
    shutil.rmtree(scene_dir)
    return Raises(_load_all(root, entry), [entry.scene])


@case("spare", "cameras-folder-missing")
def _(ctx: Ctx) -> Raises:
    root, scene_dir, entry = _spare_scene(ctx)
    shutil.rmtree(scene_dir / "cameras")
    return Raises(_load_all(root, entry), ["cameras"])


@case("spare", "calibration-dir-missing")
def _(ctx: Ctx) -> Raises:
    root, _, entry = _spare_scene(ctx)
    return Raises(_load_all(root, entry, calibration_dir=ctx.tmp / "nope"), ["nope"])


def _spare_arg(kwargs: dict[str, Any], needles: Sequence[str]) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.spare import load_spare_scene

        root = Path(ctx.base["spare"])
        args: dict[str, Any] = {"root": root, "split": _track1_split_name(), **kwargs}
        return Raises(lambda: load_spare_scene(**args), needles)

    return make


add("spare", "lighting-9", _spare_arg({"lighting": 9}, ["lighting"]))
add("spare", "lighting-negative", _spare_arg({"lighting": -1}, ["lighting"]))
add("spare", "width-zero", _spare_arg({"width": 0, "height": 10}, ["width"]))
add("spare", "width-without-height", _spare_arg({"width": 20}, ["width"]))
add("spare", "unknown-scene", _spare_arg({"scene": "no_such_scene"}, ["no_such_scene"]))
add("spare", "root-missing", _spare_arg({"root": "/nonexistent/spare_root"}, ["spare_root", "Track1"]))
add("spare", "split-missing", _spare_arg({"split": "Track9_split.json"}, ["Track9_split.json"]))


def _dtu_arg(kwargs: dict[str, Any], needles: Sequence[str]) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.posed_scenes import load_dtu_scene

        args: dict[str, Any] = {"root": ctx.base["spare"], "scene": ctx.base["scene"], **kwargs}
        return Raises(lambda: load_dtu_scene(**args), needles)

    return make


add("spare", "dtu-lighting-9", _dtu_arg({"lighting": 9}, ["lighting"]))
add("spare", "dtu-num-train-0", _dtu_arg({"num_train": 0}, ["num_train"]))
add("spare", "dtu-num-train-49", _dtu_arg({"num_train": 49}, ["num_train"]))
add("spare", "dtu-unknown-scene", _dtu_arg({"scene": "scanX"}, ["scanX"]))
add("spare", "dtu-dataset-unknown", _dtu_arg({"dataset": "Blender"}, ["Blender"]))
add("spare", "dtu-root-is-file", _dtu_arg({"root": "/etc/hostname", "scene": None}, ["/etc/hostname"]))


# ============================================================================================== split JSON
def _split_case(text: str | bytes, needles: Sequence[str] | None = None) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.io.spare import read_split

        path = ctx.tmp / "Track1_split_development.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return Raises(lambda: read_split(path), needles or [path.name])

    return make


def _entry(inputs: Any = (1, 2, 3), tests: Any = tuple(range(10, 20)), dataset: Any = "DTU", **extra: Any) -> dict:
    out = {"input_views": list(inputs) if isinstance(inputs, tuple) else inputs,
           "test_views": list(tests) if isinstance(tests, tuple) else tests, "dataset": dataset}
    out.update(extra)
    return out


def _split_json(entries: dict[str, Any]) -> str:
    return json.dumps(entries)


_SPLITS: dict[str, str | bytes] = {
    "random-bytes": rand_bytes(),
    "empty": "",
    "whitespace": "   \n",
    "unterminated": '{"scan1": {"input_views": [1, 2, 3]',
    "trailing-garbage": _split_json({"scan1": _entry()}) + " x",
    "top-level-list": "[]",
    "top-level-string": '"scan1"',
    "empty-object": "{}",
    "entry-list": '{"scan1": [1, 2, 3]}',
    "entry-null": '{"scan1": null}',
    "missing-input-views": _split_json({"scan1": {k: v for k, v in _entry().items() if k != "input_views"}}),
    "missing-test-views": _split_json({"scan1": {k: v for k, v in _entry().items() if k != "test_views"}}),
    "missing-dataset": _split_json({"scan1": {k: v for k, v in _entry().items() if k != "dataset"}}),
    "views-string": _split_json({"scan1": _entry(inputs="1,2,3")}),
    "views-float": _split_json({"scan1": _entry(inputs=[1, 2.0, 3])}),
    "views-bool": _split_json({"scan1": _entry(inputs=[True, 2, 3])}),
    "views-nested": _split_json({"scan1": _entry(inputs=[[1], [2], [3]])}),
    "views-null": _split_json({"scan1": _entry(tests=None)}),
    "views-nan": '{"scan1": {"input_views": [1, NaN, 3], "test_views": [10,11,12,13,14,15,16,17,18,19], '
                 '"dataset": "DTU"}}',
    "duplicate-view": _split_json({"scan1": _entry(inputs=(1, 1, 3))}),
    "view-49": _split_json({"scan1": _entry(inputs=(1, 2, 49))}),
    "view-negative": _split_json({"scan1": _entry(inputs=(-1, 2, 3))}),
    "view-huge": _split_json({"scan1": _entry(inputs=[1, 2, 10**30])}),
    "four-inputs": _split_json({"scan1": _entry(inputs=(1, 2, 3, 4))}),
    "nine-tests": _split_json({"scan1": _entry(tests=tuple(range(10, 19)))}),
    "input-test-overlap": _split_json({"scan1": _entry(tests=tuple(range(3, 13)))}),
    "dataset-unknown": _split_json({"scan1": _entry(dataset="Blender")}),
    "dataset-null": _split_json({"scan1": _entry(dataset=None)}),
    "duplicate-scene-key": f'{{"scan1": {_split_json(_entry())}, "scan1": {_split_json(_entry())}}}',
    "key-parent-dir": _split_json({"../scan1": _entry()}),
    "key-absolute": _split_json({"/tmp/scan1": _entry()}),
    "key-empty": _split_json({"": _entry()}),
    "key-with-slash": _split_json({"a/scan1": _entry()}),
    "key-dot": _split_json({".": _entry()}),
    "utf16-bom": _split_json({"scan1": _entry()}).encode("utf-16"),
}
for _name, _text in _SPLITS.items():
    add("splits", _name, _split_case(_text))


@case("splits", "missing-file")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.spare import read_split

    return Raises(lambda: read_split(ctx.tmp / "Track2_split_test.json"), ["Track2_split_test.json"])


@case("splits", "is-folder")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.spare import read_split

    (ctx.tmp / "split.json").mkdir()
    return Raises(lambda: read_split(ctx.tmp / "split.json"), ["split.json"])


@case("splits", "write-invalid-entries")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.spare import SplitEntry, write_split

    out = ctx.tmp / "out_split.json"
    bad = SplitEntry("scan1", (1, 2), tuple(range(10, 20)), "DTU")
    return Raises(lambda: write_split(out, [bad]), ["out_split.json"])


# ==================================================================================================== zips
def _zip_with(ctx: Ctx, members: dict[str, bytes] | None = None, drop: Sequence[str] = (),
              extra: Sequence[tuple[str, bytes]] = (), compress: int = zipfile.ZIP_STORED) -> Path:
    """A copy of the valid submission with ``members`` replaced, ``drop`` removed and ``extra`` appended."""
    out = ctx.tmp / "sub.zip"
    members = members or {}
    with zipfile.ZipFile(out, "w", compression=compress) as archive:
        for name in ctx.base["zip_names"]:
            if name in drop:
                continue
            archive.writestr(name, members.get(name, png_bytes(W, H)))
        for name, data in extra:
            archive.writestr(name, data)
    return out


def _check(ctx: Ctx, path: Path, needles: Sequence[str]) -> Problems:
    from sparse3d.spare.check import check_submission

    return Problems(lambda: check_submission(path, ctx.base["split"], W, H), needles)


def _member_case(data: Callable[[], bytes]) -> Make:
    def make(ctx: Ctx) -> Problems:
        name = ctx.base["zip_names"][0]
        return _check(ctx, _zip_with(ctx, {name: data()}), [name])

    return make


_MEMBERS: dict[str, Callable[[], bytes]] = {
    "member-truncated-png": lambda: truncated_png(W, H),
    "member-random-bytes": lambda: rand_bytes(),
    "member-empty": lambda: b"",
    "member-wrong-size": lambda: png_bytes(W // 2, H // 2),
    "member-16-bit": lambda: png_bytes(W, H, dtype=np.uint16, value=30000),
    "member-gray": lambda: png_bytes(W, H, channels=1),
    "member-rgba": lambda: png_bytes(W, H, channels=4),
    "member-jpeg": lambda: jpeg_bytes(W, H),
    "member-header-only": lambda: png_bytes(W, H)[:40],
}
for _name, _data in _MEMBERS.items():
    add("zips", _name, _member_case(_data))


def _zip_bytes(data: Callable[[Ctx], bytes]) -> Make:
    def make(ctx: Ctx) -> Problems:
        path = ctx.tmp / "sub.zip"
        path.write_bytes(data(ctx))
        return _check(ctx, path, ["sub.zip"])

    return make


add("zips", "random-bytes", _zip_bytes(lambda ctx: rand_bytes(4096)))
add("zips", "empty-file", _zip_bytes(lambda ctx: b""))
add("zips", "truncated-half", _zip_bytes(lambda ctx: Path(ctx.base["zip"]).read_bytes()[: Path(ctx.base["zip"])
                                                                                      .stat().st_size // 2]))
add("zips", "truncated-tail", _zip_bytes(lambda ctx: Path(ctx.base["zip"]).read_bytes()[:-10]))
add("zips", "png-not-zip", _zip_bytes(lambda ctx: png_bytes(W, H)))


@case("zips", "bad-crc")
def _(ctx: Ctx) -> Problems:
    path = _zip_with(ctx)
    name = ctx.base["zip_names"][0]
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF  # flip a byte of the stored PNG: the CRC no longer matches
    path.write_bytes(bytes(data))
    return _check(ctx, path, [name])


@case("zips", "bad-deflate-stream")
def _(ctx: Ctx) -> Problems:
    path = _zip_with(ctx, compress=zipfile.ZIP_DEFLATED)
    name = ctx.base["zip_names"][0]
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(info.compress_size):
        data[start + k] = 0xFF
    path.write_bytes(bytes(data))
    return _check(ctx, path, [name])


@case("zips", "member-missing")
def _(ctx: Ctx) -> Problems:
    name = ctx.base["zip_names"][-1]
    return _check(ctx, _zip_with(ctx, drop=[name]), [name])


@case("zips", "all-members-missing")
def _(ctx: Ctx) -> Problems:
    return _check(ctx, _zip_with(ctx, drop=ctx.base["zip_names"]), [ctx.base["zip_names"][0]])


def _extra_member(name: str, data: bytes | None = None) -> Make:
    def make(ctx: Ctx) -> Problems:
        return _check(ctx, _zip_with(ctx, extra=[(name, png_bytes(W, H) if data is None else data)]),
                      [name.rstrip("/")])

    return make


add("zips", "extra-member", _extra_member("scanX/rect_001_3_r5000.png"))
add("zips", "member-parent-dir", _extra_member("../evil.png"))
add("zips", "member-absolute", _extra_member("/abs/evil.png"))
add("zips", "member-nested-folder", _extra_member("submission/x/rect_001.png"))
add("zips", "macos-metadata", _extra_member("__MACOSX/._x.png", b"\x00\x05\x16\x07"))
add("zips", "text-file", _extra_member("README.txt", b"hello"))


@case("zips", "duplicate-member")
def _(ctx: Ctx) -> Problems:
    name = ctx.base["zip_names"][0]
    with pytest.warns(UserWarning):  # zipfile warns about the duplicate name it writes
        path = _zip_with(ctx, extra=[(name, png_bytes(W, H))])
    return _check(ctx, path, [name])


@case("zips", "member-wrong-case")
def _(ctx: Ctx) -> Problems:
    name = ctx.base["zip_names"][0]
    scene, file = name.split("/")
    return _check(ctx, _zip_with(ctx, drop=[name], extra=[(f"{scene}/{file.upper()}", png_bytes(W, H))]), [name])


@case("zips", "check-datasets-unknown")
def _(ctx: Ctx) -> Raises:
    from sparse3d.spare.check import check_submission

    return Raises(lambda: check_submission(ctx.base["zip"], ctx.base["split"], W, H, datasets=["Blender"]),
                  ["Blender"])


@case("zips", "check-split-random-bytes")
def _(ctx: Ctx) -> Raises:
    from sparse3d.spare.check import check_submission

    split = ctx.tmp / "Track1_split_development.json"
    split.write_bytes(rand_bytes())
    return Raises(lambda: check_submission(ctx.base["zip"], split, W, H), [split.name])


# ================================================================================================ 3DGS PLY
def _gs_rewrite(fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Callable[[Path], None]:
    """Rewrite a binary 3DGS PLY through a function of its columns (property order kept)."""

    def mutate(path: Path) -> None:
        from sparse3d.io.pointcloud import _parse_ply_header

        blob = path.read_bytes()
        _, elements, offset = _parse_ply_header(path, blob)
        props = elements[0][2]
        dtype = np.dtype([(name, "<f4") for name, _ in props])
        record = np.frombuffer(blob, dtype=dtype, offset=offset, count=elements[0][1]).copy()
        columns = fn({name: record[name].copy() for name in dtype.names})
        names = list(columns)
        header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(columns[names[0]])}"]
        header += [f"property float {n}" for n in names]
        out = np.empty(len(columns[names[0]]), dtype=np.dtype([(n, "<f4") for n in names]))
        for n in names:
            out[n] = columns[n]
        path.write_bytes(("\n".join([*header, "end_header"]) + "\n").encode() + out.tobytes())

    return mutate


def _set(column: str, value: float, row: int = 3) -> Callable[[dict], dict]:
    def fn(cols: dict) -> dict:
        cols[column][row] = value
        return cols

    return fn


def _drop(*columns: str) -> Callable[[dict], dict]:
    return lambda cols: {k: v for k, v in cols.items() if k not in columns}


_GS_MUTATIONS: dict[str, Callable[[Path], None]] = {
    "nan-position": _gs_rewrite(_set("x", float("nan"))),
    "inf-position": _gs_rewrite(_set("z", float("inf"))),
    "nan-scale": _gs_rewrite(_set("scale_1", float("nan"))),
    "inf-log-scale": _gs_rewrite(_set("scale_0", float("inf"))),
    "nan-opacity": _gs_rewrite(_set("opacity", float("nan"))),
    "nan-sh-dc": _gs_rewrite(_set("f_dc_2", float("nan"))),
    "nan-sh-rest": _gs_rewrite(_set("f_rest_4", float("nan"))),
    "nan-rotation": _gs_rewrite(_set("rot_0", float("nan"))),
    "zero-rotation": _gs_rewrite(lambda c: {**c, **{f"rot_{i}": np.where(np.arange(len(c["x"])) == 2, 0.0,
                                                                         c[f"rot_{i}"]) for i in range(4)}}),
    "missing-opacity": _gs_rewrite(_drop("opacity")),
    "missing-f-dc": _gs_rewrite(_drop("f_dc_0")),
    "missing-scale": _gs_rewrite(_drop("scale_2")),
    "missing-rotation": _gs_rewrite(_drop("rot_3")),
    "five-f-rest": _gs_rewrite(lambda c: {k: v for k, v in c.items()
                                          if not k.startswith("f_rest_") or int(k[7:]) < 5}),
    "missing-x": _gs_rewrite(_drop("x")),
    "truncated-body": lambda p: truncate(p, 0.8),
    "random-bytes": lambda p: p.write_bytes(rand_bytes()),
    "empty": lambda p: p.write_bytes(b""),
    "no-end-header": lambda p: p.write_bytes(p.read_bytes().replace(b"end_header", b"end_hxader")),
    "count-larger-than-body": lambda p: p.write_bytes(p.read_bytes().replace(b"element vertex 16",
                                                                             b"element vertex 17")),
    "count-not-a-number": lambda p: p.write_bytes(p.read_bytes().replace(b"element vertex 16",
                                                                         b"element vertex sixteen")),
    "format-unknown": lambda p: p.write_bytes(p.read_bytes().replace(b"binary_little_endian",
                                                                     b"binary_middle_endian")),
    "type-unknown": lambda p: p.write_bytes(p.read_bytes().replace(b"property float opacity",
                                                                   b"property float128 opacity")),
    "is-folder": lambda p: (p.unlink(), p.mkdir()),  # type: ignore[func-returns-value]
    "missing": lambda p: p.unlink(),
}


def _gs_case(mutate: Callable[[Path], None]) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.io.gaussian_ply import load_gaussian_ply

        path = ctx.copy("gs_ply")
        mutate(path)
        return Raises(lambda: load_gaussian_ply(path), [path.name])

    return make


for _name, _mutate in _GS_MUTATIONS.items():
    add("gaussian_ply", _name, _gs_case(_mutate))


# ========================================================================================= point clouds
_ASCII_HEADER = ("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
                 "property uchar red\nproperty int label\nend_header\n")
_PLY_TEXTS: dict[str, str | bytes] = {
    "ascii-missing-column": _ASCII_HEADER + "1 2 3 4 5\n1 2 3 4\n",
    "ascii-non-numeric": _ASCII_HEADER + "1 2 3 4 5\n1 two 3 4 5\n",
    "ascii-too-few-rows": _ASCII_HEADER + "1 2 3 4 5\n",
    "ascii-too-many-columns": _ASCII_HEADER + "1 2 3 4 5 6\n1 2 3 4 5\n",
    "ascii-uchar-300": _ASCII_HEADER + "1 2 3 300 5\n1 2 3 4 5\n",
    "ascii-uchar-negative": _ASCII_HEADER + "1 2 3 -1 5\n1 2 3 4 5\n",
    "ascii-int-fraction": _ASCII_HEADER + "1 2 3 4 5.5\n1 2 3 4 5\n",
    "ascii-int-nan": _ASCII_HEADER + "1 2 3 4 nan\n1 2 3 4 5\n",
    "ascii-hex-token": _ASCII_HEADER + "1 2 3 4 0x10\n1 2 3 4 5\n",
    "no-magic": "plx\nformat ascii 1.0\nelement vertex 0\nproperty float x\nend_header\n",
    "no-end-header": "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n1\n",
    "no-vertex-element": "ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\n"
                         "end_header\n",
    "no-xyz": "ply\nformat ascii 1.0\nelement vertex 1\nproperty float a\nend_header\n1\n",
    "property-before-element": "ply\nformat ascii 1.0\nproperty float x\nelement vertex 0\nend_header\n",
    "negative-count": "ply\nformat ascii 1.0\nelement vertex -5\nproperty float x\nend_header\n",
    "unknown-keyword": "ply\nformat ascii 1.0\nelemnt vertex 1\nend_header\n",
    "format-missing": "ply\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\nend_header\n",
    "list-on-vertex": "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                      "property float z\nproperty list uchar int idx\nend_header\n1 2 3 1 0\n",
    "binary-list-element-first": (b"ply\nformat binary_little_endian 1.0\nelement face 1\n"
                                  b"property list uchar int vertex_indices\nelement vertex 1\nproperty float x\n"
                                  b"property float y\nproperty float z\nend_header\n" + bytes(13) + bytes(12)),
    "random-bytes": rand_bytes(),
    "empty": "",
}


def _ply_case(content: str | bytes) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.io.pointcloud import read_ply_points

        path = ctx.tmp / "cloud.ply"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return Raises(lambda: read_ply_points(path), [path.name])

    return make


for _name, _content in _PLY_TEXTS.items():
    add("pointcloud", f"ply-{_name}", _ply_case(_content))


_PCD_HEAD = "VERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\nWIDTH 2\nHEIGHT 1\nPOINTS 2\n"
_ANY_CLOUD: dict[str, tuple[str, bytes]] = {
    "pcd-no-data-line": ("cloud.pcd", _PCD_HEAD.encode()),
    "pcd-no-xyz": ("cloud.pcd", _PCD_HEAD.replace("x y z", "a b c").encode() + b"DATA ascii\n1 2 3 4\n1 2 3 4\n"),
    "pcd-ascii-token": ("cloud.pcd", _PCD_HEAD.encode() + b"DATA ascii\n1 2 3 4\n1 two 3 4\n"),
    "pcd-ascii-short-row": ("cloud.pcd", _PCD_HEAD.encode() + b"DATA ascii\n1 2 3 4\n1 2 3\n"),
    "pcd-ascii-too-few-rows": ("cloud.pcd", _PCD_HEAD.encode() + b"DATA ascii\n1 2 3 4\n"),
    "pcd-binary-truncated": ("cloud.pcd", _PCD_HEAD.encode() + b"DATA binary\n" + bytes(20)),
    "pcd-compressed": ("cloud.pcd", _PCD_HEAD.encode() + b"DATA binary_compressed\n" + bytes(40)),
    "pcd-size-text": ("cloud.pcd", _PCD_HEAD.replace("SIZE 4 4 4 4", "SIZE 4 4 4 four").encode() + b"DATA ascii\n"),
    "npy-random-bytes": ("cloud.npy", b"\x93NUMPY" + rand_bytes()),
    "ply-suffix-without-magic": ("cloud.ply", b"xyz\n1 2 3\n"),
    "bin-odd-size": ("cloud.bin", bytes(18)),
}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


_ANY_CLOUD["npy-1d"] = ("cloud.npy", _npy_bytes(np.zeros(6, np.float32)))
_ANY_CLOUD["npy-two-columns"] = ("cloud.npy", _npy_bytes(np.zeros((4, 2), np.float32)))
_ANY_CLOUD["npy-strings"] = ("cloud.npy", _npy_bytes(np.array([["a", "b", "c"]])))


def _any_cloud_case(name: str, content: bytes) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.io.pointcloud import read_point_cloud

        path = ctx.tmp / name
        path.write_bytes(content)
        return Raises(lambda: read_point_cloud(path), [name])

    return make


for _name, (_file, _content) in _ANY_CLOUD.items():
    add("pointcloud", f"any-{_name}", _any_cloud_case(_file, _content))


@case("pointcloud", "ply-binary-truncated")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.pointcloud import read_ply_points

    path = truncate(ctx.copy("points_ply"), 0.7)
    return Raises(lambda: read_ply_points(path), [path.name])


@case("pointcloud", "ply-ascii-row-truncated")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.pointcloud import read_ply_points

    path = ctx.copy("ascii_ply")
    lines = path.read_text().splitlines()
    lines[-1] = " ".join(lines[-1].split()[:4])
    path.write_text("\n".join(lines) + "\n")
    return Raises(lambda: read_ply_points(path), [path.name])


def _bin_case(data: Callable[[Ctx], bytes], reader: str, **kw: Any) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.io import pointcloud

        path = ctx.tmp / ("000000.label" if reader == "read_semantic_kitti_label" else "000000.bin")
        path.write_bytes(data(ctx))
        fn = getattr(pointcloud, reader)
        return Raises(lambda: fn(path, **kw), [path.name])

    return make


add("pointcloud", "kitti-bin-15-bytes", _bin_case(lambda c: bytes(15), "read_kitti_bin"))
add("pointcloud", "kitti-bin-truncated-row", _bin_case(lambda c: Path(c.base["scan_bin"]).read_bytes()[:-3],
                                                       "read_kitti_bin"))
add("pointcloud", "kitti-bin-5-features", _bin_case(lambda c: Path(c.base["scan_bin"]).read_bytes(),
                                                    "read_kitti_bin", num_features=7))
add("pointcloud", "kitti-label-odd-size", _bin_case(lambda c: bytes(10), "read_semantic_kitti_label"))
add("pointcloud", "kitti-label-count-mismatch", _bin_case(lambda c: bytes(40), "read_semantic_kitti_label",
                                                          num_points=11))


@case("pointcloud", "kitti-bin-num-features-0")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.pointcloud import read_kitti_bin

    return Raises(lambda: read_kitti_bin(ctx.base["scan_bin"], num_features=0), ["num_features"])


@case("pointcloud", "kitti-bin-missing")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.pointcloud import read_kitti_bin

    return Raises(lambda: read_kitti_bin(ctx.tmp / "999999.bin"), ["999999.bin"])


@case("pointcloud", "kitti-bin-is-folder")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.pointcloud import read_kitti_bin

    (ctx.tmp / "000001.bin").mkdir()
    return Raises(lambda: read_kitti_bin(ctx.tmp / "000001.bin"), ["000001.bin"])


@case("pointcloud", "write-kitti-bin-2-columns")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.pointcloud import write_kitti_bin

    out = ctx.tmp / "out.bin"
    return Raises(lambda: write_kitti_bin(out, np.zeros((4, 2), np.float32)), ["out.bin"])


@case("pointcloud", "write-ply-field-rows")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.pointcloud import write_ply_points

    out = ctx.tmp / "out.ply"
    return Raises(lambda: write_ply_points(out, np.zeros((4, 3)), label=np.zeros(3, np.int32)), ["out.ply"])


@case("pointcloud", "write-label-out-of-range")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.pointcloud import write_semantic_kitti_label

    out = ctx.tmp / "out.label"
    return Raises(lambda: write_semantic_kitti_label(out, np.array([70000])), ["out.label"])


# ========================================================================================= SemanticKITTI
def _kitti_case(mutate: Callable[[Path], Any], needles: Sequence[str], **kw: Any) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.semantic_kitti import SemanticKittiDataset

        root = ctx.copy("lidar")
        mutate(root)

        def call() -> None:
            dataset = SemanticKittiDataset(root, **kw)
            for i in range(len(dataset)):
                dataset[i]

        return Raises(call, needles)

    return make


def _scan(root: Path, seq: str = "00") -> Path:
    return sorted((root / "sequences" / seq / "velodyne").glob("*.bin"))[0]


def _label(root: Path, seq: str = "00") -> Path:
    return sorted((root / "sequences" / seq / "labels").glob("*.label"))[0]


def _config(root: Path) -> Path:
    return next(p for p in root.iterdir() if p.suffix == ".yaml")


def _unlink(path: Path) -> None:
    path.unlink()


_KITTI: list[tuple[str, Callable[[Path], Any], list[str], dict[str, Any]]] = [
    ("scan-truncated", lambda r: truncate(_scan(r), 0.51), ["000000.bin"], {}),
    ("label-truncated", lambda r: truncate(_label(r), 0.5), ["000000.label"], {}),
    ("label-odd-size", lambda r: _label(r).write_bytes(_label(r).read_bytes()[:-1]), ["000000.label"], {}),
    ("label-missing", lambda r: _unlink(_label(r)), ["000000.label"], {}),
    ("scan-is-folder", lambda r: (_unlink(_scan(r)), (r / "sequences" / "00" / "velodyne" / "000000.bin").mkdir()),
     ["000000.bin"], {}),
    ("sequence-missing", lambda r: shutil.rmtree(r / "sequences" / "01"), ["velodyne"], {"split": "valid"}),
    ("config-not-yaml", lambda r: _config(r).write_text("labels: {0: [unclosed\n"), ["sparse3d_lidar.yaml"], {}),
    ("config-missing-keys", lambda r: _config(r).write_text("labels: {0: unlabeled}\n"), ["sparse3d_lidar.yaml"], {}),
    ("config-random-bytes", lambda r: _config(r).write_bytes(rand_bytes()), ["sparse3d_lidar.yaml"], {}),
    ("config-list", lambda r: _config(r).write_text("- 1\n- 2\n"), ["sparse3d_lidar.yaml"], {}),
    ("config-learning-map-text", lambda r: _config(r).write_text(
        _config(r).read_text().replace("learning_map:", "learning_map:\n  zero: one", 1)), ["sparse3d_lidar.yaml"], {}),
    ("root-missing", lambda r: shutil.rmtree(r), ["lidar"], {}),
    ("split-unknown", lambda r: None, ["split"], {"split": "bogus"}),
    ("point-range-short", lambda r: None, ["point_range"], {"point_range": [0, 0, 0, 1, 1]}),
    ("point-range-inverted", lambda r: None, ["point_range"], {"point_range": [1, 0, 0, 0, 1, 1]}),
    ("max-points-zero", lambda r: None, ["max_points"], {"max_points": 0}),
    ("label-config-missing", lambda r: None, ["nope.yaml"], {"label_config": "/nonexistent/nope.yaml"}),
]
for _name, _mutate, _needles, _kw in _KITTI:
    add("semantic_kitti", _name, _kitti_case(_mutate, _needles, **_kw))


# ========================================================================================== posed images
def _llff_case(mutate: Callable[[Path], Sequence[str]], **kw: Any) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.posed_scenes import load_llff_scene

        folder = ctx.copy("llff")
        needles = mutate(folder)
        return Raises(lambda: load_llff_scene(folder, **{"factor": 2, **kw}), needles)

    return make


def _poses(fn: Callable[[np.ndarray], Any]) -> Callable[[Path], Sequence[str]]:
    def mutate(folder: Path) -> Sequence[str]:
        path = folder / "poses_bounds.npy"
        arr = np.load(path)
        np.save(path, fn(arr))
        return ["poses_bounds.npy"]

    return mutate


def _row(fn: Callable[[np.ndarray], None]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(arr: np.ndarray) -> np.ndarray:
        arr = arr.copy()
        fn(arr)
        return arr

    return apply


def _images(folder: Path, sub: str = "images_2") -> list[Path]:
    return sorted((folder / sub).glob("*.png"))


def _in(name: str, effect: Callable[[Path], Any], needle: str | None = None) -> Callable[[Path], Sequence[str]]:
    """Apply ``effect`` to ``folder/name`` and name it (or ``needle``) as what the error must mention."""

    def mutate(folder: Path) -> Sequence[str]:
        effect(folder / name)
        return [needle or Path(name).name]

    return mutate


def _image_n(index: int, effect: Callable[[Path], Any]) -> Callable[[Path], Sequence[str]]:
    def mutate(folder: Path) -> Sequence[str]:
        path = _images(folder)[index]
        effect(path)
        return [path.name]

    return mutate


add("llff", "poses-random-bytes", _llff_case(_in("poses_bounds.npy", lambda p: p.write_bytes(rand_bytes()))))
add("llff", "poses-empty-file", _llff_case(_in("poses_bounds.npy", lambda p: p.write_bytes(b""))))
add("llff", "poses-16-columns", _llff_case(_poses(lambda a: a[:, :16])))
add("llff", "poses-1d", _llff_case(_poses(lambda a: a.reshape(-1))))
add("llff", "poses-no-rows", _llff_case(_poses(lambda a: a[:0])))
add("llff", "poses-nan", _llff_case(_poses(_row(lambda a: a.__setitem__((2, 3), np.nan)))))
add("llff", "poses-not-rotation", _llff_case(_poses(_row(lambda a: a.__setitem__((0, 0), 5.0)))))
add("llff", "poses-reflection", _llff_case(_poses(_row(lambda a: a.__setitem__((0, slice(0, 15, 5)), -a[0, 0:15:5])))))
add("llff", "poses-negative-focal", _llff_case(_poses(_row(lambda a: a.__setitem__((1, 14), -10.0)))))
add("llff", "poses-near-after-far", _llff_case(_poses(_row(lambda a: a.__setitem__((1, 15), a[1, 16] + 1)))))
add("llff", "poses-sizes-differ", _llff_case(_poses(_row(lambda a: a.__setitem__((3, 4), a[3, 4] * 2)))))
add("llff", "poses-strings", _llff_case(_poses(lambda a: a.astype(str))))
add("llff", "poses-object-array", _llff_case(_poses(lambda a: np.array([{"a": 1}], dtype=object))))
add("llff", "poses-missing", _llff_case(_in("poses_bounds.npy", _unlink)))
add("llff", "image-count-mismatch", _llff_case(lambda f: _unlink(_images(f)[0]) or ["poses_bounds.npy"]))
add("llff", "image-wrong-aspect", _llff_case(_image_n(0, lambda p: p.write_bytes(png_bytes(20, 8)))))
add("llff", "image-truncated", _llff_case(_image_n(0, lambda p: p.write_bytes(truncated_png(PW // 2, PH // 2)))))
add("llff", "image-random-bytes", _llff_case(_image_n(1, lambda p: p.write_bytes(rand_bytes()))))
add("llff", "image-one-size-off", _llff_case(_image_n(-1, lambda p: p.write_bytes(png_bytes(PW // 2 + 2, PH // 2 + 2))),
                                             num_train=None))
add("llff", "factor-folder-missing", _llff_case(lambda f: ["images_3"], factor=3))
add("llff", "factor-zero", _llff_case(lambda f: ["factor"], factor=0))
add("llff", "scene-missing", _llff_case(lambda f: ["nope"], scene="nope"))


def _ns_case(mutate: Callable[[dict, Path], Any], needles: Sequence[str] = ("transforms.json",), **kw: Any) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.posed_scenes import load_nerfstudio_scene

        folder = ctx.copy("nerfstudio")
        path = folder / "transforms.json"
        data = json.loads(path.read_text())
        result = mutate(data, folder)
        if isinstance(result, (str, bytes)):
            path.write_bytes(result if isinstance(result, bytes) else result.encode())
        else:
            path.write_text(json.dumps(data))
        return Raises(lambda: load_nerfstudio_scene(folder, **kw), needles)

    return make


def _frame0(key: str, value: Any) -> Callable[[dict, Path], None]:
    return lambda d, f: d["frames"][0].__setitem__(key, value)


def _top(key: str, value: Any) -> Callable[[dict, Path], None]:
    return lambda d, f: d.__setitem__(key, value)


def _pop0(key: str) -> Callable[[dict, Path], None]:
    return lambda d, f: d["frames"][0].pop(key)


def _matrix_entry(r: int, c: int, value: Any) -> Callable[[dict, Path], None]:
    return lambda d, f: d["frames"][0]["transform_matrix"][r].__setitem__(c, value)


add("nerfstudio", "random-bytes", _ns_case(lambda d, f: rand_bytes()))
add("nerfstudio", "invalid-json", _ns_case(lambda d, f: '{"frames": ['))
add("nerfstudio", "top-level-list", _ns_case(lambda d, f: "[]"))
add("nerfstudio", "no-frames", _ns_case(lambda d, f: d.pop("frames")))
add("nerfstudio", "empty-frames", _ns_case(_top("frames", [])))
add("nerfstudio", "frames-object", _ns_case(_top("frames", {"a": 1})))
add("nerfstudio", "frame-not-object", _ns_case(lambda d, f: d["frames"].__setitem__(0, [1, 2])))
add("nerfstudio", "missing-file-path", _ns_case(_pop0("file_path")))
add("nerfstudio", "file-path-number", _ns_case(_frame0("file_path", 7)))
add("nerfstudio", "missing-transform", _ns_case(_pop0("transform_matrix")))
add("nerfstudio", "transform-2x4", _ns_case(lambda d, f: d["frames"][0].__setitem__(
    "transform_matrix", d["frames"][0]["transform_matrix"][:2])))
add("nerfstudio", "transform-string", _ns_case(_frame0("transform_matrix", "eye(4)")))
add("nerfstudio", "transform-nan", _ns_case(_matrix_entry(0, 3, float("nan"))))
add("nerfstudio", "transform-token", _ns_case(_matrix_entry(1, 1, "one")))
add("nerfstudio", "transform-bottom-row", _ns_case(_matrix_entry(3, 0, 0.5)))
add("nerfstudio", "transform-scaled-rotation", _ns_case(lambda d, f: d["frames"][0].__setitem__(
    "transform_matrix", [[v * (3.0 if c < 3 and r < 3 else 1.0) for c, v in enumerate(row)]
                         for r, row in enumerate(d["frames"][0]["transform_matrix"])])))
add("nerfstudio", "camera-model-fisheye", _ns_case(_top("camera_model", "OPENCV_FISHEYE")))
add("nerfstudio", "camera-model-number", _ns_case(_top("camera_model", 5)))
add("nerfstudio", "focal-negative", _ns_case(_top("fl_x", -5.0)))
add("nerfstudio", "focal-string", _ns_case(_top("fl_x", "big")))
add("nerfstudio", "focal-missing", _ns_case(lambda d, f: (d.pop("fl_x"), d.pop("fl_y", None))))
add("nerfstudio", "width-fraction", _ns_case(_top("w", PW + 0.5)))
add("nerfstudio", "width-zero", _ns_case(_top("w", 0)))
add("nerfstudio", "sizes-differ", _ns_case(lambda d, f: d["frames"][1].update(w=PW * 2, h=PH * 2)))
add("nerfstudio", "all-images-missing", _ns_case(lambda d, f: [fr.__setitem__("file_path", f"gone/{i}.png")
                                                              for i, fr in enumerate(d["frames"])]))
add("nerfstudio", "image-random-bytes", _ns_case(lambda d, f: (f / d["frames"][0]["file_path"]).write_bytes(
    rand_bytes()) and None, needles=["image_000.png"]))
add("nerfstudio", "image-truncated", _ns_case(lambda d, f: (f / d["frames"][0]["file_path"]).write_bytes(
    truncated_png(PW, PH)) and None, needles=["image_000.png"]))
add("nerfstudio", "downscale-zero", _ns_case(lambda d, f: None, needles=["downscale"], downscale=0))
add("nerfstudio", "transforms-missing", _ns_case(lambda d, f: None, needles=["other.json"], transforms="other.json"))


def _colmap_case(file: str, mutate: Callable[[Path], Any], needles: Sequence[str] | None = None,
                 **kw: Any) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.posed_scenes import load_colmap_scene

        folder = ctx.copy("colmap")
        path = folder / "sparse" / "0" / file
        mutate(path)
        return Raises(lambda: load_colmap_scene(folder, **kw), needles or [file])

    return make


def _data_line(path: Path, index: int = 0) -> tuple[list[str], int]:
    lines = path.read_text().splitlines()
    data = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    return lines, data[index]


def _edit_line(fn: Callable[[list[str]], list[str]], index: int = 0) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        lines, i = _data_line(path, index)
        lines[i] = " ".join(fn(lines[i].split()))
        path.write_text("\n".join(lines) + "\n")

    return mutate


def _set_token(k: int, value: str, index: int = 0) -> Callable[[Path], None]:
    return _edit_line(lambda t: [*t[:k], value, *t[k + 1:]], index)


def _dup_line(index: int = 0, count: int = 1) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        lines, i = _data_line(path, index)
        path.write_text("\n".join([*lines, *lines[i:i + count]]) + "\n")

    return mutate


_COLMAP: list[tuple[str, str, Callable[[Path], Any]]] = [
    ("cameras-short-line", "cameras.txt", _edit_line(lambda t: t[:3])),
    ("cameras-width-text", "cameras.txt", _set_token(2, "wide")),
    ("cameras-unknown-model", "cameras.txt", _set_token(1, "PINHOLEX")),
    ("cameras-fisheye-model", "cameras.txt", _set_token(1, "OPENCV_FISHEYE")),
    ("cameras-param-count", "cameras.txt", _edit_line(lambda t: t[:-1])),
    ("cameras-width-zero", "cameras.txt", _set_token(2, "0")),
    ("cameras-focal-zero", "cameras.txt", _set_token(4, "0")),
    ("cameras-param-nan", "cameras.txt", _set_token(5, "nan")),
    ("cameras-duplicate-id", "cameras.txt", _dup_line()),
    ("cameras-random-bytes", "cameras.txt", lambda p: p.write_bytes(rand_bytes())),
    ("cameras-empty", "cameras.txt", lambda p: p.write_text("")),
    ("images-short-line", "images.txt", _edit_line(lambda t: t[:9])),
    ("images-zero-quaternion", "images.txt", _edit_line(lambda t: [t[0], "0", "0", "0", "0", *t[5:]])),
    ("images-quaternion-text", "images.txt", _set_token(2, "q")),
    ("images-translation-inf", "images.txt", _set_token(6, "inf")),
    ("images-id-text", "images.txt", _set_token(0, "first")),
    ("images-duplicate-id", "images.txt", _dup_line(0, 2)),
    ("images-unknown-camera", "images.txt", _set_token(8, "99")),
    ("images-points2d-not-triples", "images.txt", _edit_line(lambda t: t[:-1], 1)),
    ("images-random-bytes", "images.txt", lambda p: p.write_bytes(rand_bytes())),
    ("images-empty", "images.txt", lambda p: p.write_text("# no images\n")),
    ("images-missing", "images.txt", lambda p: p.unlink()),
    ("points-short-line", "points3D.txt", _edit_line(lambda t: t[:6])),
    ("points-color-300", "points3D.txt", _set_token(4, "300")),
    ("points-xyz-text", "points3D.txt", _set_token(1, "x")),
    ("points-track-odd", "points3D.txt", _edit_line(lambda t: t[:-1])),
    ("points-random-bytes", "points3D.txt", lambda p: p.write_bytes(rand_bytes())),
]
for _name, _file, _mutate in _COLMAP:
    add("colmap", _name, _colmap_case(_file, _mutate))


@case("colmap", "image-file-missing")
def _(ctx: Ctx) -> Raises:
    from sparse3d.datasets.posed_scenes import load_colmap_scene

    folder = ctx.copy("colmap")
    victim = sorted((folder / "images").glob("*.png"))[0]
    victim.unlink()
    return Raises(lambda: load_colmap_scene(folder), [victim.name])


@case("colmap", "image-wrong-aspect")
def _(ctx: Ctx) -> Raises:
    from sparse3d.datasets.posed_scenes import load_colmap_scene

    folder = ctx.copy("colmap")
    victim = sorted((folder / "images").glob("*.png"))[0]
    victim.write_bytes(png_bytes(PW, PW))
    return Raises(lambda: load_colmap_scene(folder), [victim.name])


@case("colmap", "model-dir-missing")
def _(ctx: Ctx) -> Raises:
    from sparse3d.datasets.posed_scenes import load_colmap_scene

    folder = ctx.copy("colmap")
    shutil.rmtree(folder / "sparse")
    return Raises(lambda: load_colmap_scene(folder), [folder.name])


@case("colmap", "cameras-bin-random-bytes")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.colmap import read_colmap_model

    folder = ctx.copy("colmap") / "sparse" / "0"
    for p in folder.iterdir():
        p.unlink()
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (folder / name).write_bytes(rand_bytes())
    return Raises(lambda: read_colmap_model(folder), [str(folder)])


def _posed_arg(loader: str, kwargs: dict[str, Any], needles: Sequence[str]) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets import posed_scenes

        fmt = {"load_llff_scene": "llff", "load_nerfstudio_scene": "nerfstudio", "load_colmap_scene": "colmap"}[loader]
        fn = getattr(posed_scenes, loader)
        args = {"root": ctx.base[fmt], **({"factor": 2} if fmt == "llff" else {}), **kwargs}
        return Raises(lambda: fn(**args), needles)

    return make


for _loader in ("load_llff_scene", "load_nerfstudio_scene", "load_colmap_scene"):
    _short = _loader.split("_")[1]
    add("posed_scenes", f"{_short}-width-zero", _posed_arg(_loader, {"width": 0, "height": 8}, ["width"]))
    add("posed_scenes", f"{_short}-width-alone", _posed_arg(_loader, {"width": 8}, ["width"]))
    add("posed_scenes", f"{_short}-split-unknown", _posed_arg(_loader, {"split": "random"}, ["split"]))
    add("posed_scenes", f"{_short}-num-train-0", _posed_arg(_loader, {"num_train": 0}, ["num_train"]))
    add("posed_scenes", f"{_short}-num-train-too-many", _posed_arg(_loader, {"num_train": 100}, ["num_train"]))
    add("posed_scenes", f"{_short}-test-every-0", _posed_arg(_loader, {"test_every": 0}, ["test_every"]))
    add("posed_scenes", f"{_short}-root-missing", _posed_arg(_loader, {"root": "/nonexistent/root"}, ["root"]))
add("posed_scenes", "colmap-image-dir-missing", _posed_arg("load_colmap_scene", {"image_dir": "imgs"}, ["imgs"]))
add("posed_scenes", "colmap-model-dir-missing", _posed_arg("load_colmap_scene", {"model_dir": "sparse/7"}, ["sparse/7"]))


@case("posed_scenes", "root-without-scene")
def _(ctx: Ctx) -> Raises:
    from sparse3d.datasets.posed_scenes import load_llff_scene

    (ctx.tmp / "empty_root" / "sub").mkdir(parents=True)
    return Raises(lambda: load_llff_scene(ctx.tmp / "empty_root"), ["empty_root"])


# ================================================================================================ images
def _image_case(reader: str, data: Callable[[], bytes], suffix: str = ".png") -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.io import images

        path = ctx.tmp / f"picture{suffix}"
        path.write_bytes(data())
        fn = getattr(images, reader)
        return Raises(lambda: fn(path), [path.name])

    return make


for _reader in ("read_image", "read_mask", "png_info"):
    add("images", f"{_reader}-random-bytes", _image_case(_reader, lambda: rand_bytes()))
    add("images", f"{_reader}-empty", _image_case(_reader, lambda: b""))
    if _reader != "png_info":  # png_info reads the header only, by contract
        add("images", f"{_reader}-truncated", _image_case(_reader, lambda: truncated_png(W, H)))
add("images", "read_image-float-tiff", _image_case("read_image", lambda: cv2.imencode(
    ".tiff", np.ones((4, 4, 3), np.float32))[1].tobytes(), ".tiff"))
add("images", "png_info-jpeg", _image_case("png_info", lambda: jpeg_bytes(W, H)))


@case("images", "read_image-missing")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.images import read_image

    return Raises(lambda: read_image(ctx.tmp / "gone.png"), ["gone.png"])


@case("images", "read_image-folder")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.images import read_image

    (ctx.tmp / "dir.png").mkdir()
    return Raises(lambda: read_image(ctx.tmp / "dir.png"), ["dir.png"])


@case("images", "write_png-nan")
def _(ctx: Ctx) -> Raises:
    from sparse3d.io.images import write_png

    image = np.zeros((4, 4, 3), np.float32)
    image[1, 1, 1] = np.nan
    return Raises(lambda: write_png(ctx.tmp / "nan.png", image), ["nan.png"])


# ================================================================================================== vis
def _box_case(text: str | bytes) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.vis.detections import read_detections_json

        path = ctx.tmp / "detections.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return Raises(lambda: read_detections_json(path, "0"), [path.name])

    return make


_BOX = '"name": "Car", "score": 0.5, "box_lidar": '
_BOXES: dict[str, str | bytes] = {
    "list": '[{"box_lidar": [0, 0, 0, 1, 1, 1, 0]}]',
    "entry-list": '{"0": [[0, 0, 0, 1, 1, 1, 0]]}',
    "frame-missing": '{"1": [{' + _BOX + '[0, 0, 0, 1, 1, 1, 0]}]}',
    "six-numbers": '{"0": [{' + _BOX + '[0, 0, 0, 1, 1, 1]}]}',
    "nan": '{"0": [{' + _BOX + '[0, NaN, 0, 1, 1, 1, 0]}]}',
    "negative-size": '{"0": [{' + _BOX + '[0, 0, 0, -1, 1, 1, 0]}]}',
    "name-number": '{"0": [{"name": 3, "score": 0.5, "box_lidar": [0, 0, 0, 1, 1, 1, 0]}]}',
    "score-missing": '{"0": [{"name": "Car", "box_lidar": [0, 0, 0, 1, 1, 1, 0]}]}',
    "score-string": '{"0": [{"name": "Car", "score": "high", "box_lidar": [0, 0, 0, 1, 1, 1, 0]}]}',
    "score-inf": '{"0": [{"name": "Car", "score": Infinity, "box_lidar": [0, 0, 0, 1, 1, 1, 0]}]}',
    "box-strings": '{"0": [{' + _BOX + '["0", 0, 0, 1, 1, 1, 0]}]}',
    "invalid-json": '{"0": [{"box_lidar": [0, 0',
    "random-bytes": rand_bytes(),
}
for _name, _text in _BOXES.items():
    add("vis", f"boxes-{_name}", _box_case(_text))


def _vis(args: Callable[[Ctx], tuple[list[str], Sequence[str]]], save: str | None = "out.png") -> Make:
    """``sparse3d-vis`` in-process; ``args(ctx)`` gives the argument list (without --save) and the needles."""

    def make(ctx: Ctx) -> Cli:
        argv, needles = args(ctx)
        outputs: list[Path] = []
        if save is not None:
            out = ctx.tmp / save
            argv = [*argv, "--save", str(out)]
            outputs.append(out)
        return Cli("sparse3d-vis", argv, needles, outputs, exit_code=2)

    return make


def _gs_nan(ctx: Ctx) -> Path:
    path = ctx.copy("gs_ply")
    _GS_MUTATIONS["nan-position"](path)
    return path


def _scan_copy(ctx: Ctx) -> str:
    return str(ctx.copy("scan_bin"))


def _bad_file(name: str, data: bytes) -> Callable[[Ctx], tuple[list[str], Sequence[str]]]:
    def args(ctx: Ctx) -> tuple[list[str], Sequence[str]]:
        path = ctx.tmp / name
        path.write_bytes(data)
        return [str(path)], [name]

    return args


add("vis", "cli-path-missing", _vis(lambda c: ([str(c.tmp / "nothing.bin")], ["nothing.bin"])))
add("vis", "cli-size-zero", _vis(lambda c: ([_scan_copy(c), "--size", "0x0"], ["--size"])))
add("vis", "cli-size-text", _vis(lambda c: ([_scan_copy(c), "--size", "big"], ["--size"])))
add("vis", "cli-save-jpg", _vis(lambda c: ([_scan_copy(c), "--save", str(c.tmp / "o.jpg")], ["o.jpg"]), None))
add("vis", "cli-save-folder", _vis(lambda c: ([_scan_copy(c), "--save", str(c.tmp)], ["--save"]), None))
add("vis", "cli-save-missing-folder", _vis(lambda c: ([_scan_copy(c), "--save", str(c.tmp / "no" / "o.png")],
                                                      ["--save"]), None))
add("vis", "cli-orbit-without-save", _vis(lambda c: ([_scan_copy(c), "--orbit", "10"], ["--orbit"]), None))
add("vis", "cli-lookat-alone", _vis(lambda c: ([_scan_copy(c), "--lookat", "0,0,0"], ["--lookat"])))
add("vis", "cli-eye-equals-lookat", _vis(lambda c: ([_scan_copy(c), "--lookat", "1,1,1", "--eye", "1,1,1"],
                                                    ["--eye"])))
add("vis", "cli-lookat-nan", _vis(lambda c: ([_scan_copy(c), "--lookat", "nan,0,0", "--eye", "1,1,1"],
                                             ["--lookat"])))
add("vis", "cli-fps-negative", _vis(lambda c: ([_scan_copy(c), "--fps", "-1"], ["--fps"])))
add("vis", "cli-glyphs-zero", _vis(lambda c: ([_scan_copy(c), "--glyphs", "0"], ["--glyphs"])))
add("vis", "cli-voxel-size-zero", _vis(lambda c: ([_scan_copy(c), "--voxel-size", "0"], ["--voxel-size"])))
add("vis", "cli-type-unknown", _vis(lambda c: ([_scan_copy(c), "--type", "voxels"], ["--type"])))
add("vis", "cli-mp4-odd-size", _vis(lambda c: ([_scan_copy(c), "--orbit", "4", "--size", "33x33"], ["--size"]),
                                    "turn.mp4"))
add("vis", "cli-truncated-bin", _vis(_bad_file("scan.bin", bytes(30))))
add("vis", "cli-empty-file", _vis(_bad_file("scan.bin", b"")))
add("vis", "cli-random-ply", _vis(_bad_file("cloud.ply", b"ply\n" + rand_bytes())))
add("vis", "cli-ascii-ply-missing-column", _vis(_bad_file("cloud.ply", (_ASCII_HEADER + "1 2 3 4 5\n1 2 3\n")
                                                          .encode())))
add("vis", "cli-ascii-ply-token", _vis(_bad_file("cloud.ply", (_ASCII_HEADER + "1 2 3 4 5\n1 2 x 4 5\n").encode())))
add("vis", "cli-random-npy", _vis(_bad_file("cloud.npy", b"\x93NUMPY" + rand_bytes())))
add("vis", "cli-gaussian-nan", _vis(lambda c: ([str(_gs_nan(c))], ["gaussians.ply"])))
add("vis", "cli-boxes-nan", _vis(lambda c: ([_scan_copy(c), str(_write(c, "b.json", '[{"box": [NaN, 0, 0, 1, 1, 1, 0],'
                                                                       ' "name": "Car"}]'))], ["b.json"])))
add("vis", "cli-frame-on-file", _vis(lambda c: ([_scan_copy(c), "--frame", "7"], ["--frame"])))
add("vis", "cli-frame-unknown", _vis(lambda c: ([str(c.copy("scan_bin").parent), "--frame", "000042"], ["000042"])))
add("vis", "cli-split-random-bytes", _vis(lambda c: ([str(_write(c, "Track1_split_development.json", rand_bytes()))],
                                                     ["Track1_split_development.json"])))


# ================================================================================== KITTI object detection
_KITTI_P = "7.215377e+02 0 6.095593e+02 0 0 7.215377e+02 1.728540e+02 0 0 0 1 0"
_KITTI_CALIB = (f"P0: {_KITTI_P}\nP1: {_KITTI_P}\nP2: {_KITTI_P}\nP3: {_KITTI_P}\nR0_rect: 1 0 0 0 1 0 0 0 1\n"
                "Tr_velo_to_cam: 0 -1 0 0 0 0 -1 0 1 0 0 0\nTr_imu_to_velo: 1 0 0 0 0 1 0 0 0 0 1 0\n")
_KITTI_LABEL = ("Car 0.00 0 -1.57 600.0 150.0 700.0 250.0 1.50 1.60 3.90 0.00 1.50 10.00 0.00\n"
                "DontCare -1 -1 -10 500.0 150.0 520.0 170.0 -1 -1 -1 -1000 -1000 -1000 -10\n")


def _kitti_frame(ctx: Ctx) -> Path:
    """A valid one-frame KITTI ``training`` set (calib, label, velodyne) written by hand from the devkit layout."""
    root = ctx.tmp / "kitti"
    training = root / "training"
    for sub in ("velodyne", "calib", "label_2"):
        (training / sub).mkdir(parents=True)
    (training / "calib" / "000000.txt").write_text(_KITTI_CALIB)
    (training / "label_2" / "000000.txt").write_text(_KITTI_LABEL)
    points = np.random.default_rng(0).normal(size=(10, 4)).astype("<f4")
    points[:, 0] += 10.0
    points.tofile(training / "velodyne" / "000000.bin")
    return root


def _kitti_file_case(sub: str, mutate: Callable[[Path], Any], **kw: Any) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.kitti import load_frame

        root = _kitti_frame(ctx)
        suffix = ".bin" if sub == "velodyne" else ".txt"
        path = root / "training" / sub / f"000000{suffix}"
        mutate(path)
        return Raises(lambda: load_frame(root, "000000", **kw), [f"000000{suffix}"])

    return make


def _kitti_label_line(line: str) -> Callable[[Path], Any]:
    return lambda p: p.write_text(line + "\n")


_KITTI_FILES: list[tuple[str, str, Callable[[Path], Any]]] = [
    ("velodyne-truncated", "velodyne", lambda p: truncate(p, 0.55)),
    ("velodyne-nan", "velodyne", lambda p: np.full((4, 4), np.nan, "<f4").tofile(p)),
    ("velodyne-missing", "velodyne", lambda p: p.unlink()),
    ("velodyne-is-folder", "velodyne", lambda p: (p.unlink(), p.mkdir())),
    ("calib-missing", "calib", lambda p: p.unlink()),
    ("calib-empty", "calib", lambda p: p.write_text("")),
    ("calib-random-bytes", "calib", lambda p: p.write_bytes(rand_bytes())),
    ("calib-no-p2", "calib", lambda p: p.write_text(_KITTI_CALIB.replace("P2:", "PX:"))),
    ("calib-short-p2", "calib", lambda p: p.write_text(_KITTI_CALIB.replace(f"P2: {_KITTI_P}", "P2: 1 0 0"))),
    ("calib-token", "calib", lambda p: p.write_text(_KITTI_CALIB.replace("R0_rect: 1 0 0", "R0_rect: 1 zero 0"))),
    ("calib-nan", "calib", lambda p: p.write_text(_KITTI_CALIB.replace("R0_rect: 1 0 0", "R0_rect: nan 0 0"))),
    ("calib-no-colon", "calib", lambda p: p.write_text(_KITTI_CALIB.replace("Tr_velo_to_cam:", "Tr_velo_to_cam"))),
    ("calib-singular-r0", "calib", lambda p: p.write_text(_KITTI_CALIB.replace("R0_rect: 1 0 0 0 1 0 0 0 1",
                                                                                 "R0_rect: 0 0 0 0 0 0 0 0 0"))),
    ("label-missing", "label_2", lambda p: p.unlink()),
    ("label-random-bytes", "label_2", lambda p: p.write_bytes(rand_bytes())),
    ("label-14-columns", "label_2", _kitti_label_line("Car 0.00 0 -1.57 600 150 700 250 1.5 1.6 3.9 0 1.5 10")),
    ("label-17-columns", "label_2", _kitti_label_line("Car 0 0 -1.57 600 150 700 250 1.5 1.6 3.9 0 1.5 10 0 0.9 1")),
    ("label-token", "label_2", _kitti_label_line("Car 0.00 0 -1.57 600 150 700 250 1.5 wide 3.9 0 1.5 10 0")),
    ("label-nan-location", "label_2", _kitti_label_line("Car 0.00 0 -1.57 600 150 700 250 1.5 1.6 3.9 nan 1.5 10 0")),
    ("label-negative-size", "label_2", _kitti_label_line("Car 0.00 0 -1.57 600 150 700 250 -1.5 1.6 3.9 0 1.5 10 0")),
    ("label-occluded-7", "label_2", _kitti_label_line("Car 0.00 7 -1.57 600 150 700 250 1.5 1.6 3.9 0 1.5 10 0")),
    ("label-occluded-fraction", "label_2", _kitti_label_line("Car 0.00 0.5 -1.57 600 150 700 250 1.5 1.6 3.9 0 1.5 "
                                                             "10 0")),
    ("label-truncated-2", "label_2", _kitti_label_line("Car 2.0 0 -1.57 600 150 700 250 1.5 1.6 3.9 0 1.5 10 0")),
]
for _name, _sub, _mutate in _KITTI_FILES:
    add("kitti", _name, _kitti_file_case(_sub, _mutate))


def _kitti_arg(kwargs: dict[str, Any], needles: Sequence[str]) -> Make:
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.kitti import load_frame

        args: dict[str, Any] = {"root": _kitti_frame(ctx), "frame_id": "000000", **kwargs}
        return Raises(lambda: load_frame(**args), needles)

    return make


add("kitti", "frame-id-unknown", _kitti_arg({"frame_id": "000007"}, ["000007"]))
add("kitti", "frame-id-path", _kitti_arg({"frame_id": "../000000"}, ["../000000"]))
add("kitti", "frame-id-negative", _kitti_arg({"frame_id": -1}, ["-1"]))
add("kitti", "subset-unknown", _kitti_arg({"subset": "validation"}, ["validation"]))
add("kitti", "root-missing", _kitti_arg({"root": "/nonexistent/kitti_root"}, ["kitti_root"]))


def _detection_dataset(kwargs: dict[str, Any], needles: Sequence[str], split_text: str | None = "000000\n") -> Make:
    """The KITTI detection Dataset (``datasets/kitti_detection.py``) built on the one-frame KITTI set."""
    def make(ctx: Ctx) -> Raises:
        from sparse3d.datasets.kitti_detection import KittiDetectionDataset

        root = _kitti_frame(ctx)
        if split_text is not None:
            (root / "ImageSets").mkdir()
            (root / "ImageSets" / "train.txt").write_text(split_text)
        args: dict[str, Any] = {"root": root, "split": "train", "class_names": ["Car"],
                                "point_range": [0, -40, -3, 70, 40, 1], **kwargs}
        return Raises(lambda: KittiDetectionDataset(**args)[0], needles)

    return make


add("kitti", "dataset-split-file-missing", _detection_dataset({}, ["train"], split_text=None))
add("kitti", "dataset-split-empty", _detection_dataset({}, ["train.txt"], split_text=""))
add("kitti", "dataset-split-unknown-frame", _detection_dataset({}, ["000042"], split_text="000042\n"))
add("kitti", "dataset-class-names-empty", _detection_dataset({"class_names": []}, ["class_names"]))
add("kitti", "dataset-point-range-inf", _detection_dataset({"point_range": [0, -40, -3, "inf", 40, 1]},
                                                           ["point_range"]))
add("kitti", "dataset-point-range-short", _detection_dataset({"point_range": [0, -40, -3]}, ["point_range"]))
add("kitti", "dataset-augment-rotation-reversed", _detection_dataset({"augment": {"rotation": [1.0, -1.0]}},
                                                                     ["rotation"]))
add("kitti", "dataset-augment-scaling-negative", _detection_dataset({"augment": {"scaling": [-1.0, 1.0]}},
                                                                    ["scaling"]))
add("kitti", "dataset-augment-translation-negative", _detection_dataset({"augment": {"translation_std": -0.5}},
                                                                        ["translation_std"]))
add("kitti", "dataset-augment-unknown-key", _detection_dataset({"augment": {"flip_z": True}}, ["flip_z"]))
add("kitti", "dataset-gt-sampling-min-points-negative",
    _detection_dataset({"augment": {"gt_sampling": {"min_points": {"Car": -1}}}}, ["min_points"]))
add("kitti", "dataset-gt-sampling-min-points-text",
    _detection_dataset({"augment": {"gt_sampling": {"min_points": ["Car:many"]}}}, ["min_points"]))
add("kitti", "dataset-gt-sampling-unknown-class",
    _detection_dataset({"augment": {"gt_sampling": {"sample_groups": {"Truk": 15}}}}, ["Truk"]))
add("kitti", "dataset-gt-sampling-unknown-key",
    _detection_dataset({"augment": {"gt_sampling": {"sample_group": {"Car": 15}}}}, ["sample_group"]))
add("kitti", "dataset-gt-sampling-db-missing",  # real (hand-written) data: no database is built unasked
    _detection_dataset({"augment": {"gt_sampling": {"sample_groups": {"Car": 15}}}}, ["kitti_gt_database"]))


@case("kitti", "gt-db-info-random-bytes")
def _gt_db_info_random_bytes(ctx: Ctx) -> Raises:
    from sparse3d.datasets.gt_sampling import GtSampler

    info = _write(ctx, "kitti_dbinfos_train.pkl", rand_bytes())
    return Raises(lambda: GtSampler.from_file(info, {"Car": 15}), ["kitti_dbinfos_train.pkl"])


add("kitti", "image-shape-zero", _kitti_arg({"image_shape": (0, 1242)}, ["image_shape"]))
add("kitti", "difficulty-rule-unknown", _kitti_arg({"difficulty_rule": "easy"}, ["easy"]))


# ============================================================================================ console scripts
def _data(args: list[str], needles: Sequence[str], out: str | None = "data_out",
          pre: Callable[[Path], None] | None = None) -> Make:
    """``sparse3d-data`` in-process with a tiny size, writing under ``tmp/data_out`` (which must not appear)."""

    def make(ctx: Ctx) -> Cli:
        target = ctx.tmp / (out or "data_out")
        if pre is not None:
            pre(target)
        argv = [*args, f"paths.output_root={ctx.tmp / 'runs'}", "generator.progress=false"]
        if out is not None:
            argv.append(f"out_dir={target}")
        return Cli("sparse3d-data", argv, needles, [target])

    return make


_TINY = ["generator.width=32", "generator.height=24", "generator.num_views=4", "generator.factors=[2]"]
add("cli_data", "unknown-generator", _data(["bogus"], ["bogus"]))
add("cli_data", "no-generator", _data(["generator=null"], ["generator"]))
add("cli_data", "lidar-num-scenes-0", _data(["lidar", "generator.num_scenes=0"], ["num_scenes"]))
add("cli_data", "lidar-val-scenes-too-many", _data(["lidar", "generator.num_scenes=2", "generator.val_scenes=2"],
                                                   ["val_scenes"]))
add("cli_data", "lidar-num-beams-0", _data(["lidar", "generator.num_beams=0"], ["num_beams"]))
add("cli_data", "lidar-max-range-negative", _data(["lidar", "generator.max_range=-1"], ["max_range"]))
add("cli_data", "lidar-noise-negative", _data(["lidar", "generator.noise_std=-0.1"], ["noise_std"]))
add("cli_data", "lidar-num-scenes-text", _data(["lidar", "generator.num_scenes=many"], ["num_scenes"]))
add("cli_data", "spare-width-0", _data(["spare", "generator.width=0"], ["width"]))
add("cli_data", "spare-lighting-9", _data(["spare", "generator.lightings=[9]"], ["lightings"]))
add("cli_data", "spare-naming-unknown", _data(["spare", "generator.naming=Blender"], ["naming"]))
add("cli_data", "spare-num-scenes-0", _data(["spare", "generator.num_scenes=0"], ["num_scenes"]))
add("cli_data", "spare-families-unknown", _data(["spare", "generator.families=[cube]"], ["cube"]))
add("cli_data", "llff-width-0", _data(["llff", *_TINY, "generator.width=0"], ["width"]))
add("cli_data", "llff-num-views-1", _data(["llff", *_TINY, "generator.num_views=1"], ["num_views"]))
add("cli_data", "llff-factor-0", _data(["llff", *_TINY, "generator.factors=[0]"], ["factors"]))
add("cli_data", "llff-width-text", _data(["llff", *_TINY, "generator.width=wide"], ["width"]))
add("cli_data", "colmap-num-points-negative", _data(["colmap", *_TINY, "generator.num_points=-1"], ["num_points"]))
add("cli_data", "nerfstudio-format-unknown", _data(["nerfstudio", *_TINY, "generator.format=blender"], ["blender"]))
add("cli_data", "nerfstudio-num-scenes-0", _data(["nerfstudio", *_TINY, "generator.num_scenes=0"], ["num_scenes"]))
add("cli_data", "kitti-gt-database-root-missing", _data(["kitti_gt_database", "root=/nonexistent/kitti_root"],
                                                        ["kitti_root"]))


@case("cli_data", "kitti-gt-database-split-missing")
def _gt_database_split_missing(ctx: Ctx) -> Cli:
    root, target = _kitti_frame(ctx), ctx.tmp / "db_out"  # the one-frame set has no ImageSets/train.txt
    return Cli("sparse3d-data", ["kitti_gt_database", f"root={root}", f"out_dir={target}", "generator.progress=false",
                                 f"paths.output_root={ctx.tmp / 'runs'}"], ["train.txt"], [target])


add("cli_data", "out-dir-is-file", _data(["llff", *_TINY], ["data_out"], pre=lambda p: p.write_text("x")))
add("cli_data", "out-dir-not-empty", _data(["llff", *_TINY], ["data_out"],
                                           pre=lambda p: (p.mkdir(), (p / "keep.txt").write_text("x"))))
add("cli_data", "lidar-out-dir-foreign-scans", _data(["lidar"], ["data_out"], pre=lambda p: (
    (p / "sequences" / "00" / "velodyne").mkdir(parents=True),
    (p / "sequences" / "00" / "velodyne" / "000000.bin").write_bytes(bytes(16)))))
def _fit_shapes(names: str, needles: Sequence[str]) -> Make:
    """``sparse3d-data fit_shapes`` with bad shape names: one line, nothing written."""
    def make(ctx: Ctx) -> Cli:
        target = ctx.tmp / "shapes_out"
        return Cli("sparse3d-data", ["fit_shapes", f"generator.names={names}", f"out_dir={target}",
                                     f"paths.output_root={ctx.tmp / 'runs'}"], needles, [target])

    return make


add("cli_data", "fit-shapes-unknown-name", _fit_shapes("[sphere,cube]", ["cube"]))
add("cli_data", "fit-shapes-no-name", _fit_shapes("[]", ["at least one shape"]))
add("cli_data", "out-dir-under-file", _data(["spare", "generator.width=32", "generator.height=24"], ["blocker"],
                                            out="blocker/sub", pre=lambda p: p.parent.write_text("x")))


@case("cli_data", "output-root-is-file")
def _(ctx: Ctx) -> Cli:
    blocker = ctx.tmp / "runs_file"
    blocker.write_text("x")
    target = ctx.tmp / "data_out"
    return Cli("sparse3d-data", ["llff", *_TINY, f"out_dir={target}", f"paths.output_root={blocker}"],
               ["runs_file"], [target])


def _spare(args: Callable[[Ctx], list[str]], needles: Sequence[str], outputs: Callable[[Ctx], list[Path]] = lambda c: [],
           problems: bool = False) -> Make:
    def make(ctx: Ctx) -> Cli:
        argv = [*args(ctx), f"paths.output_root={ctx.tmp / 'runs'}", "progress=false"]
        return Cli("sparse3d-spare", argv, needles, outputs(ctx), exit_code=1 if problems else None,
                   problems=problems)

    return make


def _sub_args(ctx: Ctx, *extra: str) -> list[str]:
    return ["submit", f"data_root={ctx.base['spare']}", f"split={Path(ctx.base['split']).name}",
            f"out={ctx.tmp / 'sub.zip'}", f"width={W}", f"height={H}", "trainer.progress=false", *extra]


def _sub_out(ctx: Ctx) -> list[Path]:
    return [ctx.tmp / "sub.zip", ctx.tmp / "sub_render", ctx.tmp / ".sub.zip.partial"]


add("cli_spare", "no-command", _spare(lambda c: [], ["command"]))
add("cli_spare", "unknown-command", _spare(lambda c: ["publish"], ["publish"]))
add("cli_spare", "submit-no-data-root", _spare(lambda c: ["submit", "split=x.json"], ["data_root"]))
add("cli_spare", "submit-data-root-missing", _spare(lambda c: ["submit", f"data_root={c.tmp / 'nope'}", "split=x.json"],
                                                    ["nope"]))
add("cli_spare", "submit-split-missing", _spare(lambda c: ["submit", f"data_root={c.base['spare']}",
                                                           "split=Track9.json"], ["Track9.json"]))
add("cli_spare", "submit-split-random-bytes", _spare(lambda c: [
    *_sub_args(c)[:2], f"split={_write(c, 'Track1_split_development.json', rand_bytes())}", *_sub_args(c)[3:]],
    ["Track1_split_development.json"], _sub_out))
add("cli_spare", "submit-width-0", _spare(lambda c: _sub_args(c, "width=0"), ["width"], _sub_out))
add("cli_spare", "submit-lighting-9", _spare(lambda c: _sub_args(c, "lighting=9"), ["lighting"], _sub_out))
add("cli_spare", "submit-unknown-scene", _spare(lambda c: _sub_args(c, "scene=scanX"), ["scanX"], _sub_out))
add("cli_spare", "submit-scene-and-scenes", _spare(lambda c: _sub_args(c, "scene=a", "scenes=[b]"), ["scene"],
                                                   _sub_out))
add("cli_spare", "submit-work-dir-is-file", _spare(lambda c: _sub_args(c, f"work_dir={_write(c, 'work', 'x')}"),
                                                   ["work"], lambda c: [c.tmp / "sub.zip", c.tmp / ".sub.zip.partial"]))
add("cli_spare", "submit-out-is-folder", _spare(lambda c: [*_sub_args(c)[:3], f"out={_mkdir(c, 'outdir.zip')}",
                                                           *_sub_args(c)[4:]],
                                                ["outdir.zip"], lambda c: [c.tmp / ".outdir.zip.partial"]))
add("cli_spare", "check-zip-missing", _spare(lambda c: ["check", f"zip={c.tmp / 'gone.zip'}",
                                                        f"split={c.base['split']}"], ["gone.zip"]))
add("cli_spare", "check-split-random-bytes", _spare(lambda c: [
    "check", f"zip={c.base['zip']}", f"split={_write(c, 'Track1_split_development.json', rand_bytes())}"],
    ["Track1_split_development.json"]))
add("cli_spare", "check-split-duplicate-key", _spare(lambda c: [
    "check", f"zip={c.base['zip']}", f"split={_write(c, 'Track1_split_development.json', _SPLITS['duplicate-scene-key'])}"],
    ["Track1_split_development.json"]))
add("cli_spare", "check-datasets-unknown", _spare(lambda c: ["check", f"zip={c.base['zip']}",
                                                             f"split={c.base['split']}", "datasets=[Blender]"],
                                                  ["Blender"]))
add("cli_spare", "check-random-zip", _spare(lambda c: ["check", f"zip={_write(c, 'bad.zip', rand_bytes())}",
                                                       f"split={c.base['split']}", f"width={W}", f"height={H}"],
                                            ["bad.zip"], problems=True))
add("cli_spare", "collect-runs-missing", _spare(lambda c: ["collect", f"runs={c.tmp / 'no_runs'}"], ["no_runs"],
                                                lambda c: [c.tmp / "no_runs"]))
add("cli_spare", "collect-results-random-bytes", _spare(lambda c: [
    "collect", f"runs={_results(c)}", f"table={c.tmp / 'table'}"], ["results.json"],
    lambda c: [c.tmp / "table.md", c.tmp / "table.csv"]))


def _train(args: list[str], needles: Sequence[str]) -> Make:
    """``sparse3d-train`` on the toy experiment (a user model outside the package), one bad override each."""

    def make(ctx: Ctx) -> Cli:
        runs = ctx.tmp / "runs"
        argv = ["--config-dir", str(ctx.extra["toy_config_dir"]), "experiment=toy", f"paths.output_root={runs}",
                f"paths.data_dir={ctx.tmp / 'data'}", *args]
        return Cli("sparse3d-train", argv, needles, [runs / "train" / "toy" / "checkpoints"])

    return make


add("cli_train", "lr-negative", _train(["optimizer.lr=-1"], ["lr"]))
add("cli_train", "lr-nan", _train(["optimizer.lr=nan"], ["lr"]))
add("cli_train", "momentum-negative", _train(["optimizer.momentum=-0.5"], ["momentum"]))
add("cli_train", "num-workers-negative", _train(["data.num_workers=-1"], ["num_workers"]))
add("cli_train", "batch-size-0", _train(["data.batch_size=0"], ["batch_size"]))
add("cli_train", "max-steps-0", _train(["trainer.max_steps=0"], ["max_steps"]))
add("cli_train", "max-steps-text", _train(["trainer.max_steps=many"], ["max_steps"]))
add("cli_train", "ckpt-every-negative", _train(["trainer.ckpt_every=-1"], ["ckpt_every"]))
add("cli_train", "log-every-0", _train(["trainer.log_every=0"], ["log_every"]))
add("cli_train", "device-unknown", _train(["trainer.device=tpu"], ["tpu"]))
add("cli_train", "resume-missing", _train(["resume=/nonexistent/run.ckpt"], ["run.ckpt"]))
add("cli_train", "experiment-unknown", _train(["experiment=nope"], ["nope"]))
add("cli_train", "data-root-is-file", _train(["data.root=/etc/hostname", "data.generate_if_missing=false"],
                                             ["/etc/hostname"]))


def _bench(args: list[str], needles: Sequence[str], out: str | None = None) -> Make:
    def make(ctx: Ctx) -> Cli:
        outputs = [ctx.tmp / out] if out else []
        (ctx.tmp / "file.txt").write_text("not a folder")
        argv = [a.replace("{tmp}", str(ctx.tmp)) for a in args]
        return Cli("sparse3d-bench", argv, needles, outputs, exit_code=2)

    return make


add("cli_bench", "repeats-0", _bench(["kernels", "--quick", "--repeats", "0", "--json", "{tmp}/b.json"], ["repeats"],
                                     "b.json"))
add("cli_bench", "repeats-text", _bench(["kernels", "--quick", "--repeats", "few", "--json", "{tmp}/b.json"],
                                        ["repeats"], "b.json"))
add("cli_bench", "suite-unknown", _bench(["nosuite", "--json", "{tmp}/b.json"], ["nosuite"], "b.json"))
add("cli_bench", "json-missing-value", _bench(["kernels", "--json"], ["--json"]))
add("cli_bench", "json-under-a-file", _bench(["kernels", "--quick", "--repeats", "1", "--json",
                                              "{tmp}/file.txt/b.json"], ["file.txt"], "file.txt"))
add("cli_bench", "json-is-folder", _bench(["kernels", "--quick", "--repeats", "1", "--json", "{tmp}"], ["json"]))
add("cli_bench", "device-unknown", _bench(["kernels", "--quick", "--repeats", "1", "--device", "tpu", "--json",
                                           "{tmp}/b.json"], ["tpu"], "b.json"))
add("cli_bench", "extra-positional", _bench(["kernels", "splatting"], ["splatting"]))
# sparse3d-bench splatting_methods: every argument is checked before a scene is generated or a method fitted.
for _name, _args, _needles in [
    ("methods-unknown", ["suite.runner.methods=[gs3d,nope]"], ["nope"]),
    ("methods-empty", ["suite.runner.methods=[]"], ["methods"]),
    ("sizes-unknown-family", ["sizes={frames:[2]}"], ["frames"]),
    ("sizes-resolution-one-value", ["sizes={resolution:[64]}"], ["resolution"]),
    ("sizes-steps-two-values", ["sizes={steps:[4,8]}"], ["steps"]),
    ("overrides-method-not-run", ["suite.runner.methods=[gs3d]", "suite.runner.overrides={rdggs:['method.rdg_weight=0']}"],
     ["overrides.rdggs"]),
    ("overrides-unknown-key", ["suite.runner.methods=[gs3d]", "suite.runner.overrides={gs3d:['method.nope=1']}"],
     ["method.nope"]),
    ("overrides-bad-value", ["suite.runner.methods=[gs3d]", "suite.runner.overrides={gs3d:['method.num_points=-5']}"],
     ["gs3d"]),
    ("naming-unknown", ["suite.runner.naming=Blender"], ["naming"]),
    ("work-dir-not-empty", ["suite.runner.work_dir={tmp}"], ["work_dir"]),
]:
    add("cli_bench", f"splatting-methods-{_name}",
        _bench(["splatting_methods", "--quick", *_args, "--json", "{tmp}/b.json"], _needles, "b.json"))

# sparse3d-bench dsvt_quality: every argument is checked before a frame is generated or a model trained.
for _name, _args, _needles in [
    ("experiments-unknown", ["suite.runner.experiments=[dsvt_synth,nope]"], ["nope"]),
    ("experiments-not-a-detector", ["suite.runner.experiments=[gs3d_spare]"], ["gs3d_spare"]),
    ("experiments-empty", ["suite.runner.experiments=[]"], ["experiments"]),
    ("sizes-frames-too-few", ["sizes={frames:[1]}"], ["frames"]),
    ("sizes-steps-two-values", ["sizes={steps:[2,4]}"], ["steps"]),
    ("overrides-unknown-key", ["suite.runner.overrides={dsvt_synth:['model.nope=1']}"], ["model.nope"]),
    ("val-fraction-one", ["suite.runner.val_fraction=1.0"], ["val_fraction"]),
    ("work-dir-not-empty", ["suite.runner.work_dir={tmp}"], ["work_dir"]),
]:
    add("cli_bench", f"dsvt-quality-{_name}",
        _bench(["dsvt_quality", "--quick", *_args, "--json", "{tmp}/b.json"], _needles, "b.json"))

def _eval(args: Callable[[Ctx], list[str]], needles: Sequence[str]) -> Make:
    def make(ctx: Ctx) -> Cli:
        return Cli("sparse3d-eval", [*args(ctx), f"paths.output_root={ctx.tmp / 'runs'}"], needles)

    return make


add("cli_eval", "ckpt-missing", _eval(lambda c: [f"ckpt_path={c.tmp / 'gone.ckpt'}"], ["gone.ckpt"]))
add("cli_eval", "ckpt-random-bytes", _eval(lambda c: [f"ckpt_path={_write(c, 'bad.ckpt', rand_bytes())}"],
                                           ["bad.ckpt"]))
add("cli_eval", "ckpt-is-folder", _eval(lambda c: [f"ckpt_path={_mkdir(c, 'ckdir')}"], ["ckdir"]))
add("cli_eval", "render-pred-missing", _eval(lambda c: ["evaluator=render", f"pred={c.tmp / 'nopred'}",
                                                     f"data_root={c.base['spare']}", f"split={c.base['split']}"],
                                             ["nopred"]))
add("cli_eval", "render-split-random-bytes", _eval(lambda c: [
    "evaluator=render", f"pred={c.base['zip']}", f"data_root={c.base['spare']}",
    f"split={_write(c, 'Track1_split_development.json', rand_bytes())}"], ["Track1_split_development.json"]))
add("cli_eval", "evaluator-unknown", _eval(lambda c: ["evaluator=oracle"], ["oracle"]))
add("cli_eval", "kitti-ap-pred-missing", _eval(lambda c: ["evaluator=kitti_ap", f"pred={c.tmp / 'nopred'}",
                                                       f"gt={_kitti_frame(c)}", "split=null"], ["nopred"]))
add("cli_eval", "kitti-ap-gt-missing", _eval(lambda c: ["evaluator=kitti_ap", f"pred={_mkdir(c, 'pred')}",
                                                     f"gt={c.tmp / 'nogt'}", "split=null"], ["nogt"]))
add("cli_eval", "kitti-ap-split-unknown", _eval(lambda c: ["evaluator=kitti_ap", f"pred={_mkdir(c, 'pred')}",
                                                        f"gt={_kitti_frame(c)}", "split=holdout"], ["holdout"]))
add("cli_eval", "kitti-ap-pred-15-columns", _eval(lambda c: [
    "evaluator=kitti_ap", f"pred={(_mkdir(c, 'pred'), _write(c, 'pred/000000.txt', _KITTI_LABEL))[0]}",
    f"gt={_kitti_frame(c)}", "split=null"], ["000000.txt"]))
add("cli_eval", "kitti-ap-pred-and-ckpt", _eval(lambda c: [
    "evaluator=kitti_ap", f"pred={_mkdir(c, 'pred')}", f"ckpt_path={c.tmp / 'run'}", f"gt={_kitti_frame(c)}",
    "split=null"], ["ckpt_path"]))


def _detect(args: Callable[[Ctx], list[str]], needles: Sequence[str]) -> Make:
    def make(ctx: Ctx) -> Cli:
        out = ctx.tmp / "det_out"
        return Cli("sparse3d-detect", [*args(ctx), f"out={out}", f"paths.output_root={ctx.tmp / 'runs'}"],
                   needles, [out])

    return make


add("cli_detect", "ckpt-missing", _detect(lambda c: [f"ckpt={c.tmp / 'gone.ckpt'}", f"input={c.base['scan_bin']}"],
                                          ["gone.ckpt"]))
add("cli_detect", "ckpt-random-bytes", _detect(lambda c: [f"ckpt={_write(c, 'bad.ckpt', rand_bytes())}",
                                                          f"input={c.base['scan_bin']}"], ["bad.ckpt"]))
add("cli_detect", "ckpt-absent", _detect(lambda c: [f"input={c.base['scan_bin']}"], ["ckpt"]))
add("cli_detect", "input-absent", _detect(lambda c: [f"ckpt={_write(c, 'bad.ckpt', rand_bytes())}"], ["input"]))
add("cli_detect", "input-missing", _detect(lambda c: [f"ckpt={_write(c, 'bad.ckpt', rand_bytes())}",
                                                      f"input={c.tmp / 'noscan.bin'}"], ["noscan.bin"]))
add("cli_detect", "input-unknown-suffix", _detect(lambda c: [f"ckpt={_write(c, 'bad.ckpt', rand_bytes())}",
                                                             f"input={_write(c, 'scan.xyz', b'1 2 3')}"], ["scan.xyz"]))
add("cli_detect", "calib-garbage", _detect(lambda c: [f"ckpt={_write(c, 'bad.ckpt', rand_bytes())}",
                                                      f"input={c.base['scan_bin']}",
                                                      f"calib={_write(c, 'calib.txt', rand_bytes())}"], ["calib.txt"]))
add("cli_detect", "kitti-split-unknown", _detect(lambda c: [f"ckpt={_write(c, 'bad.ckpt', rand_bytes())}",
                                                            f"input={_kitti_frame(c)}", "split=holdout"], ["holdout"]))


# ================================================================================================== meshes
def _valid_mesh(ctx: Ctx, name: str) -> Path:
    """A unit cube written by the project's mesh writer, checked to load (the mutation is the only difference)."""
    pytest.importorskip("trimesh")
    from sparse3d.datasets.synth.shapes import box_mesh
    from sparse3d.io.mesh import TriangleMesh, read_mesh, write_mesh

    path = write_mesh(ctx.tmp / name, TriangleMesh(*box_mesh((0, 0, 0), (1, 1, 1))))
    assert read_mesh(path).num_faces == 12
    return path


def _mesh_case(make_file: Callable[[Ctx], Path], needles: Sequence[str] = ()) -> Make:
    def make(ctx: Ctx) -> Raises:
        pytest.importorskip("trimesh")
        from sparse3d.io.mesh import read_mesh

        path = make_file(ctx)
        return Raises(lambda: read_mesh(path), [path.name, *needles])

    return make


_TRI_OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\n"
_ASCII_PLY = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
              "element face 1\nproperty list uchar int vertex_indices\nend_header\n")

add("mesh", "truncated-binary-ply", _mesh_case(lambda c: truncate(_valid_mesh(c, "cube.ply"))))
add("mesh", "truncated-ascii-ply", _mesh_case(lambda c: _write(c, "tri.ply", _ASCII_PLY + "0 0 0\n1 0 0\n")))
add("mesh", "truncated-glb", _mesh_case(lambda c: truncate(_valid_mesh(c, "cube.glb"))))
add("mesh", "ply-header-only", _mesh_case(lambda c: truncate(_valid_mesh(c, "cube.ply"), 0.3)))
add("mesh", "obj-random-bytes", _mesh_case(lambda c: _write(c, "mesh.obj", rand_bytes())))
add("mesh", "ply-random-bytes", _mesh_case(lambda c: _write(c, "mesh.ply", rand_bytes())))
add("mesh", "glb-random-bytes", _mesh_case(lambda c: _write(c, "mesh.glb", rand_bytes())))
add("mesh", "off-not-a-mesh", _mesh_case(lambda c: _write(c, "mesh.off", "OFF\nthree vertices please\n")))
add("mesh", "obj-face-index-out-of-range", _mesh_case(lambda c: _write(c, "oob.obj", _TRI_OBJ + "f 1 2 3\nf 1 2 4\n")))
add("mesh", "ply-face-index-out-of-range", _mesh_case(
    lambda c: _write(c, "oob.ply", _ASCII_PLY + "0 0 0\n1 0 0\n0 1 0\n3 0 1 3\n"), ["out of range"]))
add("mesh", "obj-nan-vertex", _mesh_case(lambda c: replace_text(_valid_mesh(c, "cube.obj"), "\nv ", "\nv nan "),
                                         ["non-finite"]))
add("mesh", "ply-inf-vertex", _mesh_case(lambda c: _write(c, "inf.ply", _ASCII_PLY + "0 0 inf\n1 0 0\n0 1 0\n3 0 1 2\n"),
                                         ["non-finite"]))
add("mesh", "empty-file", _mesh_case(lambda c: _write(c, "empty.ply", b""), ["empty"]))
add("mesh", "point-cloud-ply", _mesh_case(lambda c: c.copy("points_ply"), ["point cloud"]))
add("mesh", "obj-vertices-only", _mesh_case(lambda c: _write(c, "points.obj", _TRI_OBJ)))
add("mesh", "unknown-extension", _mesh_case(lambda c: _write(c, "mesh.xyz", _TRI_OBJ + "f 1 2 3\n"), ["extension"]))
add("mesh", "is-folder", _mesh_case(lambda c: _mkdir(c, "mesh.ply")))
add("mesh", "missing", _mesh_case(lambda c: c.tmp / "gone.obj"))


def _mesh_eval(args: Callable[[Ctx], list[str]], needles: Sequence[str]) -> Make:
    """``sparse3d-eval evaluator=mesh``: one error line, and no results file anywhere under the output root."""
    def make(ctx: Ctx) -> Cli:
        pytest.importorskip("trimesh")
        runs = ctx.tmp / "runs"
        return Cli("sparse3d-eval", ["evaluator=mesh", "n_points=1000", *args(ctx), f"paths.output_root={runs}"],
                   needles, no_files=[(runs, "results.*")])

    return make


add("mesh", "cli-pred-missing", _mesh_eval(lambda c: [f"pred={c.tmp / 'nopred.ply'}", f"gt={_valid_mesh(c, 'gt.ply')}"],
                                           ["nopred.ply"]))
add("mesh", "cli-gt-missing", _mesh_eval(lambda c: [f"pred={_valid_mesh(c, 'pred.ply')}", f"gt={c.tmp / 'nogt.obj'}"],
                                         ["nogt.obj"]))
add("mesh", "cli-pred-truncated", _mesh_eval(lambda c: [f"pred={truncate(_valid_mesh(c, 'pred.ply'))}",
                                                        f"gt={_valid_mesh(c, 'gt.glb')}"], ["pred.ply"]))
add("mesh", "cli-gt-random-bytes", _mesh_eval(lambda c: [f"pred={_valid_mesh(c, 'pred.ply')}",
                                                         f"gt={_write(c, 'gt.obj', rand_bytes())}"], ["gt.obj"]))
add("mesh", "cli-gt-point-cloud", _mesh_eval(lambda c: [f"pred={_valid_mesh(c, 'pred.ply')}",
                                                        f"gt={c.copy('points_ply')}"], ["points.ply"]))
add("mesh", "cli-pred-is-folder", _mesh_eval(lambda c: [f"pred={_mkdir(c, 'pred.obj')}", f"gt={_valid_mesh(c, 'gt.ply')}"],
                                             ["pred.obj"]))
add("mesh", "cli-gt-absent", _mesh_eval(lambda c: [f"pred={_valid_mesh(c, 'pred.ply')}"], ["gt="]))
add("mesh", "cli-n-points-0", _mesh_eval(lambda c: [f"pred={_valid_mesh(c, 'pred.ply')}", f"gt={_valid_mesh(c, 'gt.ply')}",
                                                    "n_points=0"], ["n_points"]))
add("mesh", "cli-normalize-unknown", _mesh_eval(lambda c: [f"pred={_valid_mesh(c, 'pred.ply')}",
                                                           f"gt={_valid_mesh(c, 'gt.ply')}", "normalize=bbox"],
                                                ["normalize"]))


def _sparse3d_mesh(args: Callable[[Ctx], list[str]], needles: Sequence[str]) -> Make:
    """``sparse3d-mesh``: one error line naming the input or option, and no mesh written."""
    def make(ctx: Ctx) -> Cli:
        pytest.importorskip("trimesh")
        out = ctx.tmp / "out" / "remeshed.ply"
        return Cli("sparse3d-mesh", ["resolution=16", f"out={out}", f"paths.output_root={ctx.tmp / 'runs'}",
                                     *args(ctx)], needles, outputs=[out.parent])

    return make


def _npy(ctx: Ctx, name: str, array: np.ndarray) -> Path:
    path = ctx.tmp / name
    np.save(path, array)
    return path


add("mesh", "cli-mesh-input-absent", _sparse3d_mesh(lambda c: [], ["input="]))
add("mesh", "cli-mesh-input-missing", _sparse3d_mesh(lambda c: [f"input={c.tmp / 'gone.obj'}"], ["gone.obj"]))
add("mesh", "cli-mesh-input-truncated", _sparse3d_mesh(lambda c: [f"input={truncate(_valid_mesh(c, 'in.glb'))}"],
                                                       ["in.glb"]))
add("mesh", "cli-mesh-input-random-bytes", _sparse3d_mesh(lambda c: [f"input={_write(c, 'in.obj', rand_bytes())}"],
                                                          ["in.obj"]))
add("mesh", "cli-mesh-npy-wrong-shape", _sparse3d_mesh(
    lambda c: [f"input={_npy(c, 'vol.npy', np.zeros((4, 5), np.float32))}"], ["vol.npy", "shape"]))
add("mesh", "cli-mesh-npy-not-numpy", _sparse3d_mesh(lambda c: [f"input={_write(c, 'vol.npy', rand_bytes())}"],
                                                     ["vol.npy"]))
add("mesh", "cli-mesh-sdf-no-surface", _sparse3d_mesh(
    lambda c: [f"input={_npy(c, 'pos.npy', np.ones((9, 9, 9), np.float32))}"], ["pos.npy", "no surface"]))
add("mesh", "cli-mesh-sdf-nan", _sparse3d_mesh(
    lambda c: [f"input={_npy(c, 'nan.npy', np.full((9, 9, 9), np.nan, np.float32))}"], ["finite"]))
add("mesh", "cli-mesh-points-nan", _sparse3d_mesh(
    lambda c: [f"input={_npy(c, 'pts.npy', np.full((50, 3), np.nan, np.float32))}"], ["pts.npy"]))
add("mesh", "cli-mesh-grid-random-bytes", _sparse3d_mesh(lambda c: [f"input={_write(c, 'grid.npz', rand_bytes())}"],
                                                         ["grid.npz"]))
add("mesh", "cli-mesh-unknown-suffix", _sparse3d_mesh(lambda c: [f"input={_write(c, 'shape.step', 'ISO-10303-21;')}"],
                                                      ["shape.step"]))
add("mesh", "cli-mesh-bad-out-suffix", lambda c: Cli(
    "sparse3d-mesh", [f"input={_valid_mesh(c, 'in.ply')}", f"out={c.tmp / 'o' / 'mesh.xyz'}",
                      f"paths.output_root={c.tmp / 'runs'}"], ["out="], outputs=[c.tmp / "o"]))
add("mesh", "cli-mesh-resolution-0", _sparse3d_mesh(lambda c: [f"input={_valid_mesh(c, 'in.ply')}", "resolution=0"],
                                                    ["resolution"]))
add("mesh", "cli-mesh-type-unknown", _sparse3d_mesh(lambda c: [f"input={_valid_mesh(c, 'in.ply')}", "type=cad"],
                                                    ["type="]))
add("mesh", "cli-mesh-sign-unknown", _sparse3d_mesh(lambda c: [f"input={_valid_mesh(c, 'in.ply')}", "sign=inside"],
                                                    ["sign"]))


def _grid_file(mutate: Callable[[dict[str, np.ndarray]], None]) -> Make:
    """A saved SparseFlex grid with one array changed: ``SparseSDFGrid.load`` refuses it naming the file."""
    def make(ctx: Ctx) -> Raises:
        from sparse3d.models.sparseflex.structure import SparseSDFGrid, grid_from_sdf_volume

        lin = np.linspace(-0.5, 0.5, 9)
        x, y, z = np.meshgrid(lin, lin, lin, indexing="ij")
        grid = grid_from_sdf_volume(np.sqrt(x * x + y * y + z * z).astype(np.float32) - 0.3)
        path = ctx.tmp / "grid.npz"
        grid.save(path)
        assert SparseSDFGrid.load(path).num_cubes == grid.num_cubes
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        mutate(arrays)
        np.savez(path, **arrays)
        return Raises(lambda: SparseSDFGrid.load(path), ["grid.npz"])

    return make


add("mesh", "grid-cubes-out-of-range", _grid_file(lambda a: a.__setitem__("cube_coords", a["cube_coords"] + 100)))
add("mesh", "grid-sdf-wrong-length", _grid_file(lambda a: a.__setitem__("sdf", a["sdf"][:-1])))
add("mesh", "grid-sdf-nan", _grid_file(lambda a: a.__setitem__("sdf", np.full_like(a["sdf"], np.nan))))
add("mesh", "grid-missing-key", _grid_file(lambda a: a.pop("sdf")))


def _mesh_scene(kwargs: dict[str, Any], needles: Sequence[str], mesh: str | None = "in.ply") -> Make:
    """The mesh scene of ``experiment=sparseflex_fit``: bad files and camera settings are one-line errors."""
    def make(ctx: Ctx) -> Raises:
        pytest.importorskip("trimesh")
        from sparse3d.datasets.meshes import load_mesh_scene

        path = _valid_mesh(ctx, mesh) if mesh else ctx.tmp / "gone.obj"
        return Raises(lambda: load_mesh_scene(path, **{"num_views": 2, "test_views": 0, "width": 16, "height": 16,
                                                       **kwargs}), needles)

    return make


add("mesh", "scene-mesh-missing", _mesh_scene({}, ["gone.obj"], mesh=None))
add("mesh", "scene-no-views", _mesh_scene({"num_views": 0}, ["num_views"]))
add("mesh", "scene-tiny-image", _mesh_scene({"width": 4}, ["width=4"]))
add("mesh", "scene-fov-zero", _mesh_scene({"fov_deg": 0.0}, ["fov_deg"]))
add("mesh", "scene-inside-fov-too-wide", _mesh_scene({"inside_views": 2, "inside_fov_deg": 200.0}, ["inside_fov_deg"]))

# ============================================================================================== running them
_MAINS = {
    "sparse3d-data": "sparse3d.cli.data",
    "sparse3d-spare": "sparse3d.cli.spare",
    "sparse3d-train": "sparse3d.cli.train",
    "sparse3d-eval": "sparse3d.cli.eval",
    "sparse3d-bench": "sparse3d.cli.bench",
    "sparse3d-vis": "sparse3d.cli.vis",
    "sparse3d-detect": "sparse3d.cli.detect",
    "sparse3d-mesh": "sparse3d.cli.mesh",
}


def _snapshot(paths: Sequence[Path]) -> dict[Path, Any]:
    """What each output path holds now (None: absent), to check that a failed run changed nothing."""
    state: dict[Path, Any] = {}
    for p in paths:
        if p.is_file():
            state[p] = p.read_bytes()
        elif p.is_dir():
            state[p] = sorted((str(q.relative_to(p)), q.is_file() and q.read_bytes()) for q in p.rglob("*"))
        else:
            state[p] = None
    return state


def _run_in_process(cli: Cli, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> tuple[int, str,
                                                                                                          str]:
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    module = importlib.import_module(_MAINS[cli.app])
    for key in ("HYDRA_FULL_ERROR", "SPARSE3D_OUTPUT_ROOT", "SPARSE3D_DATA_DIR", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    GlobalHydra.instance().clear()
    status: Any = 0
    if cli.app == "sparse3d-vis":
        status = module.main(cli.argv)
    else:
        monkeypatch.setattr(sys, "argv", [cli.app, *cli.argv])
        try:
            module.main()
        except SystemExit as exc:
            status = exc.code
    GlobalHydra.instance().clear()
    out, err = capfd.readouterr()
    code = status if isinstance(status, int) else (0 if status is None else 1)
    return code, out, err


def _assert_cli(cli: Cli, code: int, out: str, err: str) -> None:
    text = out + err
    assert "Traceback" not in text, text[-3000:]
    assert code != 0, f"exit status 0 for bad input\n{text[-3000:]}"
    if cli.exit_code is not None:
        assert code == cli.exit_code, text[-3000:]
    if cli.problems:
        assert any(n in out for n in cli.needles), out[-3000:]
        return
    lines = [line for line in err.splitlines() if line.startswith(f"{cli.app}: error:")]
    assert len(lines) == 1, f"expected one '{cli.app}: error:' line\n{err[-3000:]}"
    assert any(n in lines[0] for n in cli.needles), f"{lines[0]!r} names none of {list(cli.needles)}"


def _assert_raises(check: Raises) -> None:
    with pytest.raises(READER_ERRORS) as info:
        check.call()
    message = str(info.value)
    assert not isinstance(info.value, UnicodeDecodeError), message
    assert message.strip() and "\n" not in message.strip(), f"not one line: {message!r}"
    assert any(n in message for n in check.needles), f"{message!r} names none of {list(check.needles)}"


def _assert_problems(check: Problems) -> None:
    problems = check.call()
    assert problems, "a broken submission was accepted"
    text = "\n".join(map(str, problems))
    assert any(n in text for n in check.needles), f"{text} names none of {list(check.needles)}"


AREA_COUNTS = Counter(name.split("-", 1)[0] for name, _ in CASES)


@pytest.fixture
def corpus_ctx(corpus_base: dict[str, Any], tmp_path: Path, toy_config_dir: Path, toy_module_dir: Path,
               monkeypatch: pytest.MonkeyPatch) -> Ctx:
    monkeypatch.syspath_prepend(str(toy_module_dir))
    monkeypatch.chdir(tmp_path)  # a forgotten output path lands in the scratch dir, never in the repository
    work = tmp_path / "case"
    work.mkdir()
    return Ctx(corpus_base, work, {"toy_config_dir": toy_config_dir})


@pytest.mark.parametrize("make", [m for _, m in CASES], ids=[name for name, _ in CASES])
def test_malformed_input(make: Make, corpus_ctx: Ctx, monkeypatch: pytest.MonkeyPatch,
                         capfd: pytest.CaptureFixture[str]) -> None:
    check = make(corpus_ctx)
    if isinstance(check, Raises):
        _assert_raises(check)
    elif isinstance(check, Problems):
        _assert_problems(check)
    else:
        before = _snapshot(check.outputs)
        code, out, err = _run_in_process(check, monkeypatch, capfd)
        _assert_cli(check, code, out, err)
        assert _snapshot(check.outputs) == before, "a failed run left output behind"
        for folder, pattern in check.no_files:
            assert not list(folder.rglob(pattern)), f"a failed run left {pattern} under {folder}"


# ----------------------------------------------------------------------------------------------- subprocesses
def _sub_cases(ctx: Ctx) -> list[tuple[str, Cli]]:
    """A representative handful run as a user runs them: the installed console scripts in a subprocess."""
    picks = ["cli_data-llff-width-0", "cli_data-unknown-generator", "cli_spare-check-split-random-bytes",
             "cli_spare-submit-out-is-folder", "cli_train-lr-negative", "cli_bench-repeats-0",
             "vis-cli-truncated-bin", "vis-cli-ascii-ply-missing-column", "cli_eval-ckpt-random-bytes",
             "cli_data-output-root-is-file"]
    makers = dict(CASES)
    out = []
    for name in picks:
        sub = ctx.tmp / name
        sub.mkdir()
        check = makers[name](Ctx(ctx.base, sub, ctx.extra))
        assert isinstance(check, Cli)
        out.append((name, check))
    return out


def test_console_scripts_in_subprocesses(corpus_ctx: Ctx, run_cli: Callable[..., subprocess.CompletedProcess[str]]
                                         ) -> None:
    failures = []
    for name, cli in _sub_cases(corpus_ctx):
        before = _snapshot(cli.outputs)
        result = run_cli([cli.app, *cli.argv], timeout=240)
        try:
            _assert_cli(cli, result.returncode, result.stdout, result.stderr)
            assert _snapshot(cli.outputs) == before, "a failed run left output behind"
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_corpus_covers_every_area() -> None:
    """The corpus has at least 250 cases across every reader, console script and public API (ids are unique)."""
    names = [name for name, _ in CASES]
    assert len(names) == len(set(names))
    expected = {"spare", "splits", "zips", "gaussian_ply", "pointcloud", "semantic_kitti", "kitti", "llff", "nerfstudio",
                "colmap", "posed_scenes", "images", "vis", "cli_data", "cli_spare", "cli_train", "cli_bench",
                "cli_eval", "cli_detect", "mesh"}
    assert expected <= set(AREA_COUNTS), sorted(expected - set(AREA_COUNTS))
    assert len(names) >= 250, len(names)
    print(f"\n{len(names)} cases: " + ", ".join(f"{a} {n}" for a, n in sorted(AREA_COUNTS.items())))



# ------------------------------------------------------------------------------------------- the guard itself
def test_guard_removes_what_a_failed_run_started_and_keeps_earlier_files(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A task failing on bad input leaves no new output (file, folder, ``.partial`` sibling, registered path) and
    prints one line naming the file; files that existed before the run and deliberate exit statuses keep theirs."""
    from omegaconf import OmegaConf

    from sparse3d.cli import _hydra as H

    earlier = tmp_path / "earlier.txt"
    earlier.write_text("keep me")
    out, folder, extra = tmp_path / "new.zip", tmp_path / "new_dir", tmp_path / "registered.bin"

    @H.guarded("sparse3d-guard-test")
    def failing(cfg: Any) -> None:
        H.remove_on_failure(extra, earlier)
        out.with_name(f".{out.name}.partial").write_bytes(b"half")
        (folder / "sub").mkdir(parents=True)
        extra.write_bytes(b"x")
        earlier.write_text("changed")  # existed before: must not be deleted
        (tmp_path / "data.txt").write_bytes(b"\xff\xfe")
        (tmp_path / "data.txt").read_text(encoding="utf-8")  # UnicodeDecodeError, whose message names no file

    cfg = OmegaConf.create({"out": str(out), "out_dir": str(folder), "json": None})
    with pytest.raises(SystemExit) as info:
        failing(cfg)
    assert info.value.code == H.EXIT_USER_ERROR
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sparse3d-guard-test: error:")]
    assert len(lines) == 1 and "data.txt" in lines[0] and "utf-8" in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt", "earlier.txt"]
    assert earlier.read_text() == "changed"

    @H.guarded("sparse3d-guard-test")
    def invalid_result(cfg: Any) -> None:
        out.write_bytes(b"zip with problems")
        raise SystemExit(1)  # e.g. `sparse3d-spare submit` whose zip has problems: the zip stays for inspection

    with pytest.raises(SystemExit) as info:
        invalid_result(cfg)
    assert info.value.code == 1 and out.read_bytes() == b"zip with problems"
