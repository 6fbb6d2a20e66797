"""Differentiable augmentation: exact ops on known images, gradients, the generator stream, ADA's controller."""

from __future__ import annotations

import json

import pytest
import torch

from ganforge import augment as A
from ganforge.errors import ConfigError
from ganforge.losses import r1_penalty

PRIMITIVES = {
    "brightness": A.random_brightness,
    "saturation": A.random_saturation,
    "contrast": A.random_contrast,
    "translation": A.random_translation,
    "cutout": A.random_cutout,
}


def images(batch: int = 4, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_registry_names_are_diffaugments():
    assert A.AUGMENTATIONS.names() == ["color", "cutout", "translation"]
    assert A.AUGMENTATIONS.get("color") == (A.random_brightness, A.random_saturation, A.random_contrast)


def test_translate_is_an_exact_zero_filled_shift_on_a_known_image():
    x = torch.arange(1.0, 13.0).view(1, 1, 3, 4)  # rows [1..4], [5..8], [9..12]
    down_one_left_two = A.translate(x, torch.tensor([1]), torch.tensor([-2]))
    expected = torch.tensor([[0.0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0]]).view(1, 1, 3, 4)
    assert torch.equal(down_one_left_two, expected)


def test_translate_matches_a_loop_reference_per_sample():
    x = images(batch=5, channels=2, size=6)
    shift_y = torch.tensor([0, 2, -3, 5, -6])
    shift_x = torch.tensor([1, -1, 0, -5, 6])
    out = A.translate(x, shift_y, shift_x)
    expected = torch.zeros_like(x)
    for b in range(5):
        for i in range(6):
            for j in range(6):
                si, sj = i - shift_y[b].item(), j - shift_x[b].item()
                if 0 <= si < 6 and 0 <= sj < 6:
                    expected[b, :, i, j] = x[b, :, si, sj]
    assert torch.equal(out, expected)
    assert torch.equal(A.translate(x, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)), x)


