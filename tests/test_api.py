"""The Python API: ``ganforge.load_generator(path).sample(...)`` draws exactly what ``ganforge generate`` does,
from a run directory, a checkpoint or the generator export, with the EMA weights by default."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ganforge
from ganforge.checkpoint import load_tensors
from ganforge.cli import main
from ganforge.errors import CheckpointError, ConfigError, GanforgeError
from ganforge.recipes import RECIPES


@pytest.mark.parametrize("recipe", RECIPES.names())
def test_sample_equals_generate_command(trained_runs, recipe, tmp_path, capsys):
    run = trained_runs[recipe]
    assert main(["generate", str(run), "--out", str(tmp_path / "x.npz"), "--seed", "11", "--num", "6"]) == 0
    capsys.readouterr()
    saved = np.load(tmp_path / "x.npz")
    generator = ganforge.load_generator(run)
    images, labels = generator.sample_with_labels(6, seed=11)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (6, generator.channels, *[generator.resolution] * 2)
    assert np.array_equal(generator.sample(6, seed=11).numpy(), saved["images"])
    assert np.array_equal(images.numpy(), saved["images"])
    if generator.num_classes:
        assert np.array_equal(labels.numpy(), saved["labels"])
    else:
        assert labels is None and "labels" not in saved


def test_sizes_come_from_the_run_config(trained_runs):
    for recipe in ("mnist-cgan", "anime-dcgan", "digits-quick"):
        generator = ganforge.load_generator(trained_runs[recipe])
        model = generator.config.model
        assert (generator.num_classes, generator.resolution, generator.latent_dim, generator.channels) == (
            model.num_classes,
            model.resolution,
            model.latent_dim,
            model.channels,
        )
        assert not generator.network.training  # eval mode: BatchNorm uses its running statistics


def test_a_run_directory_a_checkpoint_and_the_export_give_the_same_images(trained_runs):
    run = trained_runs["mnist-quick"]  # keeps an EMA of G
    draws = [
        ganforge.load_generator(path).sample(5, seed=3)
        for path in (run, run / "checkpoints" / "latest.safetensors", run / "generator.safetensors")
    ]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_ema_weights_by_default_and_the_raw_generator_on_request(trained_runs):
    run = trained_runs["mnist-quick"]
    tensors, _, _ = load_tensors(run / "checkpoints" / "latest.safetensors")
    ema, raw = ganforge.load_generator(run), ganforge.load_generator(run, ema=False)
    assert (ema.weights, raw.weights) == ("ema", "generator")
    for key, value in ema.network.state_dict().items():
        assert torch.equal(value, tensors[f"ema.{key}"])
    for key, value in raw.network.state_dict().items():
        assert torch.equal(value, tensors[f"generator.{key}"])
    assert not torch.equal(ema.sample(4, seed=0), raw.sample(4, seed=0))
    # a run without an EMA: the raw G either way
    plain = trained_runs["mnist-mlp"]
    assert ganforge.load_generator(plain).weights == "generator"


def test_labels_pick_the_classes(trained_runs):
    generator = ganforge.load_generator(trained_runs["mnist-cgan"])
    z = generator.noise(4, seed=2)
    with torch.no_grad():
        direct = generator.to_uint8(generator.network(z, torch.full((4,), 7)))
    assert torch.equal(generator.sample(4, labels=7, seed=2), direct)
    assert torch.equal(generator.sample(4, labels=[7, 7, 7, 7], seed=2), direct)
    images, labels = generator.sample_with_labels(4, labels=torch.tensor([0, 1, 2, 3]), seed=2)
    assert labels.tolist() == [0, 1, 2, 3]
    for bad, fragment in ((10, "class must be in 0..9"), ([1, 2], "got 2 labels for 4")):
        with pytest.raises(ConfigError, match=fragment):
            generator.sample(4, labels=bad)
    with pytest.raises(ConfigError, match="unconditional"):
        ganforge.load_generator(trained_runs["mnist-mlp"]).sample(2, labels=1)


def test_truncation_redraws_only_the_values_outside(trained_runs):
    generator = ganforge.load_generator(trained_runs["mnist-mlp"])
    plain = generator.noise(4000, seed=5)  # [4000, 100]
    truncated = generator.noise(4000, seed=5, truncation=1.0)
    assert truncated.abs().max() <= 1.0
    inside = plain.abs() <= 1.0
    assert torch.equal(truncated[inside], plain[inside])
    # second moment of the standard normal truncated to [-t, t]: 1 - 2 t phi(t) / (2 Phi(t) - 1)
    t = 1.0
    phi, mass = math.exp(-t * t / 2) / math.sqrt(2 * math.pi), math.erf(t / math.sqrt(2))
    expected = 1 - 2 * t * phi / mass
    assert abs(truncated.pow(2).mean().item() - expected) < 0.005  # 400k values: standard error ~0.0005
    assert not torch.equal(generator.sample(8, seed=5, truncation=0.5), generator.sample(8, seed=5))
    with pytest.raises(ConfigError, match="truncation"):
        generator.sample(2, truncation=0)


def test_no_seed_follows_torch_global_rng(trained_runs):
    generator = ganforge.load_generator(trained_runs["mnist-mlp"])
    torch.manual_seed(123)
    first = generator.sample(3)
    torch.manual_seed(123)
    assert torch.equal(first, generator.sample(3))
    assert not torch.equal(first, generator.sample(3))


def test_to_pil(trained_runs):
    gray = ganforge.load_generator(trained_runs["digits-quick"])
    images = gray.sample(3, seed=0)
    pil = gray.to_pil(images)
    assert len(pil) == 3 and pil[0].mode == "L" and pil[0].size == (28, 28)
    assert np.array_equal(np.asarray(pil[1]), images[1, 0].numpy())
    rgb = ganforge.load_generator(trained_runs["anime-dcgan"]).to_pil(2, seed=1)
    assert rgb[0].mode == "RGB" and rgb[0].size == (96, 96) and isinstance(rgb[0], Image.Image)


def test_errors_are_one_line_ganforge_errors(tmp_path, trained_runs):
    with pytest.raises(CheckpointError) as missing:
        ganforge.load_generator(tmp_path / "nowhere")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as junk:
        ganforge.load_generator(tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError) as zero:
        ganforge.load_generator(trained_runs["mnist-mlp"]).sample(0)
    for error in (missing, junk, zero):
        assert isinstance(error.value, GanforgeError) and "\n" not in str(error.value)
    assert ganforge.GanforgeError is GanforgeError


def test_importing_ganforge_stays_light():
    code = (
        "import sys, ganforge\n"
        "assert 'torch' not in sys.modules, 'import ganforge pulled in torch'\n"
        "load = ganforge.load_generator\n"
        "assert load.__module__ == 'ganforge.sampling'\n"
        "import torch; assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
