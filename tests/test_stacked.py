"""Stacked MNIST: the dataset, the per-channel classifier and the ``modes`` metric.

The data is a synthetic MNIST written as IDX files (ten classes a small CNN tells apart in a few
seconds, each image unique), so nothing here needs the shared data or a download; the mode
histograms of the stacks built from it are known exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from ganforge.config import DataConfig, RunConfig
from ganforge.data import load_dataset, write_idx
from ganforge.data.core import cache_path
from ganforge.data.stacked import NUM_MODES, mode_digits, mode_index, stack_indices
from ganforge.errors import ConfigError, DataError
from ganforge.metrics import METRICS, QualityTracker, evaluate
from ganforge.metrics import evaluator as ev
from ganforge.metrics import tracker as tracker_mod
from ganforge.metrics.extractors import ExtractorRequest, PerChannelClassifier, build_extractor
from ganforge.metrics.functional import mode_statistics

PER_CLASS = 40


def synthetic_digits(per_class: int = PER_CLASS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class k = a bright 7x7 square in cell k of a 4x4 grid of 7 px cells, over faint noise (unique images)."""
    rng = np.random.default_rng(seed)
    n = 10 * per_class
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for k in range(10):
        r, c = divmod(k, 4)
        images[labels == k, 7 * r : 7 * r + 7, 7 * c : 7 * c + 7] = 250
    return images, labels


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic MNIST test split on disk, a private cache, and its evaluator trained once."""
    root = tmp_path_factory.mktemp("mnist")
    images, labels = synthetic_digits()
    (root / "MNIST" / "raw").mkdir(parents=True)
    write_idx(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", images)
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        digits_cfg = DataConfig(dataset="mnist", root=str(root), split="test", download=False)
        digits = load_dataset(digits_cfg, 1, 28)
        info = ev.ensure_evaluator(digits, epochs=12, log=lambda m: None)
        stacked_cfg = DataConfig(dataset="stacked-mnist", root=str(root), split="test", download=False)
        stacked_cfg.stacked_size = 2000
        yield {"root": root, "images": images, "labels": labels, "digits": digits, "info": info, "cfg": stacked_cfg}


def stacks_of(world, modes: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, 28, 28] stacks showing ``modes`` [N], each channel the first image of its digit."""
    first = {d: int(np.flatnonzero(world["labels"] == d)[0]) for d in range(10)}
    planes = torch.from_numpy(world["images"])  # [M, 28, 28]
    digits = mode_digits(modes)  # [N, 3]
    index = torch.tensor([[first[int(d)] for d in row] for row in digits])  # [N, 3]
    return planes[index]  # [N, 3, 28, 28]


# --------------------------------------------------------------------------- drawing the stacks


def test_mode_index_is_100r_10g_b_and_inverts():
    digits = torch.tensor([[1, 2, 3], [3, 2, 1], [0, 0, 0], [9, 9, 9]])
    assert mode_index(digits).tolist() == [123, 321, 0, 999]
    every = torch.arange(NUM_MODES)
    assert torch.equal(mode_index(mode_digits(every)), every)


@pytest.mark.parametrize("size", [3000, 2345])
def test_stacks_are_stratified_and_show_their_modes(size):
    labels = torch.arange(700) % 10
    index, modes = stack_indices(labels, size, seed=5)
    counts = torch.bincount(modes, minlength=NUM_MODES)
    full, rest = divmod(size, NUM_MODES)
    assert counts.min() >= full and counts.max() <= full + 1 and int((counts > full).sum()) == rest
    assert torch.equal(labels[index], mode_digits(modes))  # channel c shows digit c of the mode
    again = stack_indices(labels, size, seed=5)
    assert torch.equal(again[0], index) and torch.equal(again[1], modes)
    assert not torch.equal(stack_indices(labels, size, seed=6)[0], index)


def test_a_split_without_some_digit_is_refused():
    with pytest.raises(DataError, match=r"none of \[7\]"):
        stack_indices(torch.tensor([d for d in range(10) if d != 7] * 3), 100, seed=0)


# --------------------------------------------------------------------------- the dataset


