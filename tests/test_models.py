"""Model registry: the uniform interface, exact spec parameter counts, init, conditioning, config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ganforge.config import ModelConfig
from ganforge.errors import ConfigError
from ganforge.models import MODELS, build_models, dcgan_init_

# The valid (spec) configuration of every registered arch. A new MODELS entry must be added here:
# test_every_arch_has_a_test_config fails otherwise, so it cannot dodge the parametrised tests.
ARCH_CONFIGS: dict[str, dict] = {
    "mlp": {},
    "mlp-bn": {},
    "conv": {},
    "cdcgan": {"resolution": 64, "num_classes": 10},
    "dcgan96": {"resolution": 96, "channels": 3},
    "dcgan28": {"latent_dim": 64, "num_classes": 10, "g_width": 32, "d_width": 32},  # mnist-quick
    "resnet": {"resolution": 32, "channels": 3, "num_classes": 10, "g_width": 8, "d_width": 8},
}
B = 3


def make_cfg(arch: str, **overrides) -> ModelConfig:
    return ModelConfig(arch=arch, **{**ARCH_CONFIGS[arch], **overrides})


def inputs(cfg: ModelConfig, batch: int = B) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = torch.randn(batch, cfg.latent_dim)
    labels = torch.arange(batch) % cfg.num_classes if cfg.num_classes else None
    return z, labels


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_every_arch_has_a_test_config():
    assert set(MODELS.names()) == set(ARCH_CONFIGS), "add each new MODELS entry to ARCH_CONFIGS"


@pytest.mark.parametrize("arch", MODELS.names())
def test_shapes_range_and_attributes(arch):
    torch.manual_seed(0)
    cfg = make_cfg(arch)
    g, d = build_models(cfg)
    z, labels = inputs(cfg)
    images = g(z, labels)
    assert images.shape == (B, cfg.channels, cfg.resolution, cfg.resolution)
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0  # Tanh output
    logits = d(images, labels)
    assert logits.shape == (B,)
    # Logits, not probabilities: the losses apply the sigmoid.
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())
    for net in (g, d):
        assert (net.latent_dim, net.num_classes, net.channels, net.resolution) == (
            cfg.latent_dim,
            cfg.num_classes,
            cfg.channels,
            cfg.resolution,
        )


@pytest.mark.parametrize("arch", MODELS.names())
def test_backward_reaches_every_parameter(arch):
    torch.manual_seed(0)
    cfg = make_cfg(arch, init="dcgan")
    g, d = build_models(cfg)
    z, labels = inputs(cfg)
    real = torch.rand(B, cfg.channels, cfg.resolution, cfg.resolution) * 2 - 1
    loss = d(g(z, labels), labels).mean() - d(real, labels).mean()
    loss.backward()
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.grad is not None, f"{arch}: {name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{arch}: {name} has a non-finite gradient"


# Hand counts from the spec's layer lists in docs/seed-systems.md (nz = 100).
def lin(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def conv(k: int, i: int, o: int, bias: bool) -> int:
    return k * k * i * o + (o if bias else 0)


def bn(c: int) -> int:
    return 2 * c


SPEC_PARAMS: dict[str, tuple[int, int]] = {
    # mnist-mlp: G 100-256-512-784, D 784-512-256-1, all Linear with bias.
    "mlp": (
        lin(100, 256) + lin(256, 512) + lin(512, 784),
        lin(784, 512) + lin(512, 256) + lin(256, 1),
    ),
    # mnist-mlp-bn: bias-free G Linears with BN after the two hidden ones; D as mnist-mlp.
    "mlp-bn": (
        lin(100, 256, False) + bn(256) + lin(256, 512, False) + bn(512) + lin(512, 784, False),
        lin(784, 512) + lin(512, 256) + lin(256, 1),
    ),
    # mnist-conv: convs with bias (the spec does not remove them).
    "conv": (
        lin(100, 3136) + bn(1) + conv(3, 1, 50, True) + bn(50) + conv(3, 50, 25, True) + bn(25) + conv(2, 25, 1, True),
        conv(5, 1, 32, True) + conv(5, 32, 64, True) + lin(3136, 1024) + lin(1024, 1),
    ),
    # mnist-cgan: bias-free; G input 100 + 10 classes, D input 1 + 10 label planes.
    "cdcgan": (
        conv(4, 110, 512, False)
        + bn(512)
        + conv(4, 512, 256, False)
        + bn(256)
        + conv(4, 256, 128, False)
        + bn(128)
        + conv(4, 128, 64, False)
        + bn(64)
        + conv(4, 64, 1, False),
        conv(4, 11, 64, False)
        + conv(4, 64, 128, False)
        + bn(128)
        + conv(4, 128, 256, False)
        + bn(256)
        + conv(4, 256, 512, False)
        + bn(512)
        + conv(4, 512, 1, False),
    ),
    # anime-dcgan: bias-free except the last D conv; 5x5 stride-3 outer layers.
    "dcgan96": (
        conv(4, 100, 512, False)
        + bn(512)
        + conv(4, 512, 256, False)
        + bn(256)
        + conv(4, 256, 128, False)
        + bn(128)
        + conv(4, 128, 64, False)
        + bn(64)
        + conv(5, 64, 3, False),
        conv(5, 3, 64, False)
        + conv(4, 64, 128, False)
        + bn(128)
        + conv(4, 128, 256, False)
        + bn(256)
        + conv(4, 256, 512, False)
        + bn(512)
        + conv(4, 512, 1, True),
    ),
}


# mnist-quick (ours, not a seed system): G Linear(64 + 10, 4w*7*7) bias-free, BN, ConvT(4w, 2w) bias-free, BN,
# ConvT(2w, 1) with bias; D Conv(1, w) and Conv(w, 2w) with bias, Linear(2w*49, 1), Embedding(10, 2w*49); w = 32.
SPEC_PARAMS["dcgan28"] = (
    lin(74, 128 * 49, False) + bn(128) + conv(4, 128, 64, False) + bn(64) + conv(4, 64, 1, True),
    conv(4, 1, 32, True) + conv(4, 32, 64, True) + lin(64 * 49, 1) + 10 * 64 * 49,
)


# resnet (ours): stage widths w * min(R / r, 8). G blocks: [c]BN(c_in), Conv3x3(c_in, c_out) bias-free,
# [c]BN(c_out), Conv3x3(c_out, c_out) with bias, Conv1x1(c_in, c_out) bias-free shortcut when the widths differ;
# a conditional BN adds an Embedding(K, 2c) of gain/bias offsets. D blocks: Conv3x3(c_in, c_out) and
# Conv3x3(c_out, c_out) with bias, the same bias-free 1x1 shortcut; head Linear(c, 1) + Embedding(K, c).
def cbn(c: int, classes: int) -> int:
    return bn(c) + classes * 2 * c


def resnet_g_block(c_in: int, c_out: int, classes: int) -> int:
    shortcut = conv(1, c_in, c_out, False) if c_in != c_out else 0
    return (
        cbn(c_in, classes) + conv(3, c_in, c_out, False) + cbn(c_out, classes) + conv(3, c_out, c_out, True) + shortcut
    )


def resnet_d_block(c_in: int, c_out: int) -> int:
    shortcut = conv(1, c_in, c_out, False) if c_in != c_out else 0
    return conv(3, c_in, c_out, True) + conv(3, c_out, c_out, True) + shortcut


# 32 px, w = 8, RGB, 10 classes: base 4x4, widths 64 (4x4), 32 (8x8), 16 (16x16), 8 (32x32).
SPEC_PARAMS["resnet"] = (
    lin(100, 64 * 4 * 4)
    + resnet_g_block(64, 32, 10)
    + resnet_g_block(32, 16, 10)
    + resnet_g_block(16, 8, 10)
    + bn(8)
    + conv(3, 8, 3, True),
    resnet_d_block(3, 8) + resnet_d_block(8, 16) + resnet_d_block(16, 32) + lin(32, 1) + 10 * 32,
)


def test_resnet_96px_parameter_count_and_widths():
    """The anime size, unconditional, w = 16: base 6x6 and widths 128 (6), 128 (12), 64 (24), 32 (48), 16 (96)."""
    g, d = build_models(ModelConfig(arch="resnet", resolution=96, channels=3, g_width=16, d_width=16))
    g_count = (
        lin(100, 128 * 36)
        + resnet_g_block(128, 128, 0)
        + resnet_g_block(128, 64, 0)
        + resnet_g_block(64, 32, 0)
        + resnet_g_block(32, 16, 0)
        + bn(16)
        + conv(3, 16, 3, True)
    )
    d_count = (
        resnet_d_block(3, 16) + resnet_d_block(16, 32) + resnet_d_block(32, 64) + resnet_d_block(64, 128) + lin(128, 1)
    )
    assert (n_params(g), n_params(d)) == (g_count, d_count)
    assert [block.conv2.out_channels for block in g.blocks] == [128, 64, 32, 16]
    assert [block.conv2.out_channels for block in d.blocks] == [16, 32, 64, 128]
    assert isinstance(g.blocks[0].shortcut, nn.Identity)  # 128 -> 128 needs no 1x1 conv


def test_resnet_forward_flops_match_the_closed_form():
    """Conv/matmul FLOPs of one forward, counted by FlopCounterMode, against 2 x the MACs of the layout; the
    1x1 shortcuts run at the lower resolution (the cheap side of the exact commutation with up/down-sampling)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = make_cfg("resnet")
    g, d = build_models(cfg)
    z, labels = inputs(cfg, batch=1)
    widths, sizes = [64, 32, 16, 8], [4, 8, 16, 32]
    g_macs = 100 * 64 * 16 + 9 * 8 * 3 * 32 * 32
    for (c_in, c_out), r in zip(zip(widths[:-1], widths[1:]), sizes[:-1]):
        g_macs += 9 * c_in * c_out * (2 * r) ** 2 + 9 * c_out * c_out * (2 * r) ** 2 + c_in * c_out * r**2
    d_macs = 32  # head
    for (c_in, c_out), r in zip([(3, 8), (8, 16), (16, 32)], [32, 16, 8]):
        d_macs += 9 * c_in * c_out * r**2 + 9 * c_out * c_out * r**2 + c_in * c_out * (r // 2) ** 2
    for net, args, macs in ((g, (z, labels), g_macs), (d, (g(z, labels).detach(), labels), d_macs)):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(*args)
        assert counter.get_total_flops() == 2 * macs


@pytest.mark.parametrize("resolution", [32, 48, 64, 96, 128, 192, 256])
def test_resnet_supports_its_resolutions(resolution):
    cfg = make_cfg("resnet", resolution=resolution, num_classes=0, g_width=2, d_width=2, latent_dim=8)
    g, d = build_models(cfg)
    images = g(torch.randn(2, 8))
    assert images.shape == (2, 3, resolution, resolution) and d(images).shape == (2,)


@pytest.mark.parametrize("arch", MODELS.names())
def test_parameter_count_matches_spec(arch):
    assert arch in SPEC_PARAMS, f"write out the hand parameter count of {arch!r}"
    g, d = build_models(make_cfg(arch))
    assert (n_params(g), n_params(d)) == SPEC_PARAMS[arch]


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("mlp", {"latent_dim": 16, "channels": 3, "resolution": 32}),
        ("mlp-bn", {"latent_dim": 8, "resolution": 16}),
        ("conv", {"latent_dim": 32, "channels": 3}),
        ("cdcgan", {"latent_dim": 20, "num_classes": 3, "channels": 3, "g_width": 8, "d_width": 4}),
        ("dcgan96", {"latent_dim": 12, "channels": 1, "g_width": 8, "d_width": 4}),
        ("dcgan28", {"latent_dim": 16, "num_classes": 0, "channels": 3, "g_width": 8, "d_width": 4}),
        ("dcgan28", {"latent_dim": 16, "num_classes": 3, "g_width": 4, "d_width": 8}),
        ("resnet", {"latent_dim": 16, "num_classes": 0, "channels": 1, "resolution": 48, "g_width": 4}),
        ("resnet", {"latent_dim": 16, "num_classes": 3, "resolution": 64, "g_width": 2, "d_width": 4}),
    ],
)
def test_free_sizes_follow_the_config(arch, overrides):
    cfg = make_cfg(arch, **overrides)
    g, d = build_models(cfg)
    z, labels = inputs(cfg)
    images = g(z, labels)
    assert images.shape == (B, cfg.channels, cfg.resolution, cfg.resolution)
    assert d(images, labels).shape == (B,)


