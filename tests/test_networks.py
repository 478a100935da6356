"""Generator and discriminator: shapes, semantics of every option, gradients, names and sizes.

Numerical parity with the official networks is checked by tests/benchmarks/parity_official.py
(it needs a checkout of the official code, so it is a script rather than a test).
"""

from __future__ import annotations

import json

import pytest
import torch

from models.layers import Conv2dLayer, FullyConnectedLayer, normalize_2nd_moment
from models.stylegan2.discriminator import Discriminator, MinibatchStdLayer
from models.stylegan2.generator import Generator
from models.stylegan2.synthesis import default_fused_modconv

ARCHS = ["orig", "skip", "resnet"]


def make_g(res: int = 16, ch: int = 3, c_dim: int = 0, arch: str = "skip", **synthesis: object) -> Generator:
    synthesis_kwargs = dict(channel_base=256, channel_max=32, architecture=arch, **synthesis)
    return Generator(
        z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=res, img_channels=ch,
        mapping_kwargs=dict(num_layers=2), synthesis_kwargs=synthesis_kwargs,
    )


def make_d(res: int = 16, ch: int = 3, c_dim: int = 0, arch: str = "resnet", **kwargs: object) -> Discriminator:
    kwargs = dict(dict(channel_base=256, channel_max=32), **kwargs)
    return Discriminator(c_dim=c_dim, img_resolution=res, img_channels=ch, architecture=arch, **kwargs)


def labels(n: int, c_dim: int) -> torch.Tensor:
    c = torch.zeros(n, c_dim)
    if c_dim:
        c[torch.arange(n), torch.arange(n) % c_dim] = 1
    return c


def randomize_noise_strength(G: Generator, value: float = 0.5) -> None:
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(value)


# ---------------------------------------------------------------------------------------------
# Shapes and dtypes


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("res", "ch", "c_dim"), [(16, 3, 0), (32, 1, 5), (64, 3, 10)])
def test_generator_output(arch: str, res: int, ch: int, c_dim: int) -> None:
    torch.manual_seed(0)
    G = make_g(res, ch, c_dim, arch).eval()
    # Two ws per resolution, minus the 4x4 block's missing conv0, plus the final ToRGB.
    assert G.num_ws == G.mapping.num_ws == 2 * (res.bit_length() - 1) - 2
    with torch.no_grad():
        img = G(torch.randn(3, 16), labels(3, c_dim), noise_mode="const")
    assert img.shape == (3, ch, res, res)
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert img.std() > 0
    for attr, value in dict(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=res, img_channels=ch).items():
        assert getattr(G, attr) == value


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("res", "ch", "c_dim"), [(16, 3, 0), (32, 1, 5), (64, 3, 10)])
def test_discriminator_output(arch: str, res: int, ch: int, c_dim: int) -> None:
    torch.manual_seed(0)
    D = make_d(res, ch, c_dim, arch)
    with torch.no_grad():
        logits = D(torch.randn(4, ch, res, res), labels(4, c_dim))
    assert logits.shape == (4, 1)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert logits.std() > 0  # samples are scored independently enough to differ


def test_generator_4px_and_discriminator_rejects_4px() -> None:
    G = make_g(4)
    assert G.num_ws == 2
    assert G(torch.randn(2, 16), None).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError):
        make_d(4)


def test_fp16_blocks_run_float32_on_cpu() -> None:
    torch.manual_seed(0)
    G = make_g(32, num_fp16_res=4, conv_clamp=256, fp16_channels_last=True).eval()
    D = make_d(32, num_fp16_res=4, conv_clamp=256, block_kwargs=dict(fp16_channels_last=True))
    assert G.synthesis.b32.use_fp16 and D.b32.use_fp16
    z = torch.randn(2, 16)
    with torch.no_grad():
        img = G(z, None, noise_mode="const")
        x, _ = G.synthesis.b4(None, None, G.mapping(z, None)[:, :2], noise_mode="const")
        assert x.dtype == torch.float32  # intermediate features too, not just the image
        assert torch.equal(img, G(z, None, noise_mode="const", force_fp32=True))
        assert D(img, None).dtype == torch.float32


