"""Check a SpaRe submission zip before uploading it, listing every problem instead of stopping at the first.

Rules: the submission format of the SpaRe benchmark of the AIM 2024 Sparse Neural Rendering Challenge (Nazarczuk
et al., "AIM 2024 Sparse Neural Rendering Challenge: Dataset and Benchmark", ECCV Workshops 2024;
https://sparebenchmark.github.io), as checked here: exactly one ``<scene>/<image_filename(dataset, view, 3)>`` per
(scene, test view) of the split, scene folders at the archive root with the split's exact (case-sensitive) names,
nothing else (no ``__MACOSX/``, ``.DS_Store``, enclosing folder), every file a 1600x1200 8-bit RGB PNG that
decodes completely. Every member is read once (so zip CRC errors surface), at most ``max_bytes`` of it, and
decoded fully (chunk CRCs, truncation, pixel data matching its header) unless its header declares more than
``max_pixels`` pixels. :func:`read_member`, :func:`image_header` and :func:`verify_image` are the one way
submission files are read and judged; ``sparse3d-eval`` uses them too, so both tools word a fault alike.

A misplaced file that clearly stands for an expected one (under an enclosing folder, in a folder whose name
differs only in case, or named with the wrong pattern or lighting for the right view) is reported once, as
what is wrong with it, rather than also as "missing".
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sparse3d.io.images import MAX_IMAGE_PIXELS, ImageTooLarge, PngInfo, decode_image, png_info
from sparse3d.io.spare import BENCHMARK_SIZE, DATASETS, EVAL_LIGHTING, SplitEntry, image_filename, read_split
from sparse3d.spare.submission import expected_names, submission_name

PathLike = str | Path

KINDS = (
    "corrupt_zip", "missing", "extra", "macos_metadata", "nested", "unknown_scene", "bad_name", "wrong_lighting",
    "duplicate", "not_png", "wrong_size", "not_rgb8", "corrupt_png", "too_large",
)
MAX_MEMBER_BYTES = 64 << 20
"""Largest file read from a submission (uncompressed bytes); an uncompressed 1600x1200 RGB PNG is about 5.8 MB."""
_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
_IMAGE_NAME = re.compile(r"^(?P<prefix>cam|rect)_(?P<number>\d{3})_(?P<lighting>\d+)_(?P<suffix>[^.]+)\.png$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission: a ``kind`` from :data:`KINDS`, the member concerned and a message."""

    kind: str
    member: str | None
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.member}: {self.message}" if self.member else f"[{self.kind}] {self.message}"


class MemberError(Exception):
    """A submission file that cannot be used: a ``kind`` from :data:`KINDS` and a message not naming the file."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


def read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo | str, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """All bytes of one archive member, CRC-checked; :class:`MemberError` ("corrupt_zip", "too_large") otherwise.

    The member's declared size is checked against ``max_bytes`` before anything is inflated; :mod:`zipfile`
    never returns more than that declared size, and a size that lies shows up as a CRC or end-of-data error.
    """
    info = archive.getinfo(member) if isinstance(member, str) else member
    if info.file_size > max_bytes:
        raise MemberError("too_large", f"{info.file_size} bytes uncompressed, over the limit of {max_bytes}; not read")
    try:
        with archive.open(info) as handle:
            return handle.read()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise MemberError("corrupt_zip", f"cannot be read from the archive ({exc})") from None


def read_file(path: Path, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """A submission file from a directory, with the same size limit and error kinds as :func:`read_member`."""
    size = path.stat().st_size
    if size > max_bytes:
        raise MemberError("too_large", f"{size} bytes, over the limit of {max_bytes}; not read")
    return path.read_bytes()


def image_header(data: bytes) -> PngInfo:
    """The PNG header facts of a submission file; :class:`MemberError` ("not_png") when it is no PNG."""
    try:
        return png_info(data)
    except ValueError:
        raise MemberError("not_png", "not a PNG file") from None


def verify_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Decode a submission PNG completely; :class:`MemberError` ("too_large", "corrupt_png") when that fails."""
    try:
        decode_image(data, max_pixels)
    except ImageTooLarge as exc:
        raise MemberError("too_large", str(exc)) from None
    except ValueError as exc:
        raise MemberError("corrupt_png", str(exc)) from None


