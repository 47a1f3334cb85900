"""Point-cloud file formats: KITTI velodyne ``.bin``, SemanticKITTI ``.label`` and PLY vertex clouds.

These are thin, dependency-free numpy readers/writers so that the synthetic generators and the real datasets
go through exactly the same code path, and so that files we write open in other tools (Open3D, CloudCompare,
the SemanticKITTI API). Every error names the offending file, because the usual failure is a truncated
download or a label file that belongs to another scan.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparse3d.utils.errors import UserError

__all__ = [
    "PointCloudFileError",
    "MissingPointCloudFile",
    "read_kitti_bin",
    "write_kitti_bin",
    "read_semantic_kitti_label",
    "write_semantic_kitti_label",
    "read_ply_points",
    "write_ply_points",
]

PathLike = str | os.PathLike


class PointCloudFileError(UserError, ValueError):
    """A point-cloud file that cannot be read as what it claims to be; the message names the file (and line).

    A :class:`UserError` for the console scripts and a ``ValueError`` for callers that catch that."""


class MissingPointCloudFile(UserError, FileNotFoundError):
    """The file to read is not there (or is a folder); a :class:`UserError` and a ``FileNotFoundError``."""


def _existing_file(path: PathLike, what: str) -> Path:
    """Resolve ``path`` and fail with a message naming the file and what was expected there."""
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise MissingPointCloudFile(f"{what} path {p} exists but is not a regular file")
        raise MissingPointCloudFile(f"{what} file not found: {p}")
    return p


# --------------------------------------------------------------------------------------------------------------
# KITTI / SemanticKITTI velodyne scans
# --------------------------------------------------------------------------------------------------------------


def read_kitti_bin(path: PathLike, num_features: int = 4) -> np.ndarray:
    """Read a KITTI velodyne scan: raw little-endian float32 rows of (x, y, z, reflectance).

    Returns a float32 array of shape (N, num_features). Rows containing NaN are returned unchanged (some
    tools write them for missing returns); filtering is the caller's decision.
    """
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    p = _existing_file(path, "KITTI velodyne scan")
    row_bytes = 4 * num_features
    size = p.stat().st_size
    if size % row_bytes != 0:
        raise PointCloudFileError(
            f"{p}: file size {size} bytes is not a multiple of {row_bytes} bytes "
            f"({num_features} float32 values per point); the file is truncated or has a different layout"
        )
    data = np.fromfile(p, dtype="<f4")
    return data.reshape(-1, num_features).astype(np.float32, copy=False)


def write_kitti_bin(path: PathLike, points: np.ndarray) -> Path:
    """Write points (N, C) as little-endian float32 rows (the KITTI velodyne layout); creates parent dirs."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"points for {path} must have shape (N, C>=3), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"points for {path} must be numeric, got dtype {arr.dtype}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(arr, dtype="<f4").tofile(p)
    return p


# --------------------------------------------------------------------------------------------------------------
# SemanticKITTI labels
# --------------------------------------------------------------------------------------------------------------


