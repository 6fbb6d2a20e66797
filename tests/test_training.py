"""The training loop: each recipe's update order against a plain-PyTorch reference step, the
d_every/g_every schedule, and the run directory a short run leaves behind."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from ganforge import losses
from ganforge.config import apply_overrides
from ganforge.recipes import get_recipe
from ganforge.training.distributed import DistContext
from ganforge.training.loop import Trainer
from ganforge.training.step import STAT_FIELDS

N_D, N_G = STAT_FIELDS.index("n_d"), STAT_FIELDS.index("n_g")


def make_trainer(tmp_path, recipe: str = "digits-mlp", overrides: list[str] = ()) -> Trainer:
    cfg = get_recipe(recipe)
    apply_overrides(cfg, ["data.dataset=digits", "data.max_images=64", "train.progress=false", *overrides])
    return Trainer(cfg, DistContext(), tmp_path / "run")


def first_batch(trainer: Trainer):
    x_real, y_real = next(iter(trainer.loader.epoch(0)))
    return x_real, (y_real if trainer.cfg.model.num_classes else None)


# the terms of the two BCE objectives the seed recipes use, for the plain reference steps below
BCE_TERMS = {
    "bce": SimpleNamespace(d_loss=losses.bce_discriminator_loss, g_loss=losses.nonsaturating_generator_loss),
    "bce-saturating": SimpleNamespace(d_loss=losses.bce_discriminator_loss, g_loss=losses.saturating_generator_loss),
}


def reference_step(g_update, G, D, opt_g, opt_d, x_real, y_real, rng, loss, num_classes, latent_dim):
    """The reference systems' steps, written out plainly (no detach tricks, no requires_grad toggling)."""

    def draw(n):
        z = torch.randn(n, latent_dim, generator=rng)
        y = torch.randint(num_classes, (n,), generator=rng) if num_classes else None
        return z, y

    n = x_real.shape[0]
    if g_update == "simultaneous":
        z, y = draw(n)
        x_fake = G(z, y)
        logits_real, logits_fake = D(x_real, y_real), D(x_fake, y)
        d_loss, g_loss = loss.d_loss(logits_real, logits_fake), loss.g_loss(logits_fake)
        g_grads = torch.autograd.grad(g_loss, list(G.parameters()), retain_graph=True)
        d_grads = torch.autograd.grad(d_loss, list(D.parameters()))
        for p, g in zip(G.parameters(), g_grads):
            p.grad = g
        for p, g in zip(D.parameters(), d_grads):
            p.grad = g
        opt_d.step()
        opt_g.step()
        return
    z, y = draw(n)
    x_fake = G(z, y)
    opt_d.zero_grad()
    # mnist-conv's original: the fake is NOT detached; only D is stepped
    d_loss = loss.d_loss(D(x_real, y_real), D(x_fake if g_update == "fresh-noise" else x_fake.detach(), y))
    d_loss.backward()
    opt_d.step()
    if g_update == "fresh-noise":
        z, y = draw(n)
        x_fake = G(z, y)
    opt_g.zero_grad()
    loss.g_loss(D(x_fake, y)).backward()
    opt_g.step()


@pytest.mark.parametrize(
    "recipe,overrides",
    [
        ("mnist-mlp", []),  # same-fake
        ("mnist-conv", []),  # fresh-noise, BatchNorm in G
        ("mnist-mlp-bn", []),  # simultaneous
        ("mnist-cgan", ["model.g_width=8", "model.d_width=8"]),  # conditional, same-fake
    ],
)
def test_step_matches_reference_update_order(tmp_path, recipe, overrides):
    trainer = make_trainer(tmp_path, recipe, ["train.batch_size=16", *overrides])
    cfg = trainer.cfg
    G, D = copy.deepcopy(trainer.nets.generator_core), copy.deepcopy(trainer.nets.discriminator_core)
    adam = dict(betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr_g, **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d, **adam)
    rng = torch.Generator().manual_seed(0)
    rng.set_state(trainer.noise.rng.get_state())
    x_real, y_real = first_batch(trainer)
    for batch_index in range(2):
        trainer.step(x_real, y_real, batch_index, x_real.shape[0])
        reference_step(
            cfg.train.g_update,
            G,
            D,
            opt_g,
            opt_d,
            x_real,
            y_real,
            rng,
            BCE_TERMS[cfg.loss.name],
            cfg.model.num_classes,
            cfg.model.latent_dim,
        )
    for ours, ref in ((trainer.nets.generator_core, G), (trainer.nets.discriminator_core, D)):
        for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{recipe}: {name} differs")