def _is_macos_metadata(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1] == ".DS_Store" or parts[-1].startswith("._"))


def _describe_format(bit_depth: int, color_type: int) -> str:
    return f"{bit_depth}-bit {_COLOR_TYPES.get(color_type, f'color type {color_type}')}"


class _Checker:
    def __init__(
        self, entries: dict[str, SplitEntry], width: int, height: int, datasets: set[str], max_bytes: int,
        max_pixels: int,
    ) -> None:
        self.datasets = datasets
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.entries = {name: e for name, e in entries.items() if e.dataset in datasets}
        self.excluded = {name for name, e in entries.items() if e.dataset not in datasets}
        self.width, self.height = width, height
        self.expected = set(expected_names(self.entries.values()))
        self.lower_scenes: dict[str, list[str]] = {}
        for scene in self.entries:
            self.lower_scenes.setdefault(scene.lower(), []).append(scene)
        self.problems: list[Problem] = []
        self.covered: set[str] = set()  # expected names accounted for (present or reported as misplaced)

    def add(self, kind: str, member: str | None, message: str) -> None:
        self.problems.append(Problem(kind, member, message))

    def check_content(self, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
        """Read one member (CRC, size cap), check its PNG header facts, then decode it completely."""
        name = member.filename
        try:
            data = read_member(archive, member, self.max_bytes)
            info = image_header(data)
        except MemberError as exc:
            self.add(exc.kind, name, exc.message)
            return
        if (info.width, info.height) != (self.width, self.height):
            self.add("wrong_size", name, f"{info.width}x{info.height}, expected {self.width}x{self.height}")
        if not info.is_rgb8:
            self.add("not_rgb8", name, f"{_describe_format(info.bit_depth, info.color_type)}, expected 8-bit RGB "
                     "(no alpha, no palette, no 16-bit)")
        try:
            verify_image(data, self.max_pixels)
        except MemberError as exc:
            self.add(exc.kind, name, exc.message)

    def intended(self, scene: str, filename: str) -> str | None:
        """The expected member a file at ``scene/filename`` stands for, matching the scene name case-insensitively."""
        for candidate in self.lower_scenes.get(scene.lower(), []):
            if f"{candidate}/{filename}" in self.expected:
                return f"{candidate}/{filename}"
        return None

    def check_name(self, name: str) -> bool:
        """Classify a member's path; True when its content should be checked as a submission image."""
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or "\\" in name:
            self.add("extra", name, "unsafe path (absolute, '..' or backslashes); use scene/file.png")
            return False
        if len(parts) == 1:
            self.add("extra", name, "file at the archive root; only scene folders belong there")
            return False
        if len(parts) > 2:
            target = self.intended(parts[-2], parts[-1])
            if target is not None:
                self.covered.add(target)
                where = "/".join(parts[:-2])
                self.add("nested", name, f"inside the enclosing folder {where!r}/; scene folders must be at the "
                         f"archive root ({target})")
                return True
            self.add("nested", name, "nested folder; the archive must hold <scene>/<image>.png only")
            return False
        scene, filename = parts
        if scene in self.excluded:
            self.add("extra", name, f"scene {scene!r} belongs to a dataset outside {sorted(self.datasets)}")
            return False
        if scene not in self.entries:
            target = self.intended(scene, filename)
            hint = f"; did you mean {self.lower_scenes[scene.lower()][0]!r}?" if scene.lower() in self.lower_scenes else ""
            self.add("unknown_scene", name, f"scene {scene!r} is not in the split (names are case-sensitive){hint}")
            if target is not None:
                self.covered.add(target)
                return True
            return False
        entry = self.entries[scene]
        if name in self.expected:
            self.covered.add(name)
            return True
        return self.diagnose_name(entry, name, filename)

    def diagnose_name(self, entry: SplitEntry, name: str, filename: str) -> bool:
        """Explain a file in a known scene folder whose name is not an expected one."""
        match = _IMAGE_NAME.match(filename)
        if match is None:
            self.add("extra", name, f"not a submission image name (expected e.g. "
                     f"{image_filename(entry.dataset, entry.test_views[0], EVAL_LIGHTING)!r})")
            return False
        view = int(match["number"]) - 1
        if view not in entry.test_views:
            self.add("extra", name, f"view {view} (file number {match['number']}) is not a test view of scene "
                     f"{entry.scene!r}; test views: {list(entry.test_views)}")
            return False
        expected = submission_name(entry, view)
        want = _IMAGE_NAME.match(image_filename(entry.dataset, view, EVAL_LIGHTING))
        assert want is not None  # our own names always match the pattern
        if (match["prefix"], match["suffix"]) != (want["prefix"], want["suffix"]):
            self.add("bad_name", name, f"{match['prefix']}_..._{match['suffix']}.png is the wrong naming pattern "
                     f"for a {entry.dataset} scene; expected {expected}")
        if int(match["lighting"]) != EVAL_LIGHTING:
            self.add("wrong_lighting", name, f"lighting {match['lighting']}; submissions use lighting "
                     f"{EVAL_LIGHTING} ({expected})")
        self.covered.add(expected)
        return True

    def check_folder(self, name: str, names: Iterable[str]) -> None:
        """Explicit folder entries: scene folders are fine; a top-level non-scene folder is reported once."""
        parts = PurePosixPath(name).parts
        if len(parts) != 1 or parts[0].lower() in self.lower_scenes:
            return  # deeper folders and case-mismatched scene folders are reported through their files
        if any(n.startswith(name) and len(PurePosixPath(n).parts) > 2 for n in names):
            self.add("nested", name, "enclosing folder; put the scene folders at the archive root")
        elif parts[0] in self.excluded:
            self.add("extra", name, f"scene of a dataset outside {sorted(self.datasets)}")
        else:
            self.add("extra", name, "folder that is not a scene of the split")

    def run(self, archive: zipfile.ZipFile) -> None:
        members = archive.infolist()
        counts: dict[str, int] = {}
        for m in members:
            counts[m.filename] = counts.get(m.filename, 0) + 1
        for name, n in sorted(counts.items()):
            if n > 1:
                self.add("duplicate", name, f"appears {n} times in the archive")
        macos = [m.filename for m in members if _is_macos_metadata(m.filename)]
        if macos:
            self.add("macos_metadata", None, f"{len(macos)} macOS metadata entries (__MACOSX/, .DS_Store, ._*), "
                     f"e.g. {macos[0]!r}; zip without them (e.g. `zip -r -X`)")
        for member in members:
            name = member.filename
            if _is_macos_metadata(name):
                continue
            if member.is_dir():
                self.check_folder(name, counts)
                continue
            if self.check_name(name):
                self.check_content(archive, member)
        for name in sorted(self.expected - self.covered):
            self.add("missing", name, "expected file is not in the archive")


def check_submission(
    zip_path: PathLike,
    split_path: PathLike,
    width: int = BENCHMARK_SIZE[0],
    height: int = BENCHMARK_SIZE[1],
    datasets: Iterable[str] | None = None,
    max_bytes: int = MAX_MEMBER_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> list[Problem]:
    """Every problem of a submission zip (empty list = valid).

    ``max_bytes`` caps the uncompressed size of a member that is read, ``max_pixels`` the declared size of a PNG
    that is decoded (larger ones are reported as "too_large" and not decoded).

    ``datasets`` restricts the expected scenes to those datasets (the benchmark scores Synthetic and DTU
    separately and accepts a submission for either); files of other scenes of the split are then extra.
    Split-file errors raise :class:`~sparse3d.utils.errors.UserError` (the split is input, not the submission).
    """
    entries = read_split(split_path)
    keep = set(DATASETS) if datasets is None else set(datasets)
    unknown = keep - set(DATASETS)
    if unknown:
        raise ValueError(f"datasets must be among {list(DATASETS)}, got {sorted(unknown)}")
    checker = _Checker(entries, int(width), int(height), keep, int(max_bytes), int(max_pixels))
    path = Path(zip_path)
    if not path.is_file():
        return [Problem("corrupt_zip", None, f"{path}: file not found")]
    try:
        with zipfile.ZipFile(path) as archive:
            checker.run(archive)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        return [*checker.problems, Problem("corrupt_zip", None, f"{path}: not a readable zip archive ({exc})")]
    return checker.problems