def test_cut_out_zeroes_a_clipped_rectangle_on_a_known_image():
    x = torch.ones(2, 1, 4, 4)
    out = A.cut_out(x, torch.tensor([1, 3]), torch.tensor([0, 2]), (2, 2), torch.tensor([True, True]))
    # sample 0: rows [0, 2), cols [-1, 1) -> [0, 1); sample 1: rows [2, 4), cols [1, 3)
    expected = torch.tensor(
        [
            [[0.0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
            [[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1]],
        ]
    ).view(2, 1, 4, 4)
    assert torch.equal(out, expected)
    untouched = A.cut_out(x, torch.tensor([1, 3]), torch.tensor([0, 2]), (2, 2), torch.tensor([False, True]))
    assert torch.equal(untouched[0], x[0]) and torch.equal(untouched[1], expected[1])


def test_colour_ops_match_their_formulas():
    x = images(batch=2, channels=3, size=3).double()
    f = torch.tensor([0.3, 1.7], dtype=torch.float64)
    torch.testing.assert_close(A.adjust_brightness(x, f), x + f.view(2, 1, 1, 1))
    channel_mean = x.mean(1, keepdim=True)
    torch.testing.assert_close(A.adjust_saturation(x, f), (x - channel_mean) * f.view(2, 1, 1, 1) + channel_mean)
    image_mean = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(A.adjust_contrast(x, f), (x - image_mean) * f.view(2, 1, 1, 1) + image_mean)


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_random_op_draws_its_documented_stream(name):
    """The parameters are the generator's next draws in the documented order, so a saved state resumes them."""
    x = images(batch=6, size=8)
    apply = torch.tensor([True, False, True, True, False, True])
    out = PRIMITIVES[name](x, apply, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    if name in ("brightness", "saturation", "contrast"):
        u = torch.rand(6, generator=replay)
        params = {"brightness": u - 0.5, "saturation": u * 2, "contrast": u + 0.5}[name]
        fn = {"brightness": A.adjust_brightness, "saturation": A.adjust_saturation, "contrast": A.adjust_contrast}
        expected = torch.where(apply.view(6, 1, 1, 1), fn[name](x, params), x)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    elif name == "translation":
        shift_y = torch.randint(-1, 2, (6,), generator=replay)  # round(8 / 8) = 1
        shift_x = torch.randint(-1, 2, (6,), generator=replay)
        expected = A.translate(x, shift_y * apply, shift_x * apply)
        assert torch.equal(out, expected)
    else:
        centre_y = torch.randint(0, 8, (6,), generator=replay)
        centre_x = torch.randint(0, 8, (6,), generator=replay)
        assert torch.equal(out, A.cut_out(x, centre_y, centre_x, (4, 4), apply))
    # samples not chosen are bit-exact copies
    assert torch.equal(out[~apply], x[~apply])


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_gradients_reach_the_input_through_every_op(name):
    x = images(batch=3, size=8).double().requires_grad_(True)
    weights = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = PRIMITIVES[name](x, torch.ones(3, dtype=torch.bool), torch.Generator().manual_seed(2))
    (out * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: A.adjust_brightness(x, torch.tensor([0.2, -0.4], dtype=x.dtype)),
        lambda x: A.adjust_saturation(x, torch.tensor([0.5, 1.5], dtype=x.dtype)),
        lambda x: A.adjust_contrast(x, torch.tensor([0.7, 1.2], dtype=x.dtype)),
        lambda x: A.translate(x, torch.tensor([1, -2]), torch.tensor([-1, 0])),
        lambda x: A.cut_out(x, torch.tensor([1, 2]), torch.tensor([3, 0]), (2, 3), torch.tensor([True, True])),
    ],
    ids=["brightness", "saturation", "contrast", "translate", "cut_out"],
)
def test_op_gradients_and_second_derivatives_are_right(fn):
    """gradcheck and gradgradcheck against finite differences: D's R1 penalty differentiates through these
    twice (once for grad_x, once more for D's parameters)."""
    x = images(batch=2, channels=2, size=4).double().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_r1_penalty_through_the_augmentation_reaches_ds_parameters(policy):
    torch.manual_seed(0)
    discriminator = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.Linear(4 * 64, 1)
    )
    augmentation = A.Augmentation(policy)
    generator = torch.Generator().manual_seed(0)

    def critic(x, labels):
        return discriminator(augmentation(x, generator, 1.0)).squeeze(1)

    penalty, logits = r1_penalty(critic, images(batch=4, size=8), None)
    penalty.backward()
    assert logits.shape == (4,)
    for name, p in discriminator.named_parameters():
        if name != "3.bias":
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_p_zero_and_an_empty_policy_are_the_identity_and_draw_nothing():
    x = images()
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    assert A.augment(x, generator, 0.0, ("color", "translation", "cutout")) is x
    assert A.Augmentation("")(x, generator, 1.0) is x
    assert not A.Augmentation("")
    assert torch.equal(generator.get_state(), before)


def test_each_sample_is_augmented_with_probability_p():
    """On zero images only brightness (color's first op) moves a sample, and saturation/contrast keep zeros
    zero, so the non-zero samples are exactly those brightness was applied to (a zero shift has probability 0)."""
    x = torch.zeros(4000, 1, 2, 2)
    for p in (1.0, 0.3):
        out = A.augment(x, torch.Generator().manual_seed(0), p, ("color",))
        fraction = (out.flatten(1) != 0).any(1).float().mean().item()
        assert abs(fraction - p) <= 5 * (p * (1 - p) / 4000) ** 0.5


def test_augment_is_reproducible_from_the_generator_state():
    x = images(batch=8, size=16)
    generator = torch.Generator().manual_seed(9)
    first = A.augment(x, generator, 0.7, A.parse_policy("color,translation,cutout"))
    state = generator.get_state()
    second = A.augment(x, generator, 0.7, A.parse_policy("color,translation,cutout"))
    resumed = A.augment(x, torch.Generator().set_state(state), 0.7, A.parse_policy("color,translation,cutout"))
    assert not torch.equal(first, second)  # the stream moved on
    assert torch.equal(second, resumed)  # and a saved state replays it exactly


@pytest.mark.parametrize(
    ("policy", "fragment"), [("color,flip", "unknown augmentation 'flip'"), ("cutout, cutout", "twice")]
)
def test_bad_policies_are_config_errors(policy, fragment):
    with pytest.raises(ConfigError, match=fragment):
        A.parse_policy(policy)


def test_parse_policy_tolerates_spaces_and_empty():
    assert A.parse_policy(" color , cutout ") == ("color", "cutout")
    assert A.parse_policy("") == ()


# ---- ADA's controller ----


def feed(controller: A.AdaptiveAugment, sign: float, steps: int, batch: int = 8) -> list[bool]:
    updates = []
    for _ in range(steps):
        controller.observe(torch.full((batch,), sign * 2.5))
        updates.append(controller.step())
    return updates


def test_controller_raises_p_when_d_is_too_sure_of_the_reals():
    controller = A.AdaptiveAugment(target=0.6, interval=4, speed_images=320)
    updates = feed(controller, +1.0, 8)
    assert updates == [False, False, False, True] * 2  # only every interval-th step
    assert controller.last_rt == 1.0
    assert controller.p == pytest.approx(2 * 32 / 320)  # two windows of 4 x 8 images, speed 320 images per unit p


def test_controller_lowers_p_when_r_t_is_below_target_and_clamps():
    controller = A.AdaptiveAugment(target=0.6, interval=2, speed_images=64, p=0.5)
    feed(controller, -1.0, 2)
    assert controller.last_rt == -1.0 and controller.p == pytest.approx(0.5 - 16 / 64)
    feed(controller, -1.0, 10)
    assert controller.p == 0.0  # clamped below
    feed(controller, +1.0, 40)
    assert controller.p == 1.0  # and above


def test_controller_uses_the_mean_sign_not_the_mean_logit():
    """r_t = mean(sign): three confident reals and one mildly wrong one give 0.5 < 0.6, so p goes down."""
    controller = A.AdaptiveAugment(target=0.6, interval=1, speed_images=100, p=0.5)
    controller.observe(torch.tensor([9.0, 9.0, 9.0, -0.1]))
    controller.step()
    assert controller.last_rt == pytest.approx(0.5) and controller.p == pytest.approx(0.5 - 4 / 100)


def test_controller_reduce_hook_sums_ranks():
    """Under DDP ``reduce`` all-reduces [sign sum, count]: two identical ranks move p twice as far, same r_t."""
    controller = A.AdaptiveAugment(target=0.0, interval=1, speed_images=100)
    controller.observe(torch.tensor([1.0, 1.0, -1.0, 1.0]))
    assert controller.step(reduce=lambda stats: stats * 2)
    assert controller.last_rt == pytest.approx(0.5) and controller.p == pytest.approx(8 / 100)


def test_controller_state_round_trips_through_json_mid_window():
    logits = [torch.randn(8, generator=torch.Generator().manual_seed(i)) + 1.5 for i in range(11)]
    straight = A.AdaptiveAugment(target=0.6, interval=4, speed_images=200)
    for t in logits:
        straight.observe(t)
        straight.step()
    first = A.AdaptiveAugment(target=0.6, interval=4, speed_images=200)
    for t in logits[:6]:  # stop inside the second window
        first.observe(t)
        first.step()
    state = json.loads(json.dumps(first.state_dict()))
    assert state["count"] == 16 and state["steps"] == 6
    resumed = A.AdaptiveAugment(target=0.6, interval=4, speed_images=200)
    resumed.load_state_dict(state)
    for t in logits[6:]:
        resumed.observe(t)
        resumed.step()
    assert resumed.state_dict() == straight.state_dict()
    assert straight.p > 0


def test_controller_rejects_bad_settings():
    with pytest.raises(ValueError, match="target"):
        A.AdaptiveAugment(target=1.0)
    with pytest.raises(ValueError, match="interval"):
        A.AdaptiveAugment(interval=0)


def test_training_with_ada_resumes_exactly_and_logs_p(tmp_path):
    """DiffAugment with ADA inside training: p is logged, and a run stopped mid-epoch and resumed equals the
    straight run (the augmentation's random stream and ADA's state are in the checkpoint)."""
    import json

    from ganforge.checkpoint import load_tensors
    from ganforge.cli import main

    args = ["digits-quick", "--batch-size", "16", "--precision", "fp32", "--set", "data.max_images=64"]
    args += ["--set", "train.progress=false", "--set", "augment.policy=color,translation,cutout"]
    args += ["--set", "augment.adaptive=true", "--set", "augment.interval=1", "--set", "augment.speed_images=64"]
    args += ["--set", "train.log_every=1", "--epochs", "2"]
    args += ["--set", "model.g_width=32", "--set", "model.d_width=32"]  # a D that overfits these 64 images fast
    assert main(["train", *args, "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *args, "--out", str(tmp_path / "resumed"), "--max-steps", "3"]) == 0
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--set", "train.max_steps=0"]) == 0
    a = load_tensors(tmp_path / "straight" / "checkpoints" / "latest.safetensors")
    b = load_tensors(tmp_path / "resumed" / "checkpoints" / "latest.safetensors")
    for key in a[0]:
        if key.startswith(("generator.", "discriminator.", "rng.augment")):
            assert torch.equal(a[0][key], b[0][key]), key
    assert a[1]["augment"] == b[1]["augment"] and a[1]["augment"]["ada"]["p"] > 0
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    p = [r["augment_p"] for r in records if r["kind"] == "step"]
    assert len(p) == 8 and p[-1] > 0


def test_an_unknown_augmentation_is_one_line_before_any_data_is_loaded(tmp_path, capsys, monkeypatch):
    import ganforge.training.loop as loop
    from ganforge.cli import main

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the config was checked")

    monkeypatch.setattr(loop, "make_loader", no_data)
    args = ["train", "digits-mlp", "--set", "augment.policy=colour,translation", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown augmentation 'colour'" in err[0] and "color" in err[0], err
    assert not (tmp_path / "run").exists()
