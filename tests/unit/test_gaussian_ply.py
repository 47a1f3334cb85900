"""3DGS PLY import/export against an independent byte-level oracle (numpy structured arrays).

The oracle spells the graphdeco layout out by hand -- header text, property order, float32 little-endian
records, logit/log/w-first/channel-major conventions -- so a bug shared by our writer and reader (e.g.
R,G,B-interleaved f_rest) cannot round-trip unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.io.gaussian_ply import GaussianCloud, load_gaussian_ply, ply_property_names, save_gaussian_ply
from sparse3d.utils.errors import UserError

GRAPHDECO_ORDER = (
    "x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 "
    + " ".join(f"f_rest_{i}" for i in range(45))
    + " opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3"
).split()


def _cloud(n: int, degree: int, seed: int = 0) -> GaussianCloud:
    g = torch.Generator().manual_seed(seed)
    quats = torch.randn(n, 4, generator=g)
    return GaussianCloud(
        means=torch.randn(n, 3, generator=g),
        quats=quats / quats.norm(dim=1, keepdim=True),
        scales=torch.rand(n, 3, generator=g) * 0.5 + 0.01,
        opacities=torch.rand(n, generator=g) * 0.98 + 0.01,
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g),
    )


def _read_raw(path: Path) -> tuple[list[str], np.ndarray]:
    """Oracle reader: parse the header lines ourselves, then one float32 LE record per vertex."""
    blob = path.read_bytes()
    end = blob.index(b"end_header\n") + len(b"end_header\n")
    lines = blob[:end].decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    props = [ln.split() for ln in lines if ln.startswith("property")]
    assert all(p[1] == "float" for p in props), "every 3DGS property must be float32"
    names = [p[2] for p in props]
    count = int(next(ln.split()[2] for ln in lines if ln.startswith("element vertex")))
    data = np.frombuffer(blob, dtype=np.dtype([(nm, "<f4") for nm in names]), count=count, offset=end)
    assert len(blob) == end + count * 4 * len(names), "body size must be exactly N records"
    return names, data


def _write_raw(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Oracle writer: header + structured float32 records, built without sparse3d."""
    n = len(next(iter(columns.values())))
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n"
    header += "".join(f"property float {nm}\n" for nm in columns) + "end_header\n"
    rec = np.empty(n, dtype=np.dtype([(nm, "<f4") for nm in columns]))
    for nm, v in columns.items():
        rec[nm] = v
    path.write_bytes(header.encode("ascii") + rec.tobytes())


def test_header_lists_properties_in_graphdeco_order(tmp_path: Path) -> None:
    for degree in (0, 1, 3):
        path = save_gaussian_ply(tmp_path / f"d{degree}.ply", _cloud(5, degree))
        names, data = _read_raw(path)
        assert names == GRAPHDECO_ORDER  # always all 45 f_rest, whatever the degree
        assert data.shape == (5,)
    assert ply_property_names() == GRAPHDECO_ORDER


def test_stored_values_are_raw_parameters(tmp_path: Path) -> None:
    cloud = _cloud(7, 3, seed=1)
    _, data = _read_raw(save_gaussian_ply(tmp_path / "g.ply", cloud))
    xyz = np.stack([data["x"], data["y"], data["z"]], 1)
    np.testing.assert_array_equal(xyz, cloud.means.numpy())
    assert (np.stack([data[c] for c in ("nx", "ny", "nz")]) == 0).all()
    o = cloud.opacities.double().numpy()
    np.testing.assert_allclose(data["opacity"], np.log(o / (1 - o)), rtol=1e-5, atol=1e-5)
    for i in range(3):
        np.testing.assert_allclose(data[f"scale_{i}"], np.log(cloud.scales[:, i].double().numpy()), rtol=1e-5)
    for i in range(4):  # w first, exactly what was given
        np.testing.assert_array_equal(data[f"rot_{i}"], cloud.quats[:, i].numpy())