def read_semantic_kitti_label(path: PathLike, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a SemanticKITTI ``.label`` file: one uint32 per point, semantic id in the low 16 bits and
    instance id in the high 16 bits.

    Returns ``(semantic, instance)`` as int64 arrays (int64 so they can index lookup tables and become torch
    label tensors without another cast). If ``num_points`` is given the label count must match it.
    """
    p = _existing_file(path, "SemanticKITTI label")
    size = p.stat().st_size
    if size % 4 != 0:
        raise PointCloudFileError(
            f"{p}: file size {size} bytes is not a multiple of 4 bytes (one uint32 per point); "
            "the file is truncated or not a SemanticKITTI label file"
        )
    raw = np.fromfile(p, dtype="<u4")
    if num_points is not None and raw.shape[0] != num_points:
        raise PointCloudFileError(
            f"{p}: holds {raw.shape[0]} labels but the scan has {num_points} points; "
            "the label file does not belong to this scan"
        )
    semantic = (raw & 0xFFFF).astype(np.int64)
    instance = (raw >> 16).astype(np.int64)
    return semantic, instance


def write_semantic_kitti_label(
    path: PathLike, semantic: np.ndarray, instance: np.ndarray | None = None
) -> Path:
    """Write semantic (and optional instance) ids, each in [0, 65535], packed as SemanticKITTI uint32."""
    sem = np.asarray(semantic)
    if sem.ndim != 1:
        raise ValueError(f"semantic labels for {path} must be 1-D, got shape {sem.shape}")
    inst = np.zeros_like(sem) if instance is None else np.asarray(instance)
    if inst.shape != sem.shape:
        raise ValueError(
            f"instance ids for {path} have shape {inst.shape}, semantic labels have shape {sem.shape}"
        )
    for name, a in (("semantic", sem), ("instance", inst)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} ids for {path} must be integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() > 0xFFFF):
            raise ValueError(f"{name} ids for {path} must lie in [0, 65535], got [{a.min()}, {a.max()}]")
    packed = (sem.astype(np.uint32) & 0xFFFF) | (inst.astype(np.uint32) << 16)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    packed.astype("<u4").tofile(p)
    return p


# --------------------------------------------------------------------------------------------------------------
# PLY point clouds
# --------------------------------------------------------------------------------------------------------------

# PLY scalar type names (both spellings of the spec) -> numpy type character.
_PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}  # fmt: skip

# Multi-column fields with the property names other tools (Open3D, MeshLab) recognise.
_GROUPS: dict[str, tuple[str, str, str]] = {
    "xyz": ("x", "y", "z"),
    "normals": ("nx", "ny", "nz"),
    "colors": ("red", "green", "blue"),
}


def _ply_property_type(name: str, arr: np.ndarray, path: PathLike) -> tuple[str, np.dtype]:
    """Pick the PLY type for a field: floats as float32, uint8/bool as uchar, int32/uint32 kept."""
    if np.issubdtype(arr.dtype, np.floating):
        return "float", np.dtype("<f4")
    if arr.dtype == np.bool_ or arr.dtype == np.uint8:
        return "uchar", np.dtype("u1")
    if arr.dtype == np.int32:
        return "int", np.dtype("<i4")
    if arr.dtype == np.uint32:
        return "uint", np.dtype("<u4")
    raise ValueError(
        f"field {name!r} for {path} has dtype {arr.dtype}; PLY fields must be float, uint8, int32 or uint32"
    )


def write_ply_points(path: PathLike, xyz: np.ndarray, **fields: np.ndarray) -> Path:
    """Write a binary little-endian PLY point cloud (one ``vertex`` element, no faces).

    ``xyz`` is (N, 3) and is stored as float32. Each keyword is an extra per-point field: a (N,) array
    becomes one property of that name; ``normals`` (N, 3) becomes ``nx ny nz``; ``colors`` (N, 3) becomes
    ``red green blue`` uchar (float colours are taken to be in [0, 1] and scaled to 0..255), which is what
    Open3D and MeshLab read as colours.
    """
    p = Path(path)
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz for {p} must have shape (N, 3), got {xyz.shape}")
    n = xyz.shape[0]
    columns: list[tuple[str, str, np.dtype, np.ndarray]] = []
    for axis, name in enumerate(_GROUPS["xyz"]):
        columns.append((name, "float", np.dtype("<f4"), xyz[:, axis]))

    for key, value in fields.items():
        arr = np.asarray(value)
        if arr.shape[0:1] != (n,):
            raise ValueError(f"field {key!r} for {p} has {arr.shape[0] if arr.ndim else 0} rows, xyz has {n}")
        if key in ("normals", "colors"):
            if arr.ndim != 2 or arr.shape[1] != 3:
                raise ValueError(f"field {key!r} for {p} must have shape (N, 3), got {arr.shape}")
            if key == "colors":
                if np.issubdtype(arr.dtype, np.floating):
                    arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
                elif arr.dtype != np.uint8:
                    raise ValueError(f"colors for {p} must be uint8 or float in [0, 1], got {arr.dtype}")
                ply_type, dt = "uchar", np.dtype("u1")
            else:
                ply_type, dt = "float", np.dtype("<f4")
            for axis, name in enumerate(_GROUPS[key]):
                columns.append((name, ply_type, dt, arr[:, axis]))
            continue
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(
                f"field {key!r} for {p} must have shape (N,), got {arr.shape}; pass one keyword per column"
            )
        if not key.isidentifier():
            raise ValueError(f"field name {key!r} for {p} is not a valid PLY property name")
        ply_type, dt = _ply_property_type(key, arr, p)
        columns.append((key, ply_type, dt, arr))

    names = [c[0] for c in columns]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise ValueError(f"duplicate PLY property names for {p}: {dupes}")

    record = np.empty(n, dtype=np.dtype([(name, dt) for name, _, dt, _ in columns]))
    for name, _, dt, values in columns:
        record[name] = values.astype(dt, copy=False)

    header = ["ply", "format binary_little_endian 1.0", "comment written by sparse3d", f"element vertex {n}"]
    header += [f"property {ply_type} {name}" for name, ply_type, _, _ in columns]
    header.append("end_header")
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(record.tobytes())
    return p


def _parse_ply_header(p: Path, blob: bytes) -> tuple[str, list[tuple[str, int, list]], int]:
    """Return (format, [(element, count, [(prop, type) or (prop, 'list', count_type, item_type)])],
    byte offset of the body)."""
    if not blob.startswith(b"ply"):
        raise PointCloudFileError(f"{p}: not a PLY file (missing 'ply' magic)")
    end = blob.find(b"end_header")
    if end < 0:
        raise PointCloudFileError(f"{p}: PLY header has no 'end_header' line")
    body = blob.find(b"\n", end)
    if body < 0:
        raise PointCloudFileError(f"{p}: PLY header is not terminated by a newline")
    lines = blob[:end].decode("ascii", errors="replace").splitlines()
    fmt = ""
    elements: list[tuple[str, int, list]] = []
    for line in lines[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            if len(tok) < 2:
                raise PointCloudFileError(f"{p}: malformed PLY format line {line!r}")
            fmt = tok[1]
        elif tok[0] == "element":
            if len(tok) != 3 or not tok[2].isdigit():
                raise PointCloudFileError(f"{p}: malformed PLY element line {line!r}")
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise PointCloudFileError(f"{p}: PLY property {line!r} appears before any element")
            if len(tok) == 5 and tok[1] == "list":
                if tok[2] not in _PLY_TYPES or tok[3] not in _PLY_TYPES:
                    raise PointCloudFileError(f"{p}: unknown PLY type in {line!r}")
                elements[-1][2].append((tok[4], "list", tok[2], tok[3]))
            elif len(tok) == 3 and tok[1] in _PLY_TYPES:
                elements[-1][2].append((tok[2], tok[1]))
            else:
                raise PointCloudFileError(f"{p}: unsupported PLY property line {line!r}")
        else:
            raise PointCloudFileError(f"{p}: unexpected PLY header line {line!r}")
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise PointCloudFileError(f"{p}: unsupported PLY format {fmt!r}")
    return fmt, elements, body + 1


def _read_ascii_vertices(p: Path, blob: bytes, offset: int, elements: list[tuple[str, int, list]],
                         vidx: int) -> dict[str, np.ndarray]:
    """The vertex rows of an ascii PLY: exactly one value per declared property on each row, every value a number,
    integer properties whole and within their type's range; errors name the file and line."""
    _, n, props = elements[vidx]
    first_line = blob[:offset].count(b"\n") + 1
    lines = blob[offset:].decode("ascii", errors="replace").splitlines()
    numbered = [(first_line + i, r) for i, r in enumerate(lines) if r.strip()]
    skip = sum(e[1] for e in elements[:vidx])
    rows = numbered[skip : skip + n]
    if len(rows) != n:
        raise PointCloudFileError(f"{p}: expected {n} vertex rows, found {len(rows)}; the file is truncated")
    names = [name for name, _ in props]
    table = np.empty((n, len(props)), dtype=np.float64)
    for k, (number, row) in enumerate(rows):
        tokens = row.split()
        if len(tokens) != len(props):
            raise PointCloudFileError(f"{p}:{number}: vertex row has {len(tokens)} values but the header declares "
                                      f"{len(props)} properties ({' '.join(names)})")
        try:
            table[k] = [float(t) for t in tokens]
        except ValueError:
            raise PointCloudFileError(f"{p}:{number}: vertex row holds a value that is not a number: "
                                      f"{' '.join(tokens)!r}") from None
    columns: dict[str, np.ndarray] = {}
    for i, (name, t) in enumerate(props):
        dtype = np.dtype(_PLY_TYPES[t])
        values = table[:, i]
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            bad = np.flatnonzero(~(np.isfinite(values) & (values == np.round(values)) & (values >= info.min)
                                   & (values <= info.max)))
            if len(bad):
                number = rows[int(bad[0])][0]
                raise PointCloudFileError(f"{p}:{number}: property {name!r} is {t}, a whole number in "
                                          f"{info.min}..{info.max}; got {rows[int(bad[0])][1].split()[i]!r}")
        columns[name] = values.astype(dtype)
    return columns


def read_ply_points(path: PathLike) -> dict[str, np.ndarray]:
    """Read the ``vertex`` element of a PLY file (binary either endianness, or ascii).

    Returns a dict with ``xyz`` (N, 3), ``normals`` (N, 3) and ``colors`` (N, 3) when the matching
    properties exist, and every other vertex property under its own name; dtypes are those stored in the
    file, so our float32 files round-trip bit-exactly.
    """
    p = _existing_file(path, "PLY")
    blob = p.read_bytes()
    fmt, elements, offset = _parse_ply_header(p, blob)
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise PointCloudFileError(f"{p}: PLY file has no 'vertex' element (elements: {names})")
    vidx = names.index("vertex")
    _, n, props = elements[vidx]
    if any(len(prop) == 4 for prop in props):
        raise PointCloudFileError(f"{p}: list properties on the vertex element are not supported")
    if (
        "x" not in [q[0] for q in props]
        or "y" not in [q[0] for q in props]
        or "z" not in [q[0] for q in props]
    ):
        raise PointCloudFileError(f"{p}: vertex element lacks x, y, z properties")

    if fmt == "ascii":
        columns = _read_ascii_vertices(p, blob, offset, elements, vidx)
    else:
        endian = "<" if fmt == "binary_little_endian" else ">"
        for ename, count, eprops in elements[:vidx]:
            if any(len(prop) == 4 for prop in eprops):
                raise PointCloudFileError(f"{p}: cannot skip element {ename!r} with list properties before 'vertex'")
            offset += count * sum(np.dtype(_PLY_TYPES[t]).itemsize for _, t in eprops)
        dtype = np.dtype([(name, endian + _PLY_TYPES[t]) for name, t in props])
        need = offset + n * dtype.itemsize
        if len(blob) < need:
            raise PointCloudFileError(
                f"{p}: PLY body is {len(blob) - offset} bytes but {n} vertices need {n * dtype.itemsize}; "
                "the file is truncated"
            )
        record = np.frombuffer(blob, dtype=dtype, count=n, offset=offset)
        columns = {
            name: record[name].astype(record[name].dtype.newbyteorder("="), copy=True) for name in dtype.names
        }

    out: dict[str, np.ndarray] = {}
    grouped: set[str] = set()
    for key, group in _GROUPS.items():
        if all(g in columns for g in group):
            out[key] = np.stack([columns[g] for g in group], axis=1)
            grouped.update(group)
    for name, values in columns.items():
        if name not in grouped:
            out[name] = values
    return out


# --------------------------------------------------------------------------------------------------------------
# Any supported point-cloud file -> (N, 3+C) array
# --------------------------------------------------------------------------------------------------------------


def read_point_cloud(path: PathLike) -> np.ndarray:
    """Read the points of a ``.bin``, ``.npy``, ``.ply`` or ``.pcd`` file as float32 (N, 3+C): x, y, z, then
    the per-point features the file has.

    * ``.bin``: KITTI velodyne rows (x, y, z, reflectance) -> (N, 4).
    * ``.npy``: a numeric (N, 3+) array, every column kept.
    * ``.ply``, ``.pcd``: x, y, z and, when present, the intensity (``intensity``, ``reflectance``,
      ``remission`` or ``i``) -> (N, 4), else (N, 3). PCD files may be ``ascii`` or ``binary``
      (``binary_compressed`` is refused with a message saying how to convert it).

    The format is chosen by content (PLY, NumPy and PCD magic), then by suffix; a ``.bin`` is anything else.
    Non-finite values are returned unchanged. Errors are :class:`PointCloudFileError` naming the file.
    """
    intensity_names = ("intensity", "reflectance", "remission", "i")
    p = _existing_file(path, "point cloud")
    with open(p, "rb") as handle:
        head = handle.read(16)
    suffix = p.suffix.lower()

    def with_intensity(xyz: np.ndarray, columns: dict[str, np.ndarray]) -> np.ndarray:
        name = next((n for n in intensity_names if n in columns and np.ndim(columns[n]) == 1), None)
        parts = [np.asarray(xyz, dtype=np.float32).reshape(-1, 3)]
        if name is not None:
            parts.append(np.asarray(columns[name], dtype=np.float32).reshape(-1, 1))
        return np.ascontiguousarray(np.concatenate(parts, axis=1))

    def read_pcd() -> np.ndarray:
        blob = p.read_bytes()
        header: dict[str, list[str]] = {}
        offset, number = 0, 0
        while "DATA" not in header:
            end = blob.find(b"\n", offset)
            if end < 0:
                raise PointCloudFileError(f"{p}: PCD header has no DATA line")
            number += 1
            line = blob[offset:end].decode("ascii", errors="replace").strip()
            offset = end + 1
            if not line or line.startswith("#"):
                continue
            key, *values = line.split()
            header[key.upper()] = values
        for key in ("FIELDS", "SIZE", "TYPE", "POINTS"):
            if key not in header:
                raise PointCloudFileError(f"{p}: PCD header has no {key} line")
        fields, sizes, types = header["FIELDS"], header["SIZE"], header["TYPE"]
        counts = header.get("COUNT", ["1"] * len(fields))
        data = header["DATA"][0].lower() if header["DATA"] else ""
        if not (len(fields) == len(sizes) == len(types) == len(counts)):
            raise PointCloudFileError(f"{p}: PCD FIELDS, SIZE, TYPE and COUNT lines list different numbers of "
                                      "entries")
        if not all(s.isdigit() for s in [*sizes, *counts, header["POINTS"][0]] if s):
            raise PointCloudFileError(f"{p}: PCD SIZE, COUNT and POINTS must be whole numbers")
        if not {"x", "y", "z"} <= set(fields):
            raise PointCloudFileError(f"{p}: PCD fields {fields} do not include x, y and z")
        n = int(header["POINTS"][0])
        layout = []
        for name, size, kind, count in zip(fields, sizes, types, counts, strict=True):
            code = {"F": "f", "I": "i", "U": "u"}.get(kind.upper())
            if code is None or (code == "f" and size not in ("4", "8")) or size not in ("1", "2", "4", "8"):
                raise PointCloudFileError(f"{p}: unsupported PCD field {name!r} (TYPE {kind}, SIZE {size})")
            layout.append((name, np.dtype(f"<{code}{size}"), int(count)))
        if data == "ascii":
            width = sum(count for _, _, count in layout)
            rows = [r for r in blob[offset:].decode("ascii", errors="replace").splitlines() if r.strip()]
            if len(rows) < n:
                raise PointCloudFileError(f"{p}: POINTS says {n} but the file has {len(rows)} data rows; "
                                          "the file is truncated")
            table = np.zeros((n, width))
            for k, row in enumerate(rows[:n]):
                tokens = row.split()
                if len(tokens) != width:
                    raise PointCloudFileError(f"{p}: PCD data row {k + 1} holds {len(tokens)} values, the header "
                                              f"declares {width}")
                try:
                    table[k] = [float(t) for t in tokens]
                except ValueError:
                    raise PointCloudFileError(f"{p}: PCD data row {k + 1} holds a value that is not a number: "
                                              f"{row.strip()[:80]!r}") from None
            starts = np.cumsum([0] + [count for _, _, count in layout])
            columns = {name: table[:, starts[i]] for i, (name, _, _) in enumerate(layout)}
        elif data == "binary":
            dtype = np.dtype([(name, dt, (count,)) if count > 1 else (name, dt) for name, dt, count in layout])
            if len(blob) - offset < n * dtype.itemsize:
                raise PointCloudFileError(f"{p}: PCD body is {len(blob) - offset} bytes but {n} points need "
                                          f"{n * dtype.itemsize}; the file is truncated")
            record = np.frombuffer(blob, dtype=dtype, count=n, offset=offset)
            columns = {name: record[name] for name, _, count in layout if count == 1}
        elif data == "binary_compressed":
            raise PointCloudFileError(f"{p}: binary_compressed PCD is not supported; convert it to binary or "
                                      "ascii (e.g. pcl_convert_pcd_ascii_binary in.pcd out.pcd 1)")
        else:
            raise PointCloudFileError(f"{p}: unknown PCD DATA type {data!r} (expected ascii or binary)")
        xyz = np.stack([columns["x"], columns["y"], columns["z"]], axis=1)
        return with_intensity(xyz, columns)

    if head.startswith(b"ply"):
        columns = read_ply_points(p)
        return with_intensity(columns["xyz"], columns)
    if head.startswith(b"\x93NUMPY") or suffix == ".npy":
        try:
            array = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise PointCloudFileError(f"{p}: not a readable NumPy .npy array ({' '.join(str(exc).split())})") from None
        if array.ndim != 2 or array.shape[1] < 3 or not (np.issubdtype(array.dtype, np.floating)
                                                         or np.issubdtype(array.dtype, np.integer)):
            raise PointCloudFileError(f"{p}: a point array must be numeric with shape (N, 3+), got "
                                      f"{array.dtype} {array.shape}")
        return np.ascontiguousarray(array, dtype=np.float32)
    if head.startswith((b"# .PCD", b"VERSION", b"FIELDS")) or suffix == ".pcd":
        return read_pcd()
    if suffix == ".ply":
        raise PointCloudFileError(f"{p}: not a PLY file (missing 'ply' magic)")
    return read_kitti_bin(p)
