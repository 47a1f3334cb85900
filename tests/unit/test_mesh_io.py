"""Mesh IO (:mod:`sparse3d.io.mesh`): round trips, scene flattening, mesh properties and one-line file errors.

Oracles: write-then-read round trips (exact for every format we write), hand-written files in each read-only
format (OFF, ASCII STL, OBJ with texture coordinates) whose content is known, and the analytic area / volume /
edge counts of cubes and spheres.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse3d.datasets.synth.shapes import box_mesh, superquadric_mesh
from sparse3d.io.mesh import MeshFileError, MissingMeshFile, TriangleMesh, read_mesh, write_mesh
from sparse3d.utils.errors import UserError

trimesh = pytest.importorskip("trimesh")


def _random_mesh(seed: int = 0, v: int = 60, f: int = 100) -> TriangleMesh:
    """Random float32 vertices over many magnitudes (tiny, huge, negative, zero) and random faces."""
    rng = np.random.default_rng(seed)
    vertices = rng.normal(size=(v, 3)) * 10.0 ** rng.integers(-9, 7, size=(v, 3))
    vertices[0] = 0.0
    vertices[1] = [1e-30, -3.4e38, 1.0]
    faces = np.stack([rng.choice(v, 3, replace=False) for _ in range(f)])
    return TriangleMesh(vertices.astype(np.float32), faces)


CUBE_OFF = """OFF
8 6 0
0 0 0
1 0 0
1 1 0
0 1 0
0 0 1
1 0 1
1 1 1
0 1 1
4 0 3 2 1
4 4 5 6 7
4 0 1 5 4
4 1 2 6 5
4 2 3 7 6
4 3 0 4 7
"""


def _ascii_stl(mesh: TriangleMesh) -> str:
    rows = ["solid cube"]
    for face in mesh.faces:
        rows += ["  facet normal 0 0 0", "    outer loop"]
        rows += [f"      vertex {x:.9g} {y:.9g} {z:.9g}" for x, y, z in mesh.vertices[face]]
        rows += ["    endloop", "  endfacet"]
    return "\n".join([*rows, "endsolid cube", ""])


# -------------------------------------------------------------------------------------------------- the type
def test_cube_and_sphere_properties() -> None:
    cube = TriangleMesh(*box_mesh((0, 0, 0), (2, 2, 2)))
    assert cube.vertices.dtype == np.float32 and cube.faces.dtype == np.int64
    assert cube.is_watertight() and cube.is_winding_consistent() and len(cube.boundary_edges()) == 0
    assert cube.area() == pytest.approx(24.0) and cube.signed_volume() == pytest.approx(8.0)
    assert cube.flipped().signed_volume() == pytest.approx(-8.0) and cube.flipped().is_winding_consistent()
    assert cube.edges.shape == (36, 2)
    assert cube.diagonal() == pytest.approx(2 * math.sqrt(3))
    normals, double_area = cube.face_normals()
    centroids = cube.vertices[cube.faces].mean(1)
    assert np.allclose(np.abs(normals).max(1), 1) and np.allclose(np.abs(normals).sum(1), 1)  # axis-aligned units
    assert (np.einsum("ij,ij->i", normals, centroids - 1.0) > 0).all()  # pointing away from the centre (1, 1, 1)
    assert np.allclose(double_area, 4.0)

    sphere = TriangleMesh(*superquadric_mesh(1, 1, 1, 1, 1, rings=48, segments=96))
    assert sphere.is_watertight() and sphere.is_winding_consistent()
    assert sphere.area() == pytest.approx(4 * math.pi, rel=2e-3)
    assert sphere.signed_volume() == pytest.approx(4 / 3 * math.pi, rel=3e-3)
    # V - E + F = 2 for a sphere
    edges = len(np.unique(np.sort(sphere.edges, axis=1), axis=0))
    assert sphere.num_vertices - edges + sphere.num_faces == 2

    opened = TriangleMesh(sphere.vertices, sphere.faces[1:])  # one triangle removed: a hole with 3 edges
    assert not opened.is_watertight() and len(opened.boundary_edges()) == 3
    assert set(opened.boundary_edges().ravel()) == set(sphere.faces[0])
    bad_winding = TriangleMesh(cube.vertices, np.concatenate([cube.faces[:1, ::-1], cube.faces[1:]]))
    assert bad_winding.is_watertight() and not bad_winding.is_winding_consistent()


@pytest.mark.parametrize(("vertices", "faces", "needle"), [
    (np.zeros((4, 2)), np.zeros((1, 3), np.int64), "vertices"),
    (np.zeros((4, 3)), np.zeros((1, 4), np.int64), "faces"),
    (np.zeros((4, 3)), np.array([[0, 1, 4]]), "faces index"),
    (np.zeros((4, 3)), np.array([[0, 1, -1]]), "faces index"),
    (np.zeros((4, 3)), np.zeros((1, 3), np.float32) + 0.5, "integer"),
])
def test_triangle_mesh_validates(vertices: np.ndarray, faces: np.ndarray, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        TriangleMesh(vertices, faces)


# -------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ext", [".ply", ".obj", ".glb"])
def test_round_trip_is_exact(ext: str, tmp_path: Path) -> None:
    mesh = _random_mesh()
    path = write_mesh(tmp_path / "sub" / "dir" / f"mesh{ext}", mesh)  # parent folders are created
    back = read_mesh(path)
    assert back.vertices.dtype == np.float32 and back.faces.dtype == np.int64
    assert np.array_equal(back.vertices, mesh.vertices)
    assert np.array_equal(back.faces, mesh.faces)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    # duplicate positions and an unused vertex survive: nothing is merged or dropped
    soup = TriangleMesh(np.float32([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]]),
                        np.int64([[0, 1, 2], [3, 5, 4]]))
    soup_back = read_mesh(write_mesh(tmp_path / f"soup{ext}", soup))
    assert np.array_equal(soup_back.vertices, soup.vertices) and np.array_equal(soup_back.faces, soup.faces)
    cube = TriangleMesh(*box_mesh((0, 0, 0), (1, 1, 1)))
    again = read_mesh(write_mesh(tmp_path / f"cube{ext}", cube))
    assert again.is_watertight() and again.signed_volume() == pytest.approx(1.0)


def test_read_only_formats_and_merging(tmp_path: Path) -> None:
    off = tmp_path / "cube.off"
    off.write_text(CUBE_OFF)
    cube = read_mesh(off)  # quads are triangulated, vertices kept as in the file
    assert cube.num_vertices == 8 and cube.num_faces == 12
    assert cube.is_watertight() and cube.area() == pytest.approx(6.0) and abs(cube.signed_volume()) == pytest.approx(1)

    box = TriangleMesh(*box_mesh((0, 0, 0), (1, 2, 3)))
    stl = tmp_path / "box.stl"
    stl.write_text(_ascii_stl(box))
    soup = read_mesh(stl)  # STL stores three vertices per triangle; nothing is merged by default
    assert soup.num_vertices == 36 and not soup.is_watertight()
    assert np.array_equal(soup.vertices, box.vertices[box.faces].reshape(-1, 3))
    merged = read_mesh(stl, merge_vertices=True)
    assert merged.num_vertices == 8 and merged.is_watertight()
    assert merged.signed_volume() == pytest.approx(6.0) and merged.area() == pytest.approx(box.area())

    obj = tmp_path / "uv.obj"  # vertex 2 carries two texture coordinates: trimesh would split it unless told not to
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nvt 1 1\nvt 0.5 0.5\n"
                   "f 1/1 2/2 3/3\nf 2/5 4/4 3/3\n")
    uv = read_mesh(obj)
    assert uv.vertices.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert uv.faces.tolist() == [[0, 1, 2], [1, 3, 2]]


def test_scene_instances_are_transformed_and_mirrors_rewound(tmp_path: Path) -> None:
    box = trimesh.creation.box()  # unit cube centred at the origin, outward faces
    scene = trimesh.Scene()
    shift = np.eye(4)
    shift[:3, 3] = [5.0, 0.0, 0.0]
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[:3, 3] = [0.0, 3.0, 0.0]
    scene.add_geometry(box, node_name="a", geom_name="box", transform=shift)
    scene.add_geometry(box, node_name="b", geom_name="box", transform=mirror)
    path = tmp_path / "scene.glb"
    path.write_bytes(scene.export(file_type="glb"))
    mesh = read_mesh(path)
    assert mesh.num_vertices == 16 and mesh.num_faces == 24
    centres = sorted(tuple(np.round(mesh.vertices[i * 8:(i + 1) * 8].mean(0), 6)) for i in range(2))
    assert centres == [(0.0, 3.0, 0.0), (5.0, 0.0, 0.0)]
    assert mesh.signed_volume() == pytest.approx(2.0)  # both instances outward, the mirrored one re-wound
    assert mesh.is_winding_consistent()


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    target = tmp_path / "mesh.ply"
    target.write_bytes(b"previous")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_mesh(target, _random_mesh())
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["mesh.ply"]  # the temporary file is gone
    monkeypatch.undo()
    with pytest.raises(MeshFileError, match=r"mesh\.stl"):
        write_mesh(tmp_path / "mesh.stl", _random_mesh())
    (tmp_path / "folder.ply").mkdir()
    with pytest.raises(MeshFileError, match="folder.ply"):
        write_mesh(tmp_path / "folder.ply", _random_mesh())


def test_missing_trimesh_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_mesh(tmp_path / "a.ply", _random_mesh())
    monkeypatch.setitem(sys.modules, "trimesh", None)  # import trimesh -> ImportError
    with pytest.raises(UserError, match=r"pip install 'trimesh"):
        read_mesh(path)
    with pytest.raises(UserError, match=r"pip install 'trimesh"):
        write_mesh(tmp_path / "b.ply", _random_mesh())
    assert not (tmp_path / "b.ply").exists()


# ------------------------------------------------------------------------------------------------- errors
_HEADER = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
_FACES = "element face 1\nproperty list uchar int vertex_indices\n"
_TRI = "v 0 0 0\nv 1 0 0\nv 0 1 0\n"


def _binary_ply(tmp_path: Path) -> bytes:
    return write_mesh(tmp_path / "valid.ply", TriangleMesh(*box_mesh((0, 0, 0), (1, 1, 1)))).read_bytes()


BROKEN: dict[str, tuple[str, object]] = {
    "missing": ("gone.ply", None),
    "folder": ("folder.obj", "DIR"),
    "unknown-extension": ("mesh.xyz", _TRI + "f 1 2 3\n"),
    "no-extension": ("mesh", _TRI + "f 1 2 3\n"),
    "empty": ("empty.obj", ""),
    "truncated-binary-ply": ("trunc.ply", lambda tmp: _binary_ply(tmp)[:-20]),
    "truncated-ascii-ply": ("trunc_ascii.ply", _HEADER + _FACES + "end_header\n0 0 0\n1 0 0\n"),
    "ply-header-only": ("header.ply", lambda tmp: _binary_ply(tmp)[:150]),
    "garbage-obj": ("garbage.obj", bytes(range(256)) * 3),
    "garbage-ply": ("garbage.ply", b"\xff\xfe" + bytes(range(200))),
    "garbage-glb": ("garbage.glb", b"\xff\xfe" + bytes(range(200))),
    "truncated-glb": ("trunc.glb", lambda tmp: write_mesh(tmp / "v.glb", _random_mesh()).read_bytes()[:300]),
    "garbage-off": ("garbage.off", "OFF\nthis is not a mesh\n"),
    "garbage-stl": ("garbage.stl", b"\x00" * 90),
    "obj-index-out-of-range": ("oob.obj", _TRI + "f 1 2 3\nf 1 2 9\n"),
    "ply-index-out-of-range": ("oob.ply", _HEADER + _FACES + "end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 5\n"),
    "nan-vertex": ("nan.obj", "v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"),
    "inf-vertex": ("inf.ply", _HEADER + _FACES + "end_header\n0 0 inf\n1 0 0\n0 1 0\n3 0 1 2\n"),
    "float32-overflow": ("huge.obj", "v 0 0 1e39\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"),
    "point-cloud-ply": ("points.ply", _HEADER + "end_header\n0 0 0\n1 0 0\n0 1 0\n"),
    "point-cloud-obj": ("points.obj", _TRI),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_raise_one_line_naming_the_file(case: str, tmp_path: Path) -> None:
    name, content = BROKEN[case]
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif callable(content):
        path.write_bytes(content(tmp_path))
    elif isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises((MeshFileError, MissingMeshFile)) as info:
        read_mesh(path)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert name in message and "\n" not in message, message
    expected = {"missing": "not found", "folder": "not a regular file", "unknown-extension": "extension",
                "empty": "empty", "truncated-ascii-ply": "truncated", "obj-index-out-of-range": "vertex",
                "ply-index-out-of-range": "out of range", "nan-vertex": "non-finite", "inf-vertex": "non-finite",
                "point-cloud-ply": "point cloud", "point-cloud-obj": "point cloud", "garbage-obj": "binary",
                "float32-overflow": "float32"}
    if case in expected:
        assert expected[case] in message, message