def test_sh_layout_is_channel_major_with_distinct_coefficients(tmp_path: Path) -> None:
    # sh[n, k, c] = 1000 n + 10 k + c: every coefficient distinct and decodable from its value.
    n, k = 2, 16
    sh = torch.tensor([[[1000.0 * i + 10 * j + c for c in range(3)] for j in range(k)] for i in range(n)])
    cloud = GaussianCloud(torch.zeros(n, 3), torch.tensor([[1.0, 0, 0, 0]] * n), torch.ones(n, 3),
                          torch.full((n,), 0.5), sh)
    _, data = _read_raw(save_gaussian_ply(tmp_path / "sh.ply", cloud))
    for i in range(n):
        for c in range(3):
            assert data[f"f_dc_{c}"][i] == 1000 * i + c
            for j in range(1, k):  # f_rest_{c * 15 + (j - 1)} holds coefficient j of channel c
                assert data[f"f_rest_{c * 15 + j - 1}"][i] == 1000 * i + 10 * j + c
    back = load_gaussian_ply(tmp_path / "sh.ply")
    torch.testing.assert_close(back.sh, sh, rtol=0, atol=0)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_restores_activated_values(tmp_path: Path, degree: int) -> None:
    cloud = _cloud(50, degree, seed=degree)
    back = load_gaussian_ply(save_gaussian_ply(tmp_path / "rt.ply", cloud))
    assert len(back) == 50 and back.sh_degree == 3  # padded on disk to 45 f_rest
    torch.testing.assert_close(back.means, cloud.means, rtol=0, atol=0)
    torch.testing.assert_close(back.quats, cloud.quats, rtol=0, atol=1e-6)
    torch.testing.assert_close(back.scales, cloud.scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(back.opacities, cloud.opacities, rtol=1e-6, atol=1e-7)
    k = (degree + 1) ** 2
    torch.testing.assert_close(back.sh[:, :k], cloud.sh, rtol=0, atol=0)
    assert (back.sh[:, k:] == 0).all()


def test_load_normalises_quaternions_and_activates(tmp_path: Path) -> None:
    # A file written by an independent path (degree 1: 9 f_rest) with raw, unnormalised parameters.
    n = 3
    cols = {"x": np.array([1, 2, 3]), "y": np.array([4, 5, 6]), "z": np.array([7, 8, 9]),
            "f_dc_0": np.array([0.1, 0.2, 0.3]), "f_dc_1": np.zeros(n), "f_dc_2": np.array([-1, 0, 1])}
    rest = np.arange(n * 9, dtype=np.float64).reshape(n, 9) + 100
    cols.update({f"f_rest_{i}": rest[:, i] for i in range(9)})
    cols["opacity"] = np.array([0.0, 2.0, -3.0])
    cols.update({"scale_0": np.log([0.5, 1, 2]), "scale_1": np.zeros(n), "scale_2": np.array([-1.0, 0, 1])})
    cols.update({"rot_0": np.array([2.0, 0, 1]), "rot_1": np.array([0.0, 3, 1]),
                 "rot_2": np.array([0.0, 0, 1]), "rot_3": np.array([0.0, 4, 1])})
    cols["red"] = np.ones(n)  # unrelated extra property: ignored
    _write_raw(tmp_path / "ext.ply", cols)
    g = load_gaussian_ply(tmp_path / "ext.ply")
    assert g.sh_degree == 1 and g.sh.shape == (3, 4, 3)
    np.testing.assert_allclose(g.means.numpy(), [[1, 4, 7], [2, 5, 8], [3, 6, 9]])
    np.testing.assert_allclose(g.opacities.numpy(), [0.5, 1 / (1 + np.exp(-2)), 1 / (1 + np.exp(3))], rtol=1e-6)
    np.testing.assert_allclose(g.scales[:, 0].numpy(), [0.5, 1, 2], rtol=1e-6)
    np.testing.assert_allclose(g.scales[:, 2].numpy(), np.exp([-1.0, 0, 1]), rtol=1e-6)
    np.testing.assert_allclose(g.quats.numpy(), [[1, 0, 0, 0], [0, 0.6, 0, 0.8], [0.5, 0.5, 0.5, 0.5]], atol=1e-7)
    np.testing.assert_allclose(g.sh[:, 0, 2].numpy(), [-1, 0, 1])
    for c in range(3):  # channel-major: f_rest_{3c + j - 1} is coefficient j of channel c
        for j in range(1, 4):
            np.testing.assert_array_equal(g.sh[:, j, c].numpy(), rest[:, 3 * c + j - 1])


def test_clear_errors_name_the_file(tmp_path: Path) -> None:
    base = {nm: np.zeros(2) for nm in ply_property_names(0)}
    cols = {nm: v for nm, v in base.items() if nm != "scale_1"}
    _write_raw(tmp_path / "noscale.ply", cols)
    with pytest.raises(ValueError, match=r"noscale\.ply.*scale_1"):
        load_gaussian_ply(tmp_path / "noscale.ply")
    _write_raw(tmp_path / "rest5.ply", {**base, **{f"f_rest_{i}": np.zeros(2) for i in range(5)}})
    with pytest.raises(ValueError, match=r"rest5\.ply.*5 f_rest"):
        load_gaussian_ply(tmp_path / "rest5.ply")
    gap = {**base, **{f"f_rest_{i}": np.zeros(2) for i in range(10) if i != 4}}  # 9 names, f_rest_4 missing
    _write_raw(tmp_path / "gap.ply", gap)
    with pytest.raises(ValueError, match=r"gap\.ply.*f_rest_4"):
        load_gaussian_ply(tmp_path / "gap.ply")
    _write_raw(tmp_path / "zeroq.ply", base)  # all rot_* zero
    with pytest.raises(ValueError, match=r"zeroq\.ply.*zero-length"):
        load_gaussian_ply(tmp_path / "zeroq.ply")
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        load_gaussian_ply(tmp_path / "missing.ply")
    bad = _cloud(3, 0)
    bad.scales[0, 0] = 0.0
    with pytest.raises(ValueError, match=r"out\.ply.*scales"):
        save_gaussian_ply(tmp_path / "out.ply", bad)
    with pytest.raises(ValueError, match="GaussianCloud.sh"):
        GaussianCloud(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), torch.ones(2), torch.zeros(2, 5, 3))


