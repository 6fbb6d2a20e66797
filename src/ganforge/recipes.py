"""Named recipes: each is a complete, typed ``RunConfig``.

The five seed recipes reproduce the reference systems of
``docs/seed-systems.md`` (networks, optimiser, batch size, data scaling, update
order); their values must not drift. ``get_recipe`` returns a fresh copy so
callers can override fields freely.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from ganforge.config import (
    AugmentConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
    validate,
)
from ganforge.registry import Registry

RECIPES: Registry[Callable[[], RunConfig]] = Registry("recipe")


def get_recipe(name: str) -> RunConfig:
    cfg = RECIPES.get(name)()
    return validate(copy.deepcopy(cfg))


@RECIPES.register("mnist-mlp")
def mnist_mlp() -> RunConfig:
    return RunConfig(
        recipe="mnist-mlp",
        description="Fully connected GAN on MNIST 28x28 (BCE, Adam 1e-4, batch 64, 60 epochs).",
        data=DataConfig(dataset="mnist", mean=[0.5], std=[0.5]),
        model=ModelConfig(arch="mlp", channels=1, resolution=28),
        loss=LossConfig(name="bce"),
        optim=OptimConfig(lr_g=1e-4, lr_d=1e-4),
        # G step re-scores the same fake batch with the updated D (no second G forward).
        train=TrainConfig(epochs=60, batch_size=64, g_update="same-fake", log_every=100),
    )


@RECIPES.register("mnist-conv")
def mnist_conv() -> RunConfig:
    return RunConfig(
        recipe="mnist-conv",
        description=(
            "Convolutional GAN on MNIST 28x28 (batch 16, Adam 3e-4, 50 epochs). Faithful to the original's flaw: "
            "data normalised with mean 0.1307/std 0.3081 while G ends in Tanh, so fakes cannot reach the real "
            "range (about -0.42..2.82)."
        ),
        data=DataConfig(dataset="mnist", mean=[0.1307], std=[0.3081]),
        model=ModelConfig(arch="conv", channels=1, resolution=28),
        loss=LossConfig(name="bce"),
        optim=OptimConfig(lr_g=3e-4, lr_d=3e-4),
        # The original does not detach the fake in the D step, but only D is stepped and G's gradients are
        # zeroed before the G step, so detaching changes no number and saves a backward pass through G.
        train=TrainConfig(epochs=50, batch_size=16, g_update="fresh-noise", log_every=100),
    )


@RECIPES.register("mnist-cgan")
def mnist_cgan() -> RunConfig:
    return RunConfig(
        recipe="mnist-cgan",
        description="Class-conditional DCGAN on MNIST resized to 64x64 (one-hot labels, batch 128, 10 epochs).",
        data=DataConfig(dataset="mnist", mean=[0.5], std=[0.5]),
        model=ModelConfig(arch="cdcgan", channels=1, resolution=64, num_classes=10, init="dcgan"),
        loss=LossConfig(name="bce"),
        optim=OptimConfig(lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999),
        train=TrainConfig(epochs=10, batch_size=128, g_update="same-fake", log_every=5, grid_size=100, grid_columns=10),
    )


@RECIPES.register("anime-dcgan")
def anime_dcgan() -> RunConfig:
    return RunConfig(
        recipe="anime-dcgan",
        description=(
            "DCGAN on 96x96 RGB faces from any image folder (batch 256, D every batch, G every 5th, 400 epochs; "
            "generate keeps the 64 of 512 samples D scores highest). As the original, one noise tensor is "
            "redrawn only by the G step, so the D steps between two G steps score the same fakes (until this "
            "version D drew fresh noise every step)."
        ),
        data=DataConfig(dataset="image-folder", root="data/faces", mean=[0.5], std=[0.5]),
        model=ModelConfig(arch="dcgan96", channels=3, resolution=96, g_width=64, d_width=64),
        loss=LossConfig(name="bce"),
        optim=OptimConfig(lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999),
        train=TrainConfig(
            epochs=400,
            batch_size=256,
            drop_last=True,
            g_update="kept-noise",
            d_every=1,
            g_every=5,
            sample_every=5,
            checkpoint_every=5,
            log_every=10,
        ),
        sample=SampleConfig(num=64, top_k=64, candidates=512, noise_mean=0.0, noise_std=1.0),
    )


@RECIPES.register("mnist-mlp-bn")
def mnist_mlp_bn() -> RunConfig:
    return RunConfig(
        recipe="mnist-mlp-bn",
        description=(
            "MLP GAN with BatchNorm in G, losses written out (batch 256, Adam 1e-4, 100 epochs), with the Keras "
            "original's defaults (LeakyReLU 0.3, BatchNorm momentum 0.99 / epsilon 1e-3, Glorot-uniform kernels, "
            "Adam epsilon 1e-7, 256 noise vectors also for the short last batch). Faithful to its flaw: D ends in "
            "a sigmoid and the loss applies one again, so D's effective probability stays in (0.5, 0.731); "
            "--set model.d_output_sigmoid=false is the single-sigmoid form. --set loss.name=bce-saturating "
            "selects the minimax G loss. (Until this version: PyTorch's defaults and a single sigmoid.)"
        ),
        data=DataConfig(dataset="mnist", mean=[0.5], std=[0.5]),
        model=ModelConfig(arch="mlp-bn", channels=1, resolution=28, init="keras", d_output_sigmoid=True),
        loss=LossConfig(name="bce"),
        optim=OptimConfig(lr_g=1e-4, lr_d=1e-4, eps=1e-7),
        # D and G gradients both come from one forward pass, then both are stepped.
        train=TrainConfig(epochs=100, batch_size=256, g_update="simultaneous", full_noise_batch=True, log_every=20),
    )


@RECIPES.register("digits-mlp")
def digits_mlp() -> RunConfig:
    cfg = mnist_mlp()
    cfg.recipe = "digits-mlp"
    cfg.description = (
        "Quick start with no download: the mnist-mlp networks on scikit-learn's bundled 8x8 digits, "
        "upscaled to 28x28 (a minute on a laptop CPU)."
    )
    cfg.data = DataConfig(dataset="digits", mean=[0.5], std=[0.5])
    cfg.optim = OptimConfig(lr_g=2e-4, lr_d=2e-4)
    cfg.train.epochs = 40
    cfg.train.log_every = 20
    cfg.eval = EvalConfig(every=0)
    return cfg


@RECIPES.register("mnist-quick")
def mnist_quick() -> RunConfig:
    return RunConfig(
        recipe="mnist-quick",
        description=(
            "The best MNIST digits a 2-core laptop CPU makes in 5 minutes (its default length): a small "
            "class-conditional DCGAN (projection D), batch 64, Adam 1e-3 (0.5, 0.999), EMA of G (0.995), bf16 "
            "where the CPU computes it natively (precision auto)."
        ),
        data=DataConfig(dataset="mnist", mean=[0.5], std=[0.5]),
        model=ModelConfig(
            arch="dcgan28", channels=1, resolution=28, latent_dim=64, num_classes=10, g_width=32, d_width=32
        ),
        loss=LossConfig(name="bce"),
        # measured (docs/performance.md, docs/quality.md): in 3 minutes 5e-4 beat 2e-4 by far (FD 3.8 vs 11.3), batch
        # 64 beat 128, EMA 0.995 beat 0.999 (too long a memory for a few thousand steps) and no EMA; in 5 minutes on
        # two threads (Zen 3, fp32) 1e-3 beat 5e-4 (FD 1.48 and 1.34 against 2.22 and 2.25) and 2e-3 (1.96)
        optim=OptimConfig(lr_g=1e-3, lr_d=1e-3, beta1=0.5, beta2=0.999),
        train=TrainConfig(
            epochs=200,
            max_time=5.0,
            batch_size=64,
            g_update="same-fake",
            ema_decay=0.995,
            # auto: bf16 where the CPU computes it natively (on a Zen 5 with AVX512_BF16: 1.3x the steps of fp32
            # in 5 minutes and a lower FD, 0.95 vs 1.40), fp32 where it would be emulated (~13x slower on AVX2)
            precision="auto",
            log_every=50,
            sample_every=5,
            checkpoint_every=50,
            grid_size=100,
            grid_columns=10,
        ),
    )


@RECIPES.register("digits-quick")
def digits_quick() -> RunConfig:
    cfg = mnist_quick()
    cfg.recipe = "digits-quick"
    cfg.description = (
        "Quick start with no download: the mnist-quick network on scikit-learn's bundled 8x8 digits "
        "(upscaled to 28x28) at half its width (16); recognisable digits of every class in about a minute on a "
        "laptop CPU."
    )
    cfg.data = DataConfig(dataset="digits", mean=[0.5], std=[0.5])
    # Width 16, not mnist-quick's 32: on a Zen 3 (AVX2, fp32) width 32 took 151 s for the 2,250 steps and, cut at
    # the same 65 s, reached FD 22.9; width 16 did all 2,250 in 65 s and reached FD 8.5 (width 32 in full: 6.8).
    cfg.model.g_width = 16
    cfg.model.d_width = 16
    cfg.train.batch_size = 32  # 1,438 images: more, smaller steps per epoch
    cfg.optim.lr_g = cfg.optim.lr_d = 5e-4  # what its timings and FD (README, docs/performance.md) were measured at
    cfg.train.epochs = 50
    cfg.train.max_time = 0.0
    cfg.train.sample_every = 10
    cfg.train.checkpoint_every = 60
    cfg.train.log_every = 20
    cfg.eval = EvalConfig(every=0)
    return cfg


@RECIPES.register("stacked-mnist-dcgan")
def stacked_mnist_dcgan() -> RunConfig:
    return RunConfig(
        recipe="stacked-mnist-dcgan",
        description=(
            "Mode-collapse baseline on Stacked MNIST (1,000 modes): the dcgan28 network, unconditional, 3 channels "
            "(D has 1/20 of G's parameters), BCE, Adam 2e-4 (0.5, 0.999), batch 64, 50 epochs; tracks `modes` at "
            "10,000 samples every 5 epochs. Published in the VEEGAN setting (their figures, not ganforge's): "
            "DCGAN 99 modes, KL 3.40 (VEEGAN, Srivastava et al. 2017); PacGAN2 all 1,000, KL 0.06 (Lin et al. 2018)."
        ),
        data=DataConfig(dataset="stacked-mnist", mean=[0.5], std=[0.5]),
        model=ModelConfig(arch="dcgan28", channels=3, resolution=28, latent_dim=100, g_width=32, d_width=32),
        loss=LossConfig(name="bce"),
        optim=OptimConfig(lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999),
        train=TrainConfig(
            epochs=50,  # PacGAN's code for the VEEGAN setting: 50 epochs (of 128,000 stacks; ours has 60,000)
            batch_size=64,
            g_update="same-fake",
            log_every=100,
            sample_every=5,
            checkpoint_every=10,
            grid_size=100,
            grid_columns=10,
        ),
        # 10,000 samples: modes are read at 10 per mode. KID and precision/recall are then left out of the
        # evaluations (pairwise, N^2); the per-channel FD, coverage and classifier score stay.
        eval=EvalConfig(every=5, metric="modes", num_samples=10_000),
    )


@RECIPES.register("stacked-mnist-modern")
def stacked_mnist_modern() -> RunConfig:
    cfg = stacked_mnist_dcgan()
    cfg.recipe = "stacked-mnist-modern"
    cfg.description = (
        "The modern objective on Stacked MNIST: the baseline's dcgan28 G with a D twice as wide that scores pairs "
        "of images (PacGAN2), R3GAN's relativistic pairing loss with R1 + R2 (gamma 0.1, lazily every 16 D steps), "
        "batch 128, Adam 8e-4 (0.5, 0.99), an EMA of G (0.995) with ramp-up; tracks `modes` at 10,000 samples like "
        "stacked-mnist-dcgan."
    )
    cfg.model.d_width = 64
    # PacGAN2: D scores pairs of images. On a 2-core Zen 3 at 15 minutes: 940 modes, KL 0.49, FD 182 (3,798 steps:
    # a packed D costs less per image) against 885, 0.64, 197 (2,758 steps) without; at 30 minutes 997, 0.245, 95.6
    # against 988, 0.302, 110.7 (one run each, docs/quality.md)
    cfg.model.d_pack = 2
    # batch 128 at lr 4e-4 and the penalties every 16 D steps: each measured better than batch 64 / every 4 in
    # 7-minute runs on a 2-core Zen 3 (batch 64: 874 modes, KL 0.67; batch 128: 976, 0.37; batch 256: 603,
    # 1.58; every 16 at batch 64: 943, 0.40). At 30 minutes the two settings end close: 988 modes, KL 0.30 against
    # the first version's 983, 0.29 (docs/quality.md)
    cfg.train.batch_size = 128
    cfg.loss = LossConfig(name="rpgan", r1_gamma=0.1, r2_gamma=0.1, reg_every=16)
    # 8e-4 and an EMA of 0.995: on a 2-core Zen 3 (AVX2) at 30 minutes 999 modes, KL 0.144 / 0.140, FD 47.3 / 47.4
    # in two runs (~10,000 steps) against 4e-4 and 0.999's 997, 0.245, 95.6 (7,370 steps, a slower host hour),
    # so part of the gain is steps; the KL target of 0.1 is still missed. On one trajectory at step
    # 10,462 the 0.999 average gave KL 0.172, 0.995 0.143 and the raw G 0.138: the long average lags a G that
    # is still improving. At equal steps (~7,400) the two rates gave the same KL; 8e-4 a lower FD (docs/quality.md)
    cfg.optim = OptimConfig(lr_g=8e-4, lr_d=8e-4, beta1=0.5, beta2=0.99)
    cfg.train.ema_decay = 0.995
    cfg.train.ema_rampup = True
    return cfg


def _modern_small_data(recipe: str, resolution: int) -> RunConfig:
    """What the small-data literature agrees on, on the residual nets: hinge loss with a spectrally
    normalised D (SNGAN), DiffAugment on everything D sees (its 100-shot results), an EMA of G with a
    ramp-up. At 10 CPU minutes FD 62.9 against anime-dcgan's 158.7 (docs/quality.md)."""
    return RunConfig(
        recipe=recipe,
        data=DataConfig(dataset="image-folder", root="data/faces", mean=[0.5], std=[0.5], hflip=True),
        # width 16: 1.3 GFLOP per image for a D and a G step at 64 px, against 5.1 at width 32 (FlopCounterMode),
        # so a laptop CPU does a useful number of steps; raise model.g_width/d_width on a GPU
        model=ModelConfig(arch="resnet", channels=3, resolution=resolution, g_width=16, d_width=16, spectral_norm=True),
        loss=LossConfig(name="hinge"),
        optim=OptimConfig(lr_g=2e-4, lr_d=2e-4, beta1=0.0, beta2=0.9),
        train=TrainConfig(
            epochs=400,
            batch_size=32,
            drop_last=True,
            g_update="fresh-noise",
            ema_decay=0.999,
            ema_rampup=True,
            sample_every=5,
            checkpoint_every=25,
            keep_checkpoints=3,
            log_every=20,
        ),
        augment=AugmentConfig(policy="color,translation,cutout", p=1.0),
    )