def test_dataset_is_cached_and_keyed_by_seed_and_size(world):
    cfg = world["cfg"]
    data = load_dataset(cfg, 3, 28)
    assert data.name == "stacked-mnist/test" and data.images.shape == (2000, 3, 28, 28)
    assert data.class_names[123] == "123" and data.num_classes == NUM_MODES
    assert torch.bincount(data.labels, minlength=NUM_MODES).tolist() == [2] * NUM_MODES
    # Every channel is an MNIST image of the mode's digit (the synthetic images are unique).
    source = {world["images"][i].tobytes(): int(world["labels"][i]) for i in range(len(world["labels"]))}
    shown = torch.tensor([[source[data.images[i, c].numpy().tobytes()] for c in range(3)] for i in range(50)])
    assert torch.equal(shown, mode_digits(data.labels[:50]))
    assert cache_path(data.fingerprint).is_file()
    assert torch.equal(load_dataset(cfg, 3, 28).images, data.images)  # from the cache
    other_seed = dataclasses.replace(cfg, stacked_seed=1)
    other_size = dataclasses.replace(cfg, stacked_size=1000)
    prints = {
        data.fingerprint,
        load_dataset(other_seed, 3, 28).fingerprint,
        load_dataset(other_size, 3, 28).fingerprint,
    }
    assert len(prints) == 3
    # max_images keeps the first N stacks of the same draw
    first = load_dataset(dataclasses.replace(cfg, max_images=10), 3, 28)
    assert torch.equal(first.images, data.images[:10]) and torch.equal(first.labels, data.labels[:10])


def test_dataset_needs_three_channels(world):
    with pytest.raises(ConfigError, match="model.channels=3"):
        load_dataset(world["cfg"], 1, 28)


def test_evaluation_shape_is_native():
    assert ev.real_shape_for_evaluation("stacked-mnist", 3, 28) == (3, 28)


# --------------------------------------------------------------------------- the metric's maths


def _kl_loop(modes: list[int], k: int = NUM_MODES) -> float:
    counts = Counter(modes)
    n = len(modes)
    return sum(c / n * math.log((c / n) / (1 / k)) for c in counts.values())


def test_mode_statistics_closed_forms():
    assert mode_statistics(torch.zeros(50, dtype=torch.long), NUM_MODES) == (1, pytest.approx(math.log(1000)))
    modes, kl = mode_statistics(torch.arange(NUM_MODES), NUM_MODES)
    assert modes == 1000 and kl == pytest.approx(0.0, abs=1e-12)
    for m in (2, 37, 500):  # uniform over m modes: log(1000 / m)
        modes, kl = mode_statistics(torch.arange(m).repeat(3), NUM_MODES)
        assert modes == m and kl == pytest.approx(math.log(1000 / m))


def test_mode_statistics_on_label_triples_match_a_plain_loop():
    g = torch.Generator().manual_seed(3)
    digits = torch.randint(0, 4, (900, 3), generator=g)  # 64 modes reachable, unevenly hit
    digits[:300] = torch.tensor([7, 1, 2])  # one mode a third of the time
    triples = [tuple(row) for row in digits.tolist()]
    modes = [100 * r + 10 * g_ + b for r, g_, b in triples]
    covered, kl = mode_statistics(mode_index(digits), NUM_MODES)
    assert covered == len(set(triples))
    assert kl == pytest.approx(_kl_loop(modes), rel=1e-12)
    # probabilities give the same answer through their argmax
    probs = torch.nn.functional.one_hot(mode_index(digits), NUM_MODES).double() * 0.9 + 0.1 / NUM_MODES
    assert mode_statistics(probs) == (covered, pytest.approx(kl, rel=1e-12))


def test_modes_metric_is_registered_and_ranks_higher_as_better():
    spec = METRICS.get("modes")
    assert spec.primary == "modes" and not spec.lower_is_better and spec.needs_probs


# --------------------------------------------------------------------------- the per-channel classifier


@pytest.fixture(scope="module")
def extractor(world):
    real = load_dataset(world["cfg"], 3, 28)
    built = build_extractor("auto", ExtractorRequest(real=real, data_cfg=world["cfg"], log=lambda m: None))
    return real, built


def test_the_evaluator_is_exact_on_these_digits(world):
    digits = world["digits"]
    preds = ev.predict(ev.load_net(world["info"]), digits.images, world["info"].input_size, 1, torch.device("cpu"))
    assert torch.equal(preds, digits.labels)  # so the histograms below are known exactly


def test_auto_picks_the_per_channel_classifier(world, extractor):
    real, built = extractor
    assert isinstance(built, PerChannelClassifier) and built.name == "mnist-classifier-per-channel"
    assert built.identity.endswith(world["info"].weights_sha256) and built.class_names == real.class_names


def test_per_channel_probabilities_are_the_product_in_mode_order(world, extractor):
    _, built = extractor
    modes = torch.tensor([123, 321, 7, 700, 999, 0])
    feats = built.extract(stacks_of(world, modes))
    assert feats.features.shape == (6, 3 * 128) and feats.probs.shape == (6, NUM_MODES)
    assert torch.equal(feats.probs.argmax(1), modes)
    grey = ev.load_net(world["info"])
    with torch.no_grad():
        x = ev.prepare_images(stacks_of(world, modes)[:, 1:2], world["info"].input_size, 1)  # the G channel
        p_green = grey(x)[1].softmax(1)  # [6, 10]
    marginal = feats.probs.view(6, 10, 10, 10).sum(dim=(1, 3))  # [6, 10]: summed over R and B
    torch.testing.assert_close(marginal, p_green, atol=1e-5, rtol=1e-4)