def test_same_fake_runs_one_generator_forward_per_step(tmp_path):
    calls = {"g": 0}
    trainer = make_trainer(tmp_path, "mnist-mlp")
    trainer.nets.generator_core.register_forward_hook(lambda *a: calls.__setitem__("g", calls["g"] + 1))
    x_real, y_real = first_batch(trainer)
    trainer.step(x_real, y_real, 0, x_real.shape[0])
    assert calls["g"] == 1


def test_d_every_and_g_every_schedule(tmp_path):
    """anime-dcgan's schedule: D on every batch, G on every 5th (1 G step per 5 batches)."""
    trainer = make_trainer(tmp_path, "mnist-conv", ["train.g_every=5", "train.d_every=1", "train.batch_size=8"])
    x_real, y_real = first_batch(trainer)
    changed = []
    for batch_index in range(10):
        g_before = [p.clone() for p in trainer.nets.generator_core.parameters()]
        d_before = [p.clone() for p in trainer.nets.discriminator_core.parameters()]
        stats = trainer.step(x_real, y_real, batch_index, x_real.shape[0])
        g_changed = any(not torch.equal(a, b) for a, b in zip(g_before, trainer.nets.generator_core.parameters()))
        d_changed = any(not torch.equal(a, b) for a, b in zip(d_before, trainer.nets.discriminator_core.parameters()))
        changed.append((g_changed, d_changed, int(stats.totals[N_G].item()), int(stats.totals[N_D].item())))
    assert [c[0] for c in changed] == [i % 5 == 0 for i in range(10)]
    assert all(c[1] for c in changed)
    assert [c[2] for c in changed] == [int(i % 5 == 0) for i in range(10)]  # counted G steps