def test_bad_inputs_raise() -> None:
    G = make_g(16, c_dim=3)
    with pytest.raises(ValueError):
        G(torch.randn(2, 15), labels(2, 3))
    with pytest.raises(ValueError):
        G(torch.randn(2, 16), labels(2, 3), noise_mode="bogus")
    with pytest.raises(ValueError):
        G.synthesis(torch.randn(2, G.num_ws + 1, 16))
    with pytest.raises(ValueError):
        make_g(16, arch="bogus")
    with pytest.raises(ValueError):
        make_d(16)(torch.randn(2, 3, 8, 8), None)


# ---------------------------------------------------------------------------------------------
# Mapping network: truncation and the W average


def test_truncation() -> None:
    torch.manual_seed(0)
    G = make_g(16, c_dim=4).eval()
    G.mapping.w_avg.copy_(torch.randn(16))
    z, c = torch.randn(5, 16), labels(5, 4)
    ws = G.mapping(z, c)
    assert ws.shape == (5, G.num_ws, 16)
    assert torch.equal(ws[:, 0:1].expand_as(ws), ws)  # one w broadcast to every layer
    assert torch.equal(G.mapping(z, c, truncation_psi=1, truncation_cutoff=2), ws)

    ws0 = G.mapping(z, c, truncation_psi=0)
    torch.testing.assert_close(ws0, G.mapping.w_avg.expand_as(ws0))

    psi = 0.7
    ws_t = G.mapping(z, c, truncation_psi=psi)
    torch.testing.assert_close(ws_t, G.mapping.w_avg + psi * (ws - G.mapping.w_avg))

    ws_cut = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=2)
    torch.testing.assert_close(ws_cut[:, :2], ws_t[:, :2])
    assert torch.equal(ws_cut[:, 2:], ws[:, 2:])  # layers past the cutoff are untouched


def test_w_avg_tracking() -> None:
    torch.manual_seed(0)
    G = make_g(16)
    z = torch.randn(8, 16)
    w_avg0 = G.mapping.w_avg.clone()
    assert torch.equal(w_avg0, torch.zeros(16))

    G.eval()
    G.mapping(z, None)
    assert torch.equal(G.mapping.w_avg, w_avg0)

    G.train()
    G.mapping(z, None, skip_w_avg_update=True)
    assert torch.equal(G.mapping.w_avg, w_avg0)

    w = G.mapping(z, None)[:, 0]
    beta = G.mapping.w_avg_beta
    assert beta == 0.995
    # w_avg <- lerp(mean(w), w_avg, beta) = beta * w_avg + (1 - beta) * mean(w)
    torch.testing.assert_close(G.mapping.w_avg, (1 - beta) * w.detach().mean(0))


