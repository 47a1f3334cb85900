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

__all__ = [
    "read_kitti_bin",
    "write_kitti_bin",
    "read_semantic_kitti_label",
    "write_semantic_kitti_label",
    "read_ply_points",
    "write_ply_points",
]

PathLike = str | os.PathLike


def _existing_file(path: PathLike, what: str) -> Path:
    """Resolve ``path`` and fail with a message naming the file and what was expected there."""
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise FileNotFoundError(f"{what} path {p} exists but is not a regular file")
        raise FileNotFoundError(f"{what} file not found: {p}")
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
        raise ValueError(
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
        raise ValueError(
            f"{p}: file size {size} bytes is not a multiple of 4 bytes (one uint32 per point); "
            "the file is truncated or not a SemanticKITTI label file"
        )
    raw = np.fromfile(p, dtype="<u4")
    if num_points is not None and raw.shape[0] != num_points:
        raise ValueError(
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
        raise ValueError(f"{p}: not a PLY file (missing 'ply' magic)")
    end = blob.find(b"end_header")
    if end < 0:
        raise ValueError(f"{p}: PLY header has no 'end_header' line")
    body = blob.find(b"\n", end)
    if body < 0:
        raise ValueError(f"{p}: PLY header is not terminated by a newline")
    lines = blob[:end].decode("ascii", errors="replace").splitlines()
    fmt = ""
    elements: list[tuple[str, int, list]] = []
    for line in lines[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            if len(tok) < 2:
                raise ValueError(f"{p}: malformed PLY format line {line!r}")
            fmt = tok[1]
        elif tok[0] == "element":
            if len(tok) != 3 or not tok[2].isdigit():
                raise ValueError(f"{p}: malformed PLY element line {line!r}")
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError(f"{p}: PLY property {line!r} appears before any element")
            if len(tok) == 5 and tok[1] == "list":
                if tok[2] not in _PLY_TYPES or tok[3] not in _PLY_TYPES:
                    raise ValueError(f"{p}: unknown PLY type in {line!r}")
                elements[-1][2].append((tok[4], "list", tok[2], tok[3]))
            elif len(tok) == 3 and tok[1] in _PLY_TYPES:
                elements[-1][2].append((tok[2], tok[1]))
            else:
                raise ValueError(f"{p}: unsupported PLY property line {line!r}")
        else:
            raise ValueError(f"{p}: unexpected PLY header line {line!r}")
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise ValueError(f"{p}: unsupported PLY format {fmt!r}")
    return fmt, elements, body + 1


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
        raise ValueError(f"{p}: PLY file has no 'vertex' element (elements: {names})")
    vidx = names.index("vertex")
    _, n, props = elements[vidx]
    if any(len(prop) == 4 for prop in props):
        raise ValueError(f"{p}: list properties on the vertex element are not supported")
    if (
        "x" not in [q[0] for q in props]
        or "y" not in [q[0] for q in props]
        or "z" not in [q[0] for q in props]
    ):
        raise ValueError(f"{p}: vertex element lacks x, y, z properties")

    if fmt == "ascii":
        text = blob[offset:].decode("ascii", errors="replace").splitlines()
        skip = sum(e[1] for e in elements[:vidx])
        rows = [r for r in text if r.strip()][skip : skip + n]
        if len(rows) != n:
            raise ValueError(f"{p}: expected {n} vertex rows, found {len(rows)}; the file is truncated")
        table = np.array([r.split()[: len(props)] for r in rows], dtype=np.float64).reshape(n, len(props))
        columns = {name: table[:, i].astype(_PLY_TYPES[t]) for i, (name, t) in enumerate(props)}
    else:
        endian = "<" if fmt == "binary_little_endian" else ">"
        for ename, count, eprops in elements[:vidx]:
            if any(len(prop) == 4 for prop in eprops):
                raise ValueError(f"{p}: cannot skip element {ename!r} with list properties before 'vertex'")
            offset += count * sum(np.dtype(_PLY_TYPES[t]).itemsize for _, t in eprops)
        dtype = np.dtype([(name, endian + _PLY_TYPES[t]) for name, t in props])
        need = offset + n * dtype.itemsize
        if len(blob) < need:
            raise ValueError(
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
