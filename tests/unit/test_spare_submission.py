"""SpaRe submission writer (zip layout, sizes, resume through the per-scene loop's checkpoints) and checker (each
fault kind on its own)."""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sparse3d.cameras import Cameras
from sparse3d.io.images import MAX_IMAGE_PIXELS, png_info, write_png
from sparse3d.io.spare import (
    SplitEntry,
    camera_filename,
    image_filename,
    write_projection_matrix,
    write_split,
)
from sparse3d.models.baselines.reprojection import NearestViewReprojection
from sparse3d.spare.check import KINDS, check_submission
from sparse3d.spare.evaluation import evaluate_rendering
from sparse3d.spare.submission import expected_names, write_submission
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages

W, H = 40, 30
ENTRIES = (
    SplitEntry("Amp", (0, 4, 8), (1, 2, 3, 5, 6, 7, 9, 10, 11, 12), "Synthetic"),
    SplitEntry("scan9", (2, 6, 10), (0, 1, 3, 4, 5, 7, 8, 9, 11, 12), "DTU"),
)


def _projection(view: int) -> np.ndarray:
    """A 13-camera ring at height 1 around the origin, looking at it; K at the W x H image size."""
    angle = 2 * np.pi * view / 13
    centre = np.array([3 * np.cos(angle), 3 * np.sin(angle), 1.0])
    z = -centre / np.linalg.norm(centre)
    x = np.cross(z, [0.0, 0.0, -1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    K = np.array([[40.0, 0.0, W / 2], [0.0, 40.0, H / 2], [0.0, 0.0, 1.0]])
    return K @ np.hstack([R, (-R @ centre)[:, None]])


@pytest.fixture(scope="module")
def spare_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny scenes (one per dataset, 13 views each) and a Track-1-like split file."""
    root = tmp_path_factory.mktemp("spare")
    rng = np.random.default_rng(0)
    for entry in ENTRIES:
        for v in range(13):
            write_projection_matrix(root / entry.scene / "cameras" / camera_filename(v), _projection(v))
            write_png(root / entry.scene / image_filename(entry.dataset, v), rng.random((H, W, 3)).astype(np.float32))
    write_split(root / "Track1_split_development.json", {e.scene: e for e in ENTRIES})
    return root


def _names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.namelist()


def test_submission_zip_layout_sizes_and_validity(spare_root: Path, tmp_path: Path) -> None:
    split = spare_root / "Track1_split_development.json"
    summary = write_submission(NearestViewReprojection, spare_root, split, tmp_path / "sub.zip", progress=False)
    names = _names(summary.zip_path)
    assert names == expected_names(ENTRIES) and len(names) == 10 * len(ENTRIES) == summary.num_files
    assert "scan9/rect_001_3_r5000.png" in names and "Amp/cam_002_3_0000.png" in names
    assert all(n.count("/") == 1 for n in names)  # scene folders at the archive root, nothing else
    with zipfile.ZipFile(summary.zip_path) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        for name in names:
            info = png_info(archive.read(name))
            assert (info.width, info.height, info.bit_depth, info.color_type) == (1600, 1200, 8, 2)
    assert check_submission(summary.zip_path, split) == []
    assert summary.rendered == ["Amp", "scan9"] and summary.skipped == []
    # Deterministic bytes: zipping the same renders again (everything skipped) gives the same archive.
    again = write_submission(NearestViewReprojection, spare_root, split, tmp_path / "again.zip",
                             work_dir=summary.work_dir, progress=False)
    assert again.skipped == ["Amp", "scan9"] and again.rendered == []
    assert again.zip_path.read_bytes() == summary.zip_path.read_bytes()


class _Recorder:
    """A per-scene method that paints each target view a flat colour and records what it was asked (the writer's
    oracle). Its two "training" steps only count, so a resumed scene shows up as zero steps run."""

    instances: list[_Recorder] = []
    default_steps = 2

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.fitted: PosedImages | None = None
        self.rendered: list[Cameras] = []
        self.steps_run = 0
        self.loaded: dict | None = None
        _Recorder.instances.append(self)

    def setup(self, views: PosedImages, max_steps: int) -> None:
        self.fitted = views

    def training_step(self, step: int) -> dict[str, float]:
        self.steps_run += 1
        return {"loss": 1.0 / (step + 1)}

    def render(self, cameras: Cameras) -> torch.Tensor:
        if self.fail_at is not None and len(self.rendered) == self.fail_at:
            raise KeyboardInterrupt  # an interrupted run
        self.rendered.append(cameras)
        shade = len(self.rendered) / 20
        return torch.full((len(cameras), cameras.height, cameras.width, 3), shade)

    def state_dict(self) -> dict:
        return {"steps_run": self.steps_run}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = dict(state)

    def export(self, out_dir: Path) -> list[Path]:
        return []


def test_writer_rescales_cameras_writes_what_the_method_renders(spare_root: Path, tmp_path: Path) -> None:
    _Recorder.instances = []
    split = spare_root / "Track1_split_development.json"
    out = write_submission(_Recorder, spare_root, split, tmp_path / "s.zip", width=160, height=120, scenes=["scan9"],
                           progress=False)
    (method,) = _Recorder.instances
    assert method.fitted is not None and method.fitted.images.shape == (3, H, W, 3)  # inputs at disk size
    rendered = [c for c in method.rendered if c.width == 160]  # the loop also renders an input view for TensorBoard
    assert len(rendered) == 10
    cam = rendered[0]  # scan9's first test view is view 0, rendered at 160x120 from a 40x30 disk size
    assert (cam.width, cam.height) == (160, 120)
    assert torch.allclose(cam.K[0], torch.tensor([[160.0, 0.0, 80.0], [0.0, 160.0, 60.0], [0.0, 0.0, 1.0]]), atol=1e-3)
    disk = Cameras.from_projection_matrices([_projection(0)], W, H)
    assert torch.allclose(cam.viewmat, disk.viewmat, atol=1e-5)
    with zipfile.ZipFile(out.zip_path) as archive:
        assert archive.namelist() == expected_names([ENTRIES[1]])
        first = np.frombuffer(archive.read(expected_names([ENTRIES[1]])[0]), np.uint8)
    image = cv2.imdecode(first, cv2.IMREAD_UNCHANGED)
    assert image.shape == (120, 160, 3) and np.all(image == round(2 * 255 / 20))  # the second render


def test_resume_skips_finished_scenes_and_reloads_fitted_state(spare_root: Path, tmp_path: Path) -> None:
    split = spare_root / "Track1_split_development.json"
    _Recorder.instances = []
    with pytest.raises(KeyboardInterrupt):
        # render 1 is the loop's TensorBoard image of an input view, renders 2-5 are the first four test views
        write_submission(lambda: _Recorder(fail_at=5), spare_root, split, tmp_path / "s.zip", width=W, height=H,
                         progress=False)
    assert not (tmp_path / "s.zip").exists()
    work = tmp_path / "s_render"
    assert len(list((work / "Amp").glob("*.png"))) == 4  # interrupted after four finished views
    _Recorder.instances = []
    summary = write_submission(_Recorder, spare_root, split, tmp_path / "s.zip", width=W, height=H, progress=False)
    amp, scan9 = _Recorder.instances
    assert amp.loaded == {"steps_run": 2} and amp.steps_run == 0  # the fit resumed from its checkpoint, no steps
    assert (work / ".method_state" / "Amp" / "checkpoints" / "last.ckpt").is_file()
    assert scan9.loaded is None and scan9.steps_run == 2
    assert summary.rendered == ["Amp", "scan9"]
    _Recorder.instances = []
    summary = write_submission(_Recorder, spare_root, split, tmp_path / "s.zip", width=W, height=H, progress=False)
    assert summary.skipped == ["Amp", "scan9"] and summary.rendered == [] and _Recorder.instances == []
    assert check_submission(tmp_path / "s.zip", split, width=W, height=H) == []
    assert ".method_state" not in "".join(_names(tmp_path / "s.zip"))
    # A render damaged after it was written (header intact, data cut) makes only its scene render again.
    damaged = work / "scan9" / "rect_001_3_r5000.png"
    damaged.write_bytes(damaged.read_bytes()[:40])
    summary = write_submission(_Recorder, spare_root, split, tmp_path / "s.zip", width=W, height=H, progress=False)
    assert summary.skipped == ["Amp"] and summary.rendered == ["scan9"]
    assert check_submission(tmp_path / "s.zip", split, width=W, height=H) == []


def test_writer_errors(spare_root: Path, tmp_path: Path) -> None:
    split = spare_root / "Track1_split_development.json"
    with pytest.raises(UserError, match="not in the split"):
        write_submission(_Recorder, spare_root, split, tmp_path / "s.zip", scenes=["SCAN9"], progress=False)
    with pytest.raises(UserError, match="data root not found"):
        write_submission(_Recorder, tmp_path / "nope", split, tmp_path / "s.zip", progress=False)
    # Scene keys are plain names: "../evil" would render outside the work directory.
    evil = tmp_path / "evil_split.json"
    evil.write_text(json.dumps({"../evil": ENTRIES[0].to_json()}))
    with pytest.raises(UserError, match=r"scene '\.\./evil': a scene name must be a plain folder name"):
        write_submission(_Recorder, spare_root, evil, tmp_path / "w" / "s.zip", progress=False)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "w").exists()

    class _Bad(_Recorder):
        def render(self, cameras: Cameras) -> torch.Tensor:
            return torch.zeros(1, 5, 5, 3)

    with pytest.raises(ValueError, match=r"expected \(1, 30, 40, 3\)"):
        write_submission(_Bad, spare_root, split, tmp_path / "s.zip", width=W, height=H, progress=False)


# ------------------------------------------------------------------------------------------------- checker
def _png(width: int = W, height: int = H, kind: str = "rgb8") -> bytes:
    if kind == "palette":
        buf = io.BytesIO()
        Image.new("P", (width, height)).save(buf, format="PNG")
        return buf.getvalue()
    if kind == "jpeg":
        return cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))[1].tobytes()
    arrays = {"rgb8": np.zeros((height, width, 3), np.uint8), "rgba": np.zeros((height, width, 4), np.uint8),
              "rgb16": np.zeros((height, width, 3), np.uint16), "gray": np.zeros((height, width), np.uint8)}
    return cv2.imencode(".png", arrays[kind])[1].tobytes()


def _valid_files() -> dict[str, bytes]:
    return {name: _png() for name in expected_names(ENTRIES)}


def _zip(path: Path, files: dict[str, bytes] | list[tuple[str, bytes]]) -> Path:
    items = files.items() if isinstance(files, dict) else files
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in items:
            archive.writestr(name, data)
    return path


def _split(tmp_path: Path) -> Path:
    return write_split(tmp_path / "Track1_split_development.json", {e.scene: e for e in ENTRIES})


def _mutate_missing(files: dict[str, bytes]) -> None:
    del files["scan9/rect_005_3_r5000.png"]


def _mutate_extra(files: dict[str, bytes]) -> None:
    files["scan9/notes.txt"] = b"hello"


def _mutate_extra_view(files: dict[str, bytes]) -> None:
    files["scan9/rect_003_3_r5000.png"] = _png()  # view 2 is an input view, not a test view


def _mutate_root_file(files: dict[str, bytes]) -> None:
    files["README.txt"] = b"hello"


def _mutate_macos(files: dict[str, bytes]) -> None:
    files["__MACOSX/scan9/._rect_001_3_r5000.png"] = b"meta"
    files["scan9/.DS_Store"] = b"meta"


def _mutate_nested(files: dict[str, bytes]) -> None:
    for name in list(files):
        files[f"submission/{name}"] = files.pop(name)
    files["submission/"] = b""


def _swap(files: dict[str, bytes], old: str, new: str) -> None:
    files[new] = files.pop(old)


def _mutate_replace(name: str, data: bytes) -> Callable[[dict[str, bytes]], None]:
    def mutate(files: dict[str, bytes]) -> None:
        files[name] = data

    return mutate


FAULTS: dict[str, tuple[Callable[[dict[str, bytes]], None], str, int]] = {
    "missing view": (_mutate_missing, "missing", 1),
    "extra file": (_mutate_extra, "extra", 1),
    "extra non-test view": (_mutate_extra_view, "extra", 1),
    "file at root": (_mutate_root_file, "extra", 1),
    "__MACOSX and .DS_Store": (_mutate_macos, "macos_metadata", 1),
    "nested folder": (_mutate_nested, "nested", 21),
    "wrong size": (_mutate_replace("Amp/cam_002_3_0000.png", _png(W + 1, H)), "wrong_size", 1),
    "RGBA": (_mutate_replace("Amp/cam_002_3_0000.png", _png(kind="rgba")), "not_rgb8", 1),
    "16-bit": (_mutate_replace("Amp/cam_002_3_0000.png", _png(kind="rgb16")), "not_rgb8", 1),
    "gray": (_mutate_replace("Amp/cam_002_3_0000.png", _png(kind="gray")), "not_rgb8", 1),
    "palette": (_mutate_replace("Amp/cam_002_3_0000.png", _png(kind="palette")), "not_rgb8", 1),
    "not a PNG": (_mutate_replace("Amp/cam_002_3_0000.png", _png(kind="jpeg")), "not_png", 1),
    "wrong pattern for DTU": (
        lambda f: _swap(f, "scan9/rect_001_3_r5000.png", "scan9/cam_001_3_0000.png"), "bad_name", 1),
    "wrong suffix": (lambda f: _swap(f, "scan9/rect_001_3_r5000.png", "scan9/rect_001_3_r7000.png"), "bad_name", 1),
    "wrong pattern for Synthetic": (
        lambda f: _swap(f, "Amp/cam_002_3_0000.png", "Amp/rect_002_3_r5000.png"), "bad_name", 1),
    "wrong lighting": (
        lambda f: _swap(f, "scan9/rect_001_3_r5000.png", "scan9/rect_001_0_r5000.png"), "wrong_lighting", 1),
    "unknown scene (case)": (
        lambda f: _swap(f, "scan9/rect_001_3_r5000.png", "Scan9/rect_001_3_r5000.png"), "unknown_scene", 1),
    "unknown scene": (_mutate_replace("scan10/rect_001_3_r5000.png", _png()), "unknown_scene", 1),
}


def test_valid_zip_has_no_problems(tmp_path: Path) -> None:
    assert check_submission(_zip(tmp_path / "ok.zip", _valid_files()), _split(tmp_path), W, H) == []
    with_dirs = [("Amp/", b""), ("scan9/", b""), *_valid_files().items()]
    assert check_submission(_zip(tmp_path / "dirs.zip", with_dirs), _split(tmp_path), W, H) == []


@pytest.mark.parametrize("fault", list(FAULTS))
def test_checker_catches_each_fault_kind(tmp_path: Path, fault: str) -> None:
    mutate, kind, count = FAULTS[fault]
    files = _valid_files()
    mutate(files)
    problems = check_submission(_zip(tmp_path / "bad.zip", files), _split(tmp_path), W, H)
    assert {p.kind for p in problems} == {kind}, [str(p) for p in problems]
    assert len(problems) == count, [str(p) for p in problems]
    assert kind in KINDS


def test_checker_reports_every_problem_at_once(tmp_path: Path) -> None:
    files = _valid_files()
    for fault in ("missing view", "extra file", "RGBA", "wrong lighting", "__MACOSX and .DS_Store"):
        FAULTS[fault][0](files)
    files["Amp/cam_004_3_0000.png"] = _png(W, H + 2, kind="rgb16")  # two problems in one file
    problems = check_submission(_zip(tmp_path / "bad.zip", files), _split(tmp_path), W, H)
    kinds = sorted(p.kind for p in problems)
    assert kinds == sorted(["missing", "extra", "not_rgb8", "wrong_lighting", "macos_metadata", "wrong_size",
                            "not_rgb8"])
    messages = "\n".join(map(str, problems))
    assert "scan9/rect_005_3_r5000.png" in messages and "16-bit RGB" in messages and "8-bit RGBA" in messages


def test_checker_duplicates_and_dataset_subsets(tmp_path: Path) -> None:
    files = [*_valid_files().items(), ("Amp/cam_002_3_0000.png", _png())]
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = _zip(tmp_path / "dup.zip", files)
    assert [p.kind for p in check_submission(path, _split(tmp_path), W, H)] == ["duplicate"]
    dtu_only = {n: d for n, d in _valid_files().items() if n.startswith("scan9/")}
    path = _zip(tmp_path / "dtu.zip", dtu_only)
    assert check_submission(path, _split(tmp_path), W, H, datasets=["DTU"]) == []
    assert {p.kind for p in check_submission(path, _split(tmp_path), W, H)} == {"missing"}
    assert {p.kind for p in check_submission(_zip(tmp_path / "all.zip", _valid_files()), _split(tmp_path), W, H,
                                             datasets=["DTU"])} == {"extra"}


def test_checker_corrupt_archives(tmp_path: Path) -> None:
    split = _split(tmp_path)
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    assert [p.kind for p in check_submission(garbage, split, W, H)] == ["corrupt_zip"]
    good = _zip(tmp_path / "good.zip", _valid_files()).read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    assert [p.kind for p in check_submission(truncated, split, W, H)] == ["corrupt_zip"]
    assert [p.kind for p in check_submission(tmp_path / "absent.zip", split, W, H)] == ["corrupt_zip"]
    # Flip bytes inside one stored member: its CRC check fails, the other members are still checked.
    with zipfile.ZipFile(tmp_path / "stored.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in _valid_files().items():
            archive.writestr(name, data)
        offset = archive.getinfo("Amp/cam_002_3_0000.png").header_offset
    raw = bytearray((tmp_path / "stored.zip").read_bytes())
    start = offset + 30 + len("Amp/cam_002_3_0000.png") + 40  # past the local header and the PNG IHDR
    raw[start : start + 8] = b"\xff" * 8
    (tmp_path / "crc.zip").write_bytes(bytes(raw))
    problems = check_submission(tmp_path / "crc.zip", split, W, H)
    assert [(p.kind, p.member) for p in problems] == [("corrupt_zip", "Amp/cam_002_3_0000.png")]


# ------------------------------------------------------------------------- damaged files: checker and eval agree
def _chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def _bomb(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG built by hand: tiny on disk, width * height * 3 bytes once inflated."""
    row, deflate, parts = bytes(1 + 3 * width), zlib.compressobj(9), []
    for start in range(0, height, 64):
        parts.append(deflate.compress(row * min(64, height - start)))
    parts.append(deflate.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def _lying_header(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (CRC recomputed, so only the pixel data can tell)."""
    ihdr = png[16:20 + 9]
    return png[:8] + _chunk(b"IHDR", struct.pack(">II", width, height) + ihdr[8:]) + png[33:]


def _flip_idat_byte(png: bytes) -> bytes:
    at = png.find(b"IDAT") + 10
    return png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1:]


MEMBER = "Amp/cam_002_3_0000.png"
_OK = _png()
_IDAT = _OK.find(b"IDAT") - 4
DAMAGED = {
    # case: (member bytes, [(kind, message)] the checker reports for the member)
    "truncated after the PNG header": (_OK[:33], [
        ("corrupt_png", "truncated PNG: 33 bytes, ends at byte 33 before the IEND chunk")]),
    "truncated inside IDAT": (_OK[:-20], [
        ("corrupt_png", f"truncated PNG: the 'IDAT' chunk at byte {_IDAT} declares {len(_OK) - 12 - _IDAT - 12} "
                        f"bytes, {len(_OK) - 20 - _IDAT - 12} remain")]),
    "bad chunk CRC": (_flip_idat_byte(_OK), [
        ("corrupt_png", f"PNG chunk 'IDAT' at byte {_IDAT} has a bad CRC (the file is corrupted)")]),
    "header says 4000x4000": (_lying_header(_OK, 4000, 4000), [
        ("wrong_size", f"4000x4000, expected {W}x{H}"),
        ("corrupt_png", "PNG pixel data does not decode to the 4000x4000 its header declares (corrupt or short "
                        "compressed data)")]),
    "header says the right size, pixels are fewer": (_lying_header(_png(W - 8, H), W, H), [
        ("corrupt_png", f"PNG pixel data does not decode to the {W}x{H} its header declares (corrupt or short "
                        "compressed data)")]),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_checker_decodes_every_image(tmp_path: Path, case: str) -> None:
    data, expected = DAMAGED[case]
    files = _valid_files()
    files[MEMBER] = data
    problems = check_submission(_zip(tmp_path / "bad.zip", files), _split(tmp_path), W, H)
    assert [(p.kind, p.member, p.message) for p in problems] == [(k, MEMBER, m) for k, m in expected]
    assert all(kind in KINDS for kind, _ in expected)


def test_checker_refuses_a_decompression_bomb(tmp_path: Path) -> None:
    """Over the default pixel cap: refused from the header, before anything is inflated."""
    side = math.isqrt(MAX_IMAGE_PIXELS) + 1
    files = _valid_files()
    files[MEMBER] = _bomb(side, side)
    assert len(files[MEMBER]) < MAX_IMAGE_PIXELS // 100  # compressed: a bomb
    problems = check_submission(_zip(tmp_path / "bomb.zip", files), _split(tmp_path), W, H)
    assert [(p.kind, p.message) for p in problems] == [
        ("wrong_size", f"{side}x{side}, expected {W}x{H}"),
        ("too_large", f"PNG header declares {side}x{side} = {side * side} pixels, over the limit of "
                      f"{MAX_IMAGE_PIXELS}; not decoded"),
    ]
    # A caller's smaller cap applies the same way; under it, the same (valid) bomb decodes.
    small = {**_valid_files(), MEMBER: _bomb(300, 200)}
    path = _zip(tmp_path / "small.zip", small)
    assert [p.kind for p in check_submission(path, _split(tmp_path), W, H, max_pixels=59_999)] == [
        "wrong_size", "too_large"]
    assert [p.kind for p in check_submission(path, _split(tmp_path), W, H, max_pixels=60_000)] == ["wrong_size"]


def test_checker_caps_and_verifies_member_sizes(tmp_path: Path) -> None:
    files = _valid_files()
    path = _zip(tmp_path / "ok.zip", files)
    limit = len(_OK) - 1
    problems = check_submission(path, _split(tmp_path), W, H, max_bytes=limit)
    assert {(p.kind, p.message) for p in problems} == {
        ("too_large", f"{len(_OK)} bytes uncompressed, over the limit of {limit}; not read")}
    assert len(problems) == len(files)
    # A central directory that lies about a member's size: zipfile reads that many bytes and the CRC fails.
    raw = bytearray(path.read_bytes())
    record = raw.rfind(MEMBER.encode()) - 46
    assert raw[record : record + 4] == b"PK\x01\x02"
    raw[record + 24 : record + 28] = struct.pack("<I", 33)
    (tmp_path / "lying.zip").write_bytes(bytes(raw))
    problems = check_submission(tmp_path / "lying.zip", _split(tmp_path), W, H)
    assert [(p.kind, p.member, p.message) for p in problems] == [
        ("corrupt_zip", MEMBER, f"cannot be read from the archive (Bad CRC-32 for file '{MEMBER}')")]


def _crc_broken_zip(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A stored zip whose member MEMBER has flipped bytes past its PNG header: only the zip CRC can tell."""
    with zipfile.ZipFile(tmp_path / "stored.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        offset = archive.getinfo(MEMBER).header_offset
    raw = bytearray((tmp_path / "stored.zip").read_bytes())
    start = offset + 30 + len(MEMBER) + 40
    raw[start : start + 8] = b"\xff" * 8
    (tmp_path / "crc.zip").write_bytes(bytes(raw))
    return tmp_path / "crc.zip"


@pytest.mark.parametrize("case", ["zip CRC", "truncated after the PNG header", "bad chunk CRC",
                                  "header says the right size, pixels are fewer"])
def test_eval_and_checker_give_the_same_diagnosis(spare_root: Path, tmp_path: Path, case: str) -> None:
    """sparse3d-eval reads predictions through the checker's functions: one line, the member, the same words."""
    split = spare_root / "Track1_split_development.json"
    files = {name: write_png(tmp_path / "gt.png", np.zeros((H, W, 3), np.float32)).read_bytes()
             for name in expected_names(ENTRIES)}
    if case == "zip CRC":
        path = _crc_broken_zip(tmp_path, files)
    else:
        files[MEMBER] = DAMAGED[case][0]
        path = _zip(tmp_path / "bad.zip", files)
    problems = check_submission(path, split, W, H)
    assert len(problems) == 1 and problems[0].member == MEMBER
    with pytest.raises(UserError) as info:
        evaluate_rendering(path, spare_root, split)
    assert str(info.value) == f"cannot evaluate the predictions in {path}: {MEMBER}: {problems[0].message}"


def test_eval_blames_a_wrongly_sized_ground_truth_image(spare_root: Path, tmp_path: Path) -> None:
    """One odd ground-truth image: it is named, not the (correct) predictions nor the other images."""
    import shutil

    root = Path(shutil.copytree(spare_root, tmp_path / "data"))
    odd = root / "scan9" / "rect_001_3_r5000.png"  # test view 0 of scan9, the first image load_scene reads
    write_png(odd, np.zeros((H, W + 3, 3), np.float32))
    files = {name: write_png(tmp_path / "p.png", np.zeros((H, W, 3), np.float32)).read_bytes()
             for name in expected_names(ENTRIES)}
    path = _zip(tmp_path / "preds.zip", files)
    with pytest.raises(UserError) as info:
        evaluate_rendering(path, root, root / "Track1_split_development.json")
    assert str(info.value) == (f"{odd}: ground-truth size {W + 3}x{H} differs from the scene's {W}x{H} (the size "
                               "of most of its images)")