def test_dcgan_widths_scale_with_width():
    g, d = build_models(make_cfg("dcgan96", g_width=8, d_width=4))
    g_convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    d_convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in g_convs] == [64, 32, 16, 8, 3]
    assert [m.out_channels for m in d_convs] == [4, 8, 16, 32, 1]


@pytest.mark.parametrize("arch", MODELS.names())
def test_dcgan_init(arch):
    torch.manual_seed(0)
    default_nets = build_models(make_cfg(arch))
    torch.manual_seed(0)
    dcgan_nets = build_models(make_cfg(arch, init="dcgan"))
    for default_net, net in zip(default_nets, dcgan_nets, strict=True):
        for (name, before), after in zip(default_net.named_modules(), net.modules(), strict=True):
            if isinstance(after, (nn.Conv2d, nn.ConvTranspose2d)):
                w = after.weight
                assert abs(w.mean().item()) < 0.01, name
                if w.numel() >= 500:  # too few draws in tiny convs for a tight std estimate
                    assert 0.017 < w.std().item() < 0.023, name
            elif isinstance(after, nn.modules.batchnorm._BatchNorm):
                assert abs(after.weight.mean().item() - 1.0) < 0.1, name
                assert after.weight.std(unbiased=False).item() < 0.05, name
                assert torch.equal(after.bias, torch.zeros_like(after.bias)), name
            elif isinstance(after, nn.Linear):
                # The spec names convs and BN only: Linear layers keep PyTorch's init bit for bit.
                assert torch.equal(before.weight, after.weight), name