def test_modes_metric_on_stacks_of_known_proportions(world, extractor):
    real, built = extractor
    chosen = torch.tensor([5, 50, 500, 123, 321, 999, 0, 77, 770, 707])
    counts = torch.arange(1, 11)  # mode chosen[i] appears i + 1 times
    modes = chosen.repeat_interleave(counts)  # [55]
    out = evaluate(real, stacks_of(world, modes), None, "modes", built, real_index=torch.arange(2000))
    key = "_mnist-classifier-per-channel"
    assert out["modes" + key] == 10
    assert out["modes_kl" + key] == pytest.approx(_kl_loop(modes.tolist()), rel=1e-9)
    # the real side: the stratified 2,000 stacks hold every mode exactly twice
    assert out["modes_real" + key] == NUM_MODES and out["modes_kl_real" + key] == pytest.approx(0.0, abs=1e-9)


def test_too_few_samples_for_the_modes_warns(world, extractor):
    real, built = extractor
    with pytest.warns(UserWarning, match="10000 samples"):
        evaluate(real, stacks_of(world, torch.arange(30)), None, "modes", built)


def test_tracker_tracks_modes_and_skips_pairwise_metrics_at_many_samples(world, monkeypatch):
    cfg = RunConfig()
    cfg.data = world["cfg"]
    cfg.model.channels, cfg.eval.metric, cfg.eval.num_samples = 3, "modes", 40
    real = load_dataset(cfg.data, 3, 28)
    monkeypatch.setattr(tracker_mod, "PAIRWISE_ALONGSIDE_LIMIT", 39)
    tracker = QualityTracker(cfg, real, torch.device("cpu"), log=lambda m: None)
    assert tracker.primary == "modes_mnist-classifier-per-channel" and not tracker.lower_is_better
    assert tracker.metrics[0] == "modes" and "kid" not in tracker.metrics and "fd" in tracker.metrics
    with pytest.warns(UserWarning):
        results = tracker(lambda n: (stacks_of(world, torch.full((n,), 42)), None))
    assert results[tracker.primary] == 1 and results["modes_kl_mnist-classifier-per-channel"] == pytest.approx(
        math.log(1000)
    )
    monkeypatch.setattr(tracker_mod, "PAIRWISE_ALONGSIDE_LIMIT", 40)
    assert "kid" in QualityTracker(cfg, real, torch.device("cpu"), log=lambda m: None).metrics


def test_cli_real_vs_real_and_train_evaluator(world, tmp_path, capsys):
    from ganforge.cli import main

    common = ["--dataset", "stacked-mnist", "--data-root", str(world["root"]), "--split", "test", "--device", "cpu"]
    size = ["--set", "data.stacked_size=2000", "--set", "data.download=false"]
    out = tmp_path / "rr.json"
    code = main(
        ["evaluate", "--real-vs-real", *common, *size, "--num", "1000", "--metrics", "modes,fd", "--json", str(out)]
    )
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert results["modes_real_mnist-classifier-per-channel"] >= 600  # 1,000 stacks over 1,000 modes: ~632 expected
    assert "modes_mnist-classifier-per-channel" in capsys.readouterr().out
    # train-evaluator stacked-mnist finds (or trains) the evaluator of the MNIST it draws from
    assert main(["train-evaluator", "stacked-mnist", "--data-root", str(world["root"]), "--split", "test"]) == 0
    assert world["info"].path in capsys.readouterr().out


def test_recipe_is_the_unconditional_three_channel_baseline():
    from ganforge.models import build_models
    from ganforge.recipes import get_recipe

    cfg = get_recipe("stacked-mnist-dcgan")
    assert cfg.data.dataset == "stacked-mnist" and cfg.model.num_classes == 0 and cfg.model.channels == 3
    assert cfg.eval.metric == "modes" and cfg.eval.num_samples >= 10_000
    generator, discriminator = build_models(cfg.model)
    g_params = sum(p.numel() for p in generator.parameters())
    d_params = sum(p.numel() for p in discriminator.parameters())
    assert d_params * 10 < g_params  # a small D, as its description says
    assert generator(torch.zeros(2, cfg.model.latent_dim)).shape == (2, 3, 28, 28)


def test_data_config_validates_the_stack_fields():
    from ganforge.config import apply_overrides

    with pytest.raises(ConfigError, match="stacked_size"):
        apply_overrides(RunConfig(), ["data.stacked_size=0"])
    with pytest.raises(ConfigError, match="stacked_seed"):
        apply_overrides(RunConfig(), ["data.stacked_seed=-1"])