def test_d_step_leaves_generator_untouched_and_g_step_leaves_discriminator(tmp_path):
    trainer = make_trainer(tmp_path, "mnist-conv", ["train.g_every=2", "train.d_every=2", "train.batch_size=8"])
    x_real, y_real = first_batch(trainer)
    # batch 1: neither; with d_every=2, g_every=2 both happen on batch 0 only
    g_before = [p.clone() for p in trainer.nets.generator_core.parameters()]
    d_before = [p.clone() for p in trainer.nets.discriminator_core.parameters()]
    trainer.step(x_real, y_real, 1, x_real.shape[0])
    assert all(torch.equal(a, b) for a, b in zip(g_before, trainer.nets.generator_core.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(d_before, trainer.nets.discriminator_core.parameters()))
    # a pure G step (d_every=3 skips D on batch 2, g_every=2 steps G) must not move D
    trainer.cfg.train.d_every = 3
    trainer.step(x_real, y_real, 2, x_real.shape[0])
    assert all(torch.equal(a, b) for a, b in zip(d_before, trainer.nets.discriminator_core.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(g_before, trainer.nets.generator_core.parameters()))
    assert all(p.requires_grad for p in trainer.nets.discriminator_core.parameters())


def test_numbered_checkpoints_every_n_epochs_and_only_the_newest_kept(tmp_path):
    overrides = ["train.epochs=6", "train.batch_size=64", "train.checkpoint_every=2", "train.keep_checkpoints=2"]
    result = make_trainer(tmp_path, "digits-mlp", overrides).run()
    kept = sorted(p.name for p in (result.run_dir / "checkpoints").glob("epoch_*.safetensors"))
    assert kept == ["epoch_0004.safetensors", "epoch_0006.safetensors"]  # epoch 2 pruned
    assert (result.run_dir / "checkpoints" / "latest.safetensors").is_file()


def test_short_run_leaves_the_run_directory(tmp_path):
    trainer = make_trainer(tmp_path, "digits-mlp", ["train.epochs=2", "train.batch_size=16", "train.log_every=2"])
    result = trainer.run()
    run = result.run_dir
    for name in (
        "config.json",
        "metrics.jsonl",
        "loss_curves.png",
        "samples/real.png",
        "samples/epoch_0001.png",
        "samples/epoch_0002.png",
        "checkpoints/latest.safetensors",
        "generator.safetensors",
        "discriminator.safetensors",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    for key in ("d_loss", "g_loss", "d_real", "d_fake", "images_per_s", "epoch"):
        assert all(r[key] is not None for r in steps), key
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2


def test_kept_noise_d_steps_score_the_noise_of_the_last_g_step(tmp_path):
    """anime-dcgan's original: one noise tensor that only the G step redraws. D steps 1..5 of g_every=5 all
    score the noise G step 0 drew (the very first D step, before any G step, the initial draw)."""
    trainer = make_trainer(
        tmp_path, "mnist-conv", ["train.g_update=kept-noise", "train.g_every=5", "train.batch_size=8"]
    )
    seen = []  # (phase, z) for every G forward
    trainer.nets.generator_core.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    x_real, y_real = first_batch(trainer)
    draws = torch.Generator().manual_seed(0)
    draws.set_state(trainer.noise.rng.get_state())
    expected_draws = [torch.randn(8, trainer.cfg.model.latent_dim, generator=draws) for _ in range(3)]
    for batch_index in range(7):
        trainer.step(x_real, y_real, batch_index, x_real.shape[0])
    # forwards: D0, G0, D1, D2, D3, D4, D5, G5, D6
    d_inputs = [seen[i] for i in (0, 2, 3, 4, 5, 6, 8)]
    g_inputs = [seen[i] for i in (1, 7)]
    assert torch.equal(d_inputs[0], expected_draws[0])
    assert torch.equal(g_inputs[0], expected_draws[1]) and torch.equal(g_inputs[1], expected_draws[2])
    assert all(torch.equal(z, g_inputs[0]) for z in d_inputs[1:6])
    assert torch.equal(d_inputs[6], g_inputs[1])
    assert len(seen) == 9


def test_kept_noise_resumes_exactly(tmp_path):
    """The kept noise is part of the checkpoint: stopping mid-epoch (step 5 of 8, between two G steps) and
    resuming gives the weights of the straight run."""
    from ganforge.checkpoint import load_tensors

    base = ["train.g_update=kept-noise", "train.g_every=3", "train.batch_size=16", "train.epochs=2"]
    straight = make_trainer(tmp_path / "a", "mnist-conv", base).run()
    stopped = make_trainer(tmp_path / "b", "mnist-conv", [*base, "train.max_steps=5"]).run()
    cfg = make_trainer(tmp_path / "c", "mnist-conv", base).cfg
    checkpoint = stopped.run_dir / "checkpoints" / "latest.safetensors"
    assert "noise.kept_z" in load_tensors(checkpoint)[0]
    Trainer(cfg, DistContext(), stopped.run_dir, resume=checkpoint).run()
    a = load_tensors(straight.run_dir / "checkpoints" / "latest.safetensors")[0]
    b = load_tensors(checkpoint)[0]
    for key in a:
        if key.startswith(("generator.", "discriminator.", "noise.")):
            assert torch.equal(a[key], b[key]), key


def keras_mlp_bn_reference(latent_dim: int = 100):
    """mnist-mlp-bn as the spec writes its Keras original, in plain PyTorch: Keras's LeakyReLU(0.3),
    BatchNormalization(momentum=0.99, epsilon=1e-3), a sigmoid at the end of D."""
    from torch import nn

    def bn(n):
        return nn.BatchNorm1d(n, eps=1e-3, momentum=1 - 0.99)

    generator = nn.Sequential(
        nn.Linear(latent_dim, 256, bias=False), bn(256), nn.LeakyReLU(0.3),
        nn.Linear(256, 512, bias=False), bn(512), nn.LeakyReLU(0.3),
        nn.Linear(512, 784, bias=False), nn.Tanh(),
    )  # fmt: skip
    discriminator = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.LeakyReLU(0.3), nn.Linear(512, 256), nn.LeakyReLU(0.3),
        nn.Linear(256, 1), nn.Sigmoid(),
    )  # fmt: skip
    return generator, discriminator


def test_mnist_mlp_bn_is_the_keras_original(tmp_path):
    """One step on a short (96-image) batch against the spec's step: 256 noise vectors anyway, one forward,
    BinaryCrossentropy(from_logits=True) on D's sigmoid output (the double sigmoid), Adam epsilon 1e-7."""
    import torch.nn.functional as F

    trainer = make_trainer(tmp_path, "mnist-mlp-bn", ["data.max_images=352"])  # 256 + 96
    cfg = trainer.cfg
    assert (cfg.optim.eps, cfg.model.init, cfg.train.full_noise_batch) == (1e-7, "keras", True)
    G, D = keras_mlp_bn_reference()
    ours_g, ours_d = trainer.nets.generator_core, trainer.nets.discriminator_core
    # Glorot-uniform kernels, zero biases: every Dense kernel within sqrt(6 / (fan_in + fan_out))
    for layer in [m for m in (*ours_g.modules(), *ours_d.modules()) if isinstance(m, torch.nn.Linear)]:
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert layer.bias is None or not layer.bias.any()
    G.load_state_dict(ours_g.net.state_dict())
    D.load_state_dict({f"{int(k.split('.')[0]) + 1}.{k.split('.')[1]}": v for k, v in ours_d.net.state_dict().items()})
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, eps=1e-7)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-4, eps=1e-7)
    rng = torch.Generator().manual_seed(0)
    rng.set_state(trainer.noise.rng.get_state())
    batches = list(trainer.loader.epoch(0))
    x_short = batches[1][0]
    assert x_short.shape[0] == 96
    trainer.step(x_short, None, 1, 96)

    z = torch.randn(256, 100, generator=rng)  # a full batch of noise for 96 real images
    x_fake = G(z).view(256, 1, 28, 28)
    out_real, out_fake = D(x_short).squeeze(1), D(x_fake).squeeze(1)  # sigmoid outputs, read as logits below
    bce = F.binary_cross_entropy_with_logits
    d_loss = bce(out_real, torch.ones_like(out_real)) + bce(out_fake, torch.zeros_like(out_fake))
    g_loss = bce(out_fake, torch.ones_like(out_fake))
    g_grads = torch.autograd.grad(g_loss, list(G.parameters()), retain_graph=True)
    d_grads = torch.autograd.grad(d_loss, list(D.parameters()))
    for p, g in (*zip(G.parameters(), g_grads), *zip(D.parameters(), d_grads)):
        p.grad = g
    opt_d.step()
    opt_g.step()
    for a, b in zip(ours_g.net.state_dict().values(), G.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_d.net.state_dict().values(), D.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mnist_mlp_bn_single_sigmoid_switch(tmp_path):
    double = make_trainer(tmp_path / "a", "mnist-mlp-bn")
    single = make_trainer(tmp_path / "b", "mnist-mlp-bn", ["model.d_output_sigmoid=false"])
    x = torch.randn(4, 1, 28, 28)
    logits = single.nets.discriminator_core(x)
    torch.testing.assert_close(double.nets.discriminator_core(x), torch.sigmoid(logits))
    assert set(double.nets.discriminator_core.state_dict()) == set(single.nets.discriminator_core.state_dict())