def test_normalize_2nd_moment() -> None:
    x = torch.randn(4, 16) * 7
    assert torch.allclose(normalize_2nd_moment(x).square().mean(1), torch.ones(4), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Synthesis options


def test_noise_modes() -> None:
    torch.manual_seed(0)
    G = make_g(16).eval()
    randomize_noise_strength(G)
    z = torch.randn(2, 16)
    with torch.no_grad():
        const1 = G(z, None, noise_mode="const")
        const2 = G(z, None, noise_mode="const")
        rand1 = G(z, None, noise_mode="random")
        rand2 = G(z, None)  # random is the default, as in the official networks
        none = G(z, None, noise_mode="none")
        randomize_noise_strength(G, 0.0)
        no_strength = G(z, None, noise_mode="const")
    assert torch.equal(const1, const2)
    assert not torch.allclose(rand1, rand2)
    assert not torch.allclose(rand1, const1)
    assert not torch.allclose(none, const1)
    torch.testing.assert_close(none, no_strength)  # "none" == zero noise


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_and_unfused_modconv_agree(arch: str) -> None:
    torch.manual_seed(0)
    G = make_g(32, arch=arch).eval()
    randomize_noise_strength(G)
    ws = G.mapping(torch.randn(3, 16), None) + 0.3 * torch.randn(3, G.num_ws, 16)
    with torch.no_grad():
        fused = G.synthesis(ws, noise_mode="const", fused_modconv=True)
        unfused = G.synthesis(ws, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(fused, unfused, atol=1e-4, rtol=1e-4)


def test_default_fused_modconv() -> None:
    cpu, cuda, f32, f16 = torch.device("cpu"), torch.device("cuda"), torch.float32, torch.float16
    # CUDA: the official rule. CPU: grouped convolutions are slow, so fused only for one sample.
    assert default_fused_modconv(False, f32, 8, cuda) and not default_fused_modconv(False, f16, 8, cuda)
    assert default_fused_modconv(False, f16, 1, cuda) and not default_fused_modconv(True, f32, 8, cuda)
    assert not default_fused_modconv(False, f32, 8, cpu) and default_fused_modconv(False, f32, 1, cpu)
    assert not default_fused_modconv(True, f32, 1, cpu)


def test_conv_clamp_bounds_the_image_in_orig_architecture() -> None:
    # With 'orig' the image is the last ToRGB output, which is clamped to +-conv_clamp.
    torch.manual_seed(0)
    G = make_g(16, arch="orig", conv_clamp=0.05).eval()
    with torch.no_grad():
        img = G(torch.randn(4, 16), None, noise_mode="const")
    assert img.abs().max() <= 0.05
    assert img.abs().max() > 0.04


def test_generator_backward() -> None:
    torch.manual_seed(0)
    G = make_g(16, c_dim=3, arch="resnet").train()
    G(torch.randn(2, 16), labels(2, 3)).square().mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert G.synthesis.b4.const.grad.abs().sum() > 0
    assert G.mapping.fc0.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Discriminator


@pytest.mark.parametrize("arch", ARCHS)
def test_r1_double_backward(arch: str) -> None:
    torch.manual_seed(0)
    D = make_d(16, c_dim=3, arch=arch, conv_clamp=256)
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    logits = D(img, labels(4, 3))
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    penalty.backward()
    grads = {n: p.grad for n, p in D.named_parameters()}
    # Only the output bias cannot influence dD/dimg, so it alone gets no gradient.
    assert {n for n, g in grads.items() if g is None} == {"b4.out.bias"}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert grads["b16.conv0.weight"].abs().sum() > 0
    assert grads["mapping.embed.weight"].abs().sum() > 0


def test_minibatch_std() -> None:
    torch.manual_seed(0)
    layer = MinibatchStdLayer(group_size=4, num_channels=1)
    x = torch.randn(8, 6, 4, 4)
    y = layer(x)
    assert y.shape == (8, 7, 4, 4)
    assert torch.equal(y[:, :6], x)
    # Groups are strided: samples j, j+2, j+4, j+6 form group j (N=8, G=4).
    expected = x[0::2].std(dim=0, unbiased=False).mean()
    torch.testing.assert_close(y[0, 6], expected.expand(4, 4), atol=1e-6, rtol=1e-5)
    assert torch.equal(y[0, 6], y[2, 6])
    # A batch smaller than the group size forms a single group.
    assert layer(x[:2]).shape == (2, 7, 4, 4)
    with pytest.raises(RuntimeError):
        layer(x[:6])  # 6 samples do not split into groups of 4
    two = MinibatchStdLayer(group_size=None, num_channels=2)(x)
    assert two.shape == (8, 8, 4, 4)
    assert not any(True for _ in layer.parameters()) and not any(True for _ in layer.buffers())


def test_freeze_layers_makes_buffers() -> None:
    D = make_d(32, channel_base=512, block_kwargs=dict(freeze_layers=3))
    # b32: fromrgb, conv0, conv1 frozen (layers 0-2); its skip (layer 3) and later blocks train.
    trainable = {n for n, _ in D.named_parameters()}
    assert "b32.fromrgb.weight" not in trainable and "b32.conv1.bias" not in trainable
    assert "b32.skip.weight" in trainable and "b16.conv0.weight" in trainable
    assert "b32.fromrgb.weight" in D.state_dict()
    assert sum(p.numel() for p in D.parameters()) == 65537  # measured on the official Discriminator


# ---------------------------------------------------------------------------------------------
# Names, sizes, constructor kwargs


def test_state_dict_names_match_official() -> None:
    G = make_g(64, c_dim=0)
    keys = set(G.state_dict())
    for k in [
        "mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg",
        "synthesis.b4.const", "synthesis.b4.resample_filter",
        "synthesis.b4.conv1.weight", "synthesis.b4.conv1.noise_const", "synthesis.b4.conv1.noise_strength",
        "synthesis.b4.conv1.affine.weight", "synthesis.b4.torgb.weight",
        "synthesis.b8.conv0.affine.weight", "synthesis.b8.conv0.resample_filter", "synthesis.b8.resample_filter",
        "synthesis.b64.torgb.weight", "synthesis.b64.torgb.affine.bias", "synthesis.b64.conv1.bias",
    ]:
        assert k in keys, k
    assert not any(k.startswith("mapping.embed") for k in keys)
    assert "synthesis.b4.conv0.weight" not in keys

    Gr = make_g(16, arch="resnet")
    assert "synthesis.b8.skip.weight" in Gr.state_dict()
    assert "synthesis.b8.torgb.weight" not in Gr.state_dict()  # resnet: ToRGB only at the end

    D = make_d(32, c_dim=10)
    dkeys = set(D.state_dict())
    for k in [
        "b32.fromrgb.weight", "b32.conv0.weight", "b32.conv1.bias", "b32.skip.weight", "b16.conv1.resample_filter",
        "b4.conv.weight", "b4.fc.weight", "b4.out.weight", "b4.out.bias",
        "mapping.embed.weight", "mapping.fc0.weight", "mapping.fc7.bias",
    ]:
        assert k in dkeys, k
    assert "b16.fromrgb.weight" not in dkeys  # resnet: fromrgb only at the top
    assert "mapping.w_avg" not in dkeys
    assert isinstance(D.b4.mbstd, MinibatchStdLayer)
    assert D.b4.out.weight.shape == (32, 32)  # cmap_dim defaults to the 4x4 channel count


def test_parameter_counts_equal_official() -> None:
    # Every count below was measured by instantiating training.networks from the official
    # stylegan2-ada-pytorch code with the same arguments (a scratch script, not part of the tests).
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    small = dict(channel_base=512, channel_max=32)
    G = Generator(32, 0, 32, 32, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=small)
    D = Discriminator(0, 32, 3, **small)
    assert (count(G), count(G.mapping), count(G.synthesis), count(D)) == (66723, 2112, 64611, 72561)

    G = Generator(
        32, 10, 32, 32, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(small, architecture="resnet")
    )
    D = Discriminator(10, 32, 3, architecture="skip", **small)
    assert (count(G), count(D)) == (67194, 80208)

    # The official paper256 configuration (train.py --cfg=paper256) at its full 256x256 size.
    G = Generator(512, 0, 512, 256, 3, mapping_kwargs=dict(num_layers=8), synthesis_kwargs=dict(
        channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))
    D = Discriminator(0, 256, 3, channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256,
                      epilogue_kwargs=dict(mbstd_group_size=8))
    assert (count(G), count(D), G.num_ws) == (24767458, 24001089, 14)


def test_init_kwargs_rebuild_the_same_network() -> None:
    G = make_g(16, c_dim=3, arch="resnet", conv_clamp=256, num_fp16_res=2)
    D = make_d(16, c_dim=3, arch="skip", conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=2))
    for net, cls in [(G, Generator), (D, Discriminator)]:
        kwargs = json.loads(json.dumps(net.init_kwargs))  # plain JSON-able data
        clone = cls(**kwargs)
        clone.load_state_dict(net.state_dict(), strict=True)
        assert list(clone.state_dict()) == list(net.state_dict())
    assert G.init_kwargs["synthesis_kwargs"]["architecture"] == "resnet"
    assert D.init_kwargs["epilogue_kwargs"] == {"mbstd_group_size": 2}


def test_layer_constants() -> None:
    fc = FullyConnectedLayer(64, 8, activation="lrelu", lr_multiplier=0.01, bias_init=1)
    assert fc.weight_gain == pytest.approx(0.01 / 8) and fc.bias_gain == 0.01
    assert torch.equal(fc.bias, torch.ones(8))
    conv = Conv2dLayer(4, 8, 3, activation="lrelu", trainable=False)
    assert conv.weight_gain == pytest.approx(1 / 6) and conv.act_gain == pytest.approx(2**0.5)
    assert not list(conv.parameters()) and {"weight", "bias", "resample_filter"} <= set(conv.state_dict())
    torch.testing.assert_close(conv.resample_filter.sum(), torch.tensor(1.0))  # normalised [1,3,3,1] x [1,3,3,1]
    assert conv.resample_filter.shape == (4, 4)