def _valid_raw(n: int = 5) -> dict[str, np.ndarray]:
    cols = {nm: np.zeros(n) for nm in ply_property_names(9)}
    cols["rot_0"] = np.ones(n)  # identity rotation, unit scales (log 0), opacity 1/2 (logit 0)
    return cols


@pytest.mark.parametrize(
    ("prop", "rows", "value", "message"),
    [
        ("x", [1], np.nan, "property 'x' is NaN or infinite for 1 of 5 Gaussians"),
        ("z", [0, 4], np.inf, "property 'z' is NaN or infinite for 2 of 5 Gaussians"),
        ("opacity", [2], np.nan, "property 'opacity' is NaN or infinite for 1 of 5 Gaussians"),
        ("opacity", [0, 1, 2], -np.inf, "property 'opacity' is NaN or infinite for 3 of 5 Gaussians"),
        ("scale_1", [3], np.inf, "property 'scale_1' is NaN or infinite for 1 of 5 Gaussians"),
        ("scale_2", [0, 3], 200.0, "property 'scale_2' (a log scale) gives a scale of 0 or inf in float32 for 2 of "
                                   "5 Gaussians"),
        ("scale_0", [4], -200.0, "property 'scale_0' (a log scale) gives a scale of 0 or inf in float32 for 1 of "
                                 "5 Gaussians"),
        ("rot_2", [1], np.nan, "property 'rot_2' is NaN or infinite for 1 of 5 Gaussians"),
        ("rot_0", [1, 2], 0.0, "properties rot_0..rot_3 are all zero (a zero-length rotation quaternion) for 2 of "
                               "5 Gaussians"),
        ("f_dc_1", [0], np.nan, "property 'f_dc_1' is NaN or infinite for 1 of 5 Gaussians"),
        ("f_rest_8", [4], -np.inf, "property 'f_rest_8' is NaN or infinite for 1 of 5 Gaussians"),
    ],
)
def test_load_rejects_bad_values_naming_file_property_and_count(
    tmp_path: Path, prop: str, rows: list[int], value: float, message: str
) -> None:
    """Values that save_gaussian_ply refuses to write are refused on load too (one line, a UserError)."""
    cols = _valid_raw()
    cols[prop][rows] = value
    path = tmp_path / "bad.ply"
    _write_raw(path, cols)
    with pytest.raises(UserError) as info:
        load_gaussian_ply(path)
    assert str(info.value) == f"{path}: {message}"
    assert isinstance(info.value, ValueError)


def test_load_accepts_extreme_but_valid_values(tmp_path: Path) -> None:
    cols = _valid_raw()
    cols["opacity"][:] = [-80.0, 80.0, 0.0, 1e30, -1e30]  # logits: opacity 0 and 1 at the extremes
    cols["scale_0"][:] = [-80.0, 80.0, 0.0, 1.0, -1.0]  # exp stays a positive finite float32
    cols["rot_3"][:] = 1e-30
    path = tmp_path / "edge.ply"
    _write_raw(path, cols)
    g = load_gaussian_ply(path)
    np.testing.assert_allclose(g.scales[:, 0].numpy(), np.exp([-80.0, 80.0, 0.0, 1.0, -1.0]).astype(np.float32),
                               rtol=1e-6)
    np.testing.assert_allclose(g.opacities.numpy(), [0.0, 1.0, 0.5, 1.0, 0.0], atol=1e-7)