def test_dcgan_init_is_in_place_and_returns_module():
    net = nn.Sequential(nn.Conv2d(3, 64, 4), nn.BatchNorm2d(64))
    assert dcgan_init_(net) is net
    assert abs(net[0].weight.std().item() - 0.02) < 0.003
    assert torch.equal(net[1].bias, torch.zeros(64))


@pytest.mark.parametrize("arch", [a for a in MODELS.names() if make_cfg(a).num_classes > 0])
def test_conditional_output_depends_on_label(arch):
    torch.manual_seed(0)
    cfg = make_cfg(arch)
    g, d = build_models(cfg)
    g.eval(), d.eval()  # per-sample outputs: no batch statistics mixing the two rows
    z = torch.randn(1, cfg.latent_dim).repeat(2, 1)
    labels = torch.tensor([0, 1])
    images = g(z, labels)
    assert not torch.allclose(images[0], images[1])
    same_image = images[:1].repeat(2, 1, 1, 1)
    logits = d(same_image, labels)
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("arch", MODELS.names())
def test_labels_required_exactly_when_conditional(arch):
    cfg = make_cfg(arch)
    g, d = build_models(cfg)
    z, labels = inputs(cfg)
    images = g(z, labels)
    wrong = None if labels is not None else torch.zeros(B, dtype=torch.long)
    with pytest.raises(ValueError, match="labels"):
        g(z, wrong)
    with pytest.raises(ValueError, match="labels"):
        d(images, wrong)


