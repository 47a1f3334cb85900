"""LPIPS (AlexNet v0.1) re-declaration: weight loading, the formula, and weight resolution.

PLUMBING ONLY: every weight file here is random or hand-made and saved in the torchvision / lpips key
formats. These tests check loading, the arithmetic of the formula and the error paths; they say nothing
about the perceptual quality of LPIPS, which needs the real ImageNet AlexNet and v0.1 heads (never shipped
or downloaded).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparse3d.metrics import lpips as L

# torchvision AlexNet shapes (features + classifier), written out independently of the module under test
FEATURE_SHAPES = {
    0: (64, 3, 11, 11),
    3: (192, 64, 5, 5),
    6: (384, 192, 3, 3),
    8: (256, 384, 3, 3),
    10: (256, 256, 3, 3),
}
CLASSIFIER_SHAPES = {
    "classifier.1.weight": (4096, 9216),
    "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096),
    "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}
CHANNELS = (64, 192, 384, 256, 256)


def _random_backbone(seed: int = 0, with_classifier: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for index, shape in FEATURE_SHAPES.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"features.{index}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        state[f"features.{index}.bias"] = 0.01 * torch.randn(shape[0], generator=g)
    if with_classifier:  # small stand-ins: only the key names matter (they must be ignored)
        state.update({k: torch.zeros(1) for k in CLASSIFIER_SHAPES})
    return state


def _random_heads(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand((1, c, 1, 1), generator=g) for i, c in enumerate(CHANNELS)}


def _save(path: Path, state: object) -> Path:
    torch.save(state, path)
    return path


@pytest.fixture
def weight_files(tmp_path: Path) -> tuple[Path, Path]:
    return _save(tmp_path / "alexnet.pth", _random_backbone()), _save(tmp_path / "alex.pth", _random_heads())


def _images(seed: int, n: int = 2, h: int = 40, w: int = 52) -> torch.Tensor:
    return torch.rand((n, 3, h, w), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- plumbing
def test_random_weights_plumbing(weight_files: tuple[Path, Path]) -> None:
    """PLUMBING ONLY (random weights): d(x, x) = 0, d(x, y) > 0 (non-negative heads), symmetry, batch."""
    model = L.LPIPS.from_files(*weight_files)
    x, y = _images(0), _images(1)
    assert torch.equal(model(x, x), torch.zeros(2))
    d = model(x, y)
    assert (d > 0).all()
    torch.testing.assert_close(model(y, x), d)
    single = model.distance(x[0].permute(1, 2, 0).numpy(), y[0].permute(1, 2, 0).numpy())
    assert single.shape == () and float(single) == pytest.approx(float(d[0]), rel=1e-5)


def test_literal_second_implementation_agrees(weight_files: tuple[Path, Path]) -> None:
    """PLUMBING ONLY (random weights): the module equals LPIPS written out with torch.nn.functional."""
    backbone, heads = torch.load(weight_files[0]), torch.load(weight_files[1])
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img: torch.Tensor) -> list[torch.Tensor]:
        h = ((2 * img - 1) - shift) / scale
        out = []
        h = F.relu(
            F.conv2d(h, backbone["features.0.weight"], backbone["features.0.bias"], stride=4, padding=2)
        )
        out.append(h)
        h = F.max_pool2d(h, 3, 2)
        h = F.relu(F.conv2d(h, backbone["features.3.weight"], backbone["features.3.bias"], padding=2))
        out.append(h)
        h = F.max_pool2d(h, 3, 2)
        for index in (6, 8, 10):
            h = F.relu(
                F.conv2d(
                    h, backbone[f"features.{index}.weight"], backbone[f"features.{index}.bias"], padding=1
                )
            )
            out.append(h)
        return out

    def literal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(a.shape[0])
        for i, (fa, fb) in enumerate(zip(taps(a), taps(b))):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += F.conv2d((na - nb) ** 2, heads[f"lin{i}.model.1.weight"]).mean(dim=(1, 2, 3))
        return total

    x, y = _images(2, n=3, h=67, w=45), _images(3, n=3, h=67, w=45)
    model = L.LPIPS.from_files(*weight_files)
    torch.testing.assert_close(model(x, y), literal(x, y), rtol=1e-5, atol=1e-7)


def test_hand_computed_distance_on_uniform_images(tmp_path: Path) -> None:
    """A hand-made backbone whose first tap copies the (scaled) input colour at each window centre and whose
    later taps are constant: for two uniform images only tap 1 contributes and the distance is computable by
    hand."""
    state = {f"features.{i}.weight": torch.zeros(s) for i, s in FEATURE_SHAPES.items()}
    state.update({f"features.{i}.bias": torch.ones(s[0]) for i, s in FEATURE_SHAPES.items()})
    state["features.0.bias"] = torch.zeros(64)
    for k in range(3):  # channel k <- input channel k at the centre tap (never in the zero padding)
        state["features.0.weight"][k, k, 5, 5] = 1.0
    heads = _random_heads(7)
    model = L.LPIPS.from_files(_save(tmp_path / "hand.pth", state), _save(tmp_path / "heads.pth", heads))

    colour_a, colour_b = (0.9, 0.2, 0.6), (0.3, 0.7, 0.5)
    shift, scale = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)

    def unit_features(colour: tuple[float, float, float]) -> list[float]:
        f = [max(0.0, ((2 * c - 1) - s) / z) for c, s, z in zip(colour, shift, scale)]
        norm = math.sqrt(sum(v * v for v in f))
        return [v / (norm + 1e-10) for v in f]

    na, nb = unit_features(colour_a), unit_features(colour_b)
    w = heads["lin0.model.1.weight"].flatten().tolist()
    expected = sum(w[k] * (na[k] - nb[k]) ** 2 for k in range(3))
    assert expected > 0.1  # ReLU zeroes different channels in the two colours: a real test of the arithmetic

    a = torch.tensor(colour_a).view(1, 3, 1, 1).expand(1, 3, 48, 64).contiguous()
    b = torch.tensor(colour_b).view(1, 3, 1, 1).expand(1, 3, 48, 64).contiguous()
    assert float(model(a, b)) == pytest.approx(expected, rel=1e-5)


def test_minimum_input_size(weight_files: tuple[Path, Path]) -> None:
    model = L.LPIPS.from_files(*weight_files)
    assert model(_images(4, 1, 31, 31), _images(5, 1, 31, 31)).shape == (1,)
    with pytest.raises(ValueError, match="at least 31x31"):
        model(_images(4, 1, 30, 40), _images(5, 1, 30, 40))
    with pytest.raises(ValueError, match="never resized"):
        model.distance(torch.rand(40, 40, 3), torch.rand(40, 41, 3))


# ---------------------------------------------------------------------------------------- strict loading
def test_classifier_keys_are_ignored_and_features_load_strictly(tmp_path: Path) -> None:
    state = _random_backbone(3)
    model = L.AlexNetFeatures()
    L.load_backbone(model, _save(tmp_path / "a.pth", state))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    L.load_backbone(
        L.AlexNetFeatures(), _save(tmp_path / "b.pth", {"state_dict": _random_backbone(3, False)})
    )


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s.pop("features.8.bias"), "missing keys ['features.8.bias']"),
        (
            lambda s: s.__setitem__("features.13.weight", torch.zeros(1)),
            "unexpected keys ['features.13.weight']",
        ),
        (lambda s: s.__setitem__("features.3.weight", torch.zeros(192, 64, 3, 3)), "wrong shapes"),
        (lambda s: s.__setitem__("module.features.0.weight", s.pop("features.0.weight")), "unexpected keys"),
    ],
)
def test_backbone_with_wrong_keys_is_rejected(tmp_path: Path, edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    state = _random_backbone(4)
    edit(state)
    with pytest.raises(ValueError, match="not LPIPS backbone|wrong shapes") as info:
        L.load_backbone(L.AlexNetFeatures(), _save(tmp_path / "bad.pth", state))
    assert needle in str(info.value) and "bad.pth" in str(info.value)


def test_heads_with_wrong_keys_are_rejected(tmp_path: Path) -> None:
    heads = _random_heads()
    no_dropout = {
        k.replace("model.1", "model.0"): v for k, v in heads.items()
    }  # saved without the dropout slot
    with pytest.raises(ValueError, match=r"missing keys \['lin0.model.1.weight'"):
        L.load_heads(L.LinearHeads(), _save(tmp_path / "h.pth", no_dropout))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        L.load_heads(L.LinearHeads(), junk)
    with pytest.raises(ValueError, match="state dict of tensors"):
        L.load_heads(L.LinearHeads(), _save(tmp_path / "list.pth", [1, 2]))
    with pytest.raises(FileNotFoundError, match="heads weights not found"):
        L.load_heads(L.LinearHeads(), tmp_path / "absent.pth")


# ------------------------------------------------------------------------------------- weight resolution
def test_resolve_weights_from_arguments_and_environment(
    weight_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone, heads = weight_files
    monkeypatch.delenv(L.BACKBONE_ENV, raising=False)
    monkeypatch.delenv(L.HEADS_ENV, raising=False)
    assert not L.resolve_weights().available
    assert L.describe_weights(L.resolve_weights()) == {"computed": False}
    monkeypatch.setenv(L.BACKBONE_ENV, str(backbone))
    with pytest.raises(FileNotFoundError, match="heads"):
        L.resolve_weights()  # only one of the two: an error, never a silent skip
    monkeypatch.setenv(L.HEADS_ENV, str(heads))
    assert L.resolve_weights() == L.LpipsWeights(backbone, heads)
    other = _save(tmp_path / "other_heads.pth", _random_heads(9))
    assert L.resolve_weights(heads=other).heads == other  # explicit argument beats the environment
    with pytest.raises(FileNotFoundError, match="not found"):
        L.resolve_weights(backbone=tmp_path / "missing.pth")


def test_describe_weights_hashes_and_hub_name_check(weight_files: tuple[Path, Path], tmp_path: Path) -> None:
    backbone, heads = weight_files
    info = L.describe_weights(L.LpipsWeights(backbone, heads))
    assert info["backbone_sha256"] == hashlib.sha256(backbone.read_bytes()).hexdigest()
    assert info["heads_sha256"] == hashlib.sha256(heads.read_bytes()).hexdigest()
    assert info["backbone_is_reference"] is False and info["heads_is_reference"] is False
    digest = str(info["backbone_sha256"])
    good = tmp_path / f"alexnet-owt-{digest[:8]}.pth"
    good.write_bytes(backbone.read_bytes())
    L.describe_weights(L.LpipsWeights(good, heads))  # name agrees with content
    bad = tmp_path / f"alexnet-owt-{'0' * 8 if digest[:8] != '0' * 8 else '1' * 8}.pth"
    bad.write_bytes(backbone.read_bytes())
    with pytest.raises(ValueError, match="does not start with"):
        L.describe_weights(L.LpipsWeights(bad, heads))