@RECIPES.register("anime-modern")
def anime_modern() -> RunConfig:
    cfg = _modern_small_data("anime-modern", 64)
    cfg.description = (
        "Modern small-data GAN for the anime faces at 64x64: residual G and spectrally normalised residual D, "
        "hinge loss, DiffAugment (colour, translation, cutout), EMA of G with ramp-up, batch 32."
    )
    return cfg


@RECIPES.register("anime-modern-hair")
def anime_modern_hair() -> RunConfig:
    cfg = _modern_small_data("anime-modern-hair", 64)
    cfg.description = (
        "anime-modern conditioned on hair colour from tags.csv (the 2,038 tagged faces): class-conditional "
        "BatchNorm in G, projection D; one grid row per colour."
    )
    cfg.data.labels, cfg.data.label_csv, cfg.data.label_column = "csv", "tags.csv", "hair"
    cfg.model.num_classes = 11  # the hair colours tags.csv names
    return cfg


@RECIPES.register("folder-modern")
def folder_modern() -> RunConfig:
    cfg = _modern_small_data("folder-modern", 64)
    cfg.description = (
        "anime-modern for any folder of images (1k-100k): --data-root DIR, --set model.resolution=32..256."
    )
    cfg.data.root = "data/images"
    cfg.train.epochs = 200
    return cfg