def test_bad_tensor_shapes_are_rejected():
    g, d = build_models(make_cfg("mlp"))
    with pytest.raises(ValueError, match="z must be"):
        g(torch.randn(B, 100, 1, 1))
    with pytest.raises(ValueError, match="x must be"):
        d(torch.randn(B, 784))


@pytest.mark.parametrize(
    ("arch", "overrides", "fragment"),
    [
        ("conv", {"resolution": 32}, "model.resolution=28"),
        ("cdcgan", {"resolution": 28}, "model.resolution=64"),
        ("dcgan96", {"resolution": 64}, "model.resolution=96"),
        ("cdcgan", {"num_classes": 0}, "model.num_classes"),
        ("mlp", {"num_classes": 10}, "cdcgan"),
        ("dcgan96", {"num_classes": 10}, "model.num_classes=0"),
        ("dcgan28", {"resolution": 32}, "model.resolution=28"),
        ("resnet", {"resolution": 28}, "model.resolution=28 is not supported by arch 'resnet'"),
        ("resnet", {"resolution": 40}, "4 \\* 2\\^k or 6 \\* 2\\^k"),
        ("resnet", {"resolution": 16}, "k >= 3"),
        ("mlp", {"g_width": 128}, "model.g_width=64"),
        ("conv", {"d_width": 32}, "model.d_width=64"),
        ("mlp", {"init": "xavier"}, "model.init"),
        ("mlp", {"latent_dim": 0}, "model.latent_dim"),
        ("no-such-arch", {}, "unknown model"),
    ],
)
def test_config_contradictions_raise_config_error(arch, overrides, fragment):
    base = ARCH_CONFIGS.get(arch, {})
    cfg = dataclasses.replace(ModelConfig(arch=arch, **base), **overrides)
    with pytest.raises(ConfigError, match=fragment):
        build_models(cfg)
