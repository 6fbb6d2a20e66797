"""Model options on built networks: spectral normalisation of D (exact save/resume), FreezeD and PacGAN's
packed D."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ganforge.checkpoint import load_module, load_tensors, module_tensors, save_tensors
from ganforge.config import ModelConfig
from ganforge.errors import CheckpointError, ConfigError
from ganforge.losses import r1_penalty
from ganforge.models import MODELS, PackedDiscriminator, build_models, freeze_discriminator_blocks
from ganforge.models.options import SPECTRAL_NORM_LAYERS
from test_models import make_cfg

# Narrow where the arch lets us: exact singular values (an eigendecomposition) are slow on wide layers.
NARROW = {"cdcgan": 8, "dcgan96": 8, "dcgan28": 8, "resnet": 8}


def sn_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, SPECTRAL_NORM_LAYERS)]


def real_images(cfg: ModelConfig, batch: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.channels, cfg.resolution, cfg.resolution, generator=g) * 2 - 1


def labels_for(cfg: ModelConfig, batch: int = 4) -> torch.Tensor | None:
    return torch.arange(batch) % cfg.num_classes if cfg.num_classes else None


def largest_singular_value(weight: torch.Tensor, transposed: bool) -> float:
    """sqrt of the top eigenvalue of the smaller Gram matrix (an SVD of the 512 x 4096 DCGAN conv is slow)."""
    matrix = (weight.transpose(0, 1) if transposed else weight).flatten(1).double()  # dim 1 for ConvTranspose
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return torch.linalg.eigvalsh(gram)[-1].sqrt().item()


@pytest.mark.parametrize("arch", MODELS.names())
def test_spectral_norm_parametrizes_every_d_weight_and_saves_its_vectors(arch):
    torch.manual_seed(0)
    g, d = build_models(make_cfg(arch, spectral_norm=True))
    layers = sn_layers(d)
    assert layers
    state = d.state_dict()
    for name, layer in layers:
        assert parametrize.is_parametrized(layer, "weight"), name
        prefix = f"{name}.parametrizations.weight"
        assert {f"{prefix}.original", f"{prefix}.0._u", f"{prefix}.0._v"} <= set(state), name
    assert not any(parametrize.is_parametrized(m) for m in g.modules())  # G is left alone


@pytest.mark.parametrize("arch", MODELS.names())
def test_spectral_norm_makes_each_largest_singular_value_one(arch):
    torch.manual_seed(0)
    widths = {"g_width": NARROW[arch], "d_width": NARROW[arch]} if arch in NARROW else {}
    cfg = make_cfg(arch, spectral_norm=True, **widths)
    _, d = build_models(cfg)
    d.train()
    with torch.no_grad():
        for step in range(10):  # one power iteration per training-mode forward
            d(real_images(cfg, seed=step), labels_for(cfg))
    d.eval()
    away_from_one = 0
    for name, layer in sn_layers(d):
        transposed = isinstance(layer, nn.ConvTranspose2d)
        sigma = largest_singular_value(layer.weight, transposed)
        # the power iteration's estimate u^T W v never exceeds the true sigma, so W / estimate is >= 1
        assert 1.0 - 1e-6 <= sigma <= 1.05, name
        away_from_one += abs(largest_singular_value(layer.parametrizations.weight.original, transposed) - 1) > 0.1
    assert away_from_one > 0  # the raw weights are not already normalised: the check above means something


@pytest.mark.parametrize("arch", ["resnet", "dcgan96", "dcgan28"])
def test_spectral_norm_state_round_trips_exactly(arch, tmp_path):
    cfg = make_cfg(arch, spectral_norm=True, g_width=NARROW[arch], d_width=NARROW[arch])
    x, labels = real_images(cfg), labels_for(cfg)
    torch.manual_seed(0)
    _, d = build_models(cfg)
    with torch.no_grad():
        for step in range(3):  # move u/v away from their initial values
            d(real_images(cfg, seed=10 + step), labels)
    path = tmp_path / "d.safetensors"
    save_tensors(path, module_tensors("discriminator", d), {}, kind="test")
    torch.manual_seed(123)  # a different init and different u/v: everything must come from the file
    _, resumed = build_models(cfg)
    tensors, _, _ = load_tensors(path)
    load_module("discriminator", resumed, tensors, path)
    with torch.no_grad():
        for mode in ("eval", "train"):  # train: one more power iteration from the same u on both sides
            d.train(mode == "train"), resumed.train(mode == "train")
            assert torch.equal(d(x, labels), resumed(x, labels)), mode
    for (key, value), (key_resumed, value_resumed) in zip(d.state_dict().items(), resumed.state_dict().items()):
        assert key == key_resumed and torch.equal(value, value_resumed), key


def test_weights_without_spectral_norm_do_not_load_into_a_spectral_norm_d(tmp_path):
    cfg = make_cfg("resnet")
    _, plain = build_models(cfg)
    _, normalised = build_models(make_cfg("resnet", spectral_norm=True))
    tensors = module_tensors("discriminator", plain)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_module("discriminator", normalised, tensors, tmp_path / "plain.safetensors")


def test_spectral_norm_comes_after_init_and_supports_the_r1_double_backward():
    torch.manual_seed(0)
    cfg = make_cfg("resnet", spectral_norm=True, init="dcgan")
    _, d = build_models(cfg)
    original = d.blocks[1].conv1.parametrizations.weight.original
    assert 0.017 < original.std().item() < 0.023  # DCGAN's N(0, 0.02), applied to the raw weight
    penalty, _ = r1_penalty(d, real_images(cfg), labels_for(cfg))
    penalty.backward()
    assert torch.isfinite(original.grad).all() and original.grad.abs().sum() > 0


# ---- FreezeD ----


@pytest.mark.parametrize("arch", MODELS.names())
def test_freeze_d_freezes_exactly_the_first_blocks(arch):
    cfg = make_cfg(arch)
    _, d = build_models(cfg)
    blocks = d.feature_blocks()
    assert len(blocks) >= 2
    first = {id(p) for p in blocks[0].parameters()}
    names = freeze_discriminator_blocks(d, 1)
    assert names and {id(p) for n, p in d.named_parameters() if n in names} == first
    frozen = {n for n, p in d.named_parameters() if not p.requires_grad}
    assert frozen == set(names)
    x = real_images(cfg).requires_grad_(True)
    d(x, labels_for(cfg)).sum().backward()
    for name, p in d.named_parameters():
        assert (p.grad is None) == (name in frozen), name
    assert x.grad is not None and x.grad.abs().sum() > 0  # G still gets gradients through a frozen D


def test_freeze_d_blocks_of_the_dcgan_and_the_resnet():
    _, dcgan = build_models(make_cfg("dcgan96"))
    # a block = a conv and the BN/activation after it; the first conv has no BN
    assert freeze_discriminator_blocks(dcgan, 2) == ["net.0.weight", "net.2.weight", "net.3.weight", "net.3.bias"]
    _, resnet = build_models(make_cfg("resnet", spectral_norm=True))
    names = freeze_discriminator_blocks(resnet, 2)
    assert names and all(n.startswith(("blocks.0.", "blocks.1.")) for n in names)
    assert {n for n, _ in resnet.named_parameters() if n.startswith(("blocks.0.", "blocks.1."))} == set(names)
    assert any("parametrizations.weight.original" in n for n in names)  # spectral norm's raw weights too
    assert len(resnet.feature_blocks()) == 4  # three residual blocks and the head


@pytest.mark.parametrize("n", [-1, 4])
def test_freeze_d_must_leave_the_last_block(n):
    _, d = build_models(make_cfg("resnet"))
    with pytest.raises(ConfigError, match=r"train.freeze_d_layers=-?\d but this discriminator has 4 blocks"):
        freeze_discriminator_blocks(d, n)


def test_freeze_d_zero_freezes_nothing_and_generators_are_refused():
    g, d = build_models(make_cfg("resnet"))
    assert freeze_discriminator_blocks(d, 0) == []
    assert all(p.requires_grad for p in d.parameters())
    with pytest.raises(TypeError, match="Discriminator"):
        freeze_discriminator_blocks(g, 1)


# ---- PacGAN packing ----


def unconditional(arch: str, **overrides) -> ModelConfig:
    return make_cfg(arch, **{"num_classes": 0, **overrides})


@pytest.mark.parametrize("pack", [2, 3])
@pytest.mark.parametrize("arch", [a for a in MODELS.names() if a != "cdcgan"])  # cdcgan is conditional only
def test_packed_d_scores_consecutive_images_side_by_side_along_the_channels(arch, pack):
    torch.manual_seed(0)
    cfg = unconditional(arch, d_pack=pack)
    _, d = build_models(cfg)
    assert isinstance(d, PackedDiscriminator) and d.channels == cfg.channels
    assert d.packed.channels == pack * cfg.channels
    d.eval()  # BatchNorm archs: the reference below must see the same statistics
    x = real_images(cfg, batch=2 * pack)
    # a plain reference: pack i holds images pack*i .. pack*i + pack - 1, in order, along the channels
    by_hand = torch.stack([torch.cat(list(x[i * pack : (i + 1) * pack]), dim=0) for i in range(2)])
    assert by_hand.shape == (2, pack * cfg.channels, cfg.resolution, cfg.resolution)
    with torch.no_grad():
        logits = d(x)  # [2]
        assert logits.shape == (2,)
        torch.testing.assert_close(logits, d.packed(by_hand), rtol=0, atol=0)
        # swapping two images inside a pack changes its logit; swapping whole packs only reorders them
        swapped = x.clone()
        swapped[[0, 1]] = x[[1, 0]]
        assert not torch.equal(d(swapped)[0], logits[0])
        torch.testing.assert_close(d(torch.cat([x[pack:], x[:pack]])), logits.flip(0))  # row order: float rounding


def test_packed_d_refuses_a_partial_pack_and_labels():
    _, d = build_models(unconditional("dcgan28", d_pack=2))
    with pytest.raises(ValueError, match="divisible by 2, got 3"):
        d(torch.zeros(3, 1, 28, 28))
    with pytest.raises(ValueError, match="unconditional"):
        d(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="model.d_pack=2 packs unlabelled images"):
        build_models(make_cfg("dcgan28", d_pack=2))  # num_classes=10


def test_packed_d_takes_spectral_norm_freeze_d_and_the_r1_double_backward(tmp_path):
    torch.manual_seed(0)
    cfg = unconditional("resnet", d_pack=2, spectral_norm=True)
    _, d = build_models(cfg)
    assert sn_layers(d) and all(parametrize.is_parametrized(m, "weight") for _, m in sn_layers(d))

    def block_parameters(blocks: list[nn.Module]) -> list[list[int]]:
        return [[id(p) for p in block.parameters()] for block in blocks]

    assert block_parameters(d.feature_blocks()) == block_parameters(d.packed.feature_blocks())
    assert len(freeze_discriminator_blocks(d, 1)) > 0
    x = real_images(cfg, batch=4).requires_grad_(True)
    penalty, _ = r1_penalty(lambda images, _labels: d(images), x, None)
    penalty.backward()  # second-order gradients through the reshape
    assert penalty.item() > 0 and any(p.grad is not None for p in d.parameters())
    path = tmp_path / "d.safetensors"
    save_tensors(path, module_tensors("discriminator", d), {}, kind="test")
    torch.manual_seed(123)  # everything must come from the file
    _, again = build_models(cfg)
    load_module("discriminator", again, load_tensors(path)[0], path)
    d.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x.detach()), d(x.detach()), rtol=0, atol=0)


def test_reals_and_fakes_scored_together_never_share_a_pack():
    """The training step scores reals and fakes in one forward (``DiscriminatorCritic.pair``): with whole packs
    per half, every pack is all real or all fake, so the logits equal two separate forwards."""
    import contextlib

    from ganforge.objectives import Batch
    from ganforge.training.step import DiscriminatorCritic

    torch.manual_seed(0)
    cfg = unconditional("dcgan28", d_pack=2)
    _, d = build_models(cfg)
    real, fake = real_images(cfg, batch=6, seed=1), real_images(cfg, batch=6, seed=2)
    critic = DiscriminatorCritic(d, contextlib.nullcontext, per_sample=True)
    with torch.no_grad():
        logits_real, logits_fake = critic.pair(Batch(real, None), Batch(fake, None))  # [3], [3]
        torch.testing.assert_close(logits_real, d(real))
        torch.testing.assert_close(logits_fake, d(fake))
