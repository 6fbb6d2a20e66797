"""Recipes, overrides and their errors."""

import json

import pytest

from ganforge.config import RunConfig, apply_overrides, from_json, to_json
from ganforge.errors import ConfigError
from ganforge.recipes import RECIPES, get_recipe


@pytest.mark.parametrize("name", RECIPES.names())
def test_recipe_round_trips_through_json(name):
    cfg = get_recipe(name)
    assert cfg.recipe == name and cfg.description
    again = from_json(to_json(cfg))
    assert again == cfg


def test_seed_recipes_match_the_spec():
    mlp = get_recipe("mnist-mlp")
    assert (mlp.train.batch_size, mlp.optim.lr_g, mlp.optim.lr_d, mlp.train.epochs) == (64, 1e-4, 1e-4, 60)
    assert mlp.train.g_update == "same-fake" and mlp.data.mean == [0.5] and mlp.data.std == [0.5]
    conv = get_recipe("mnist-conv")
    assert (conv.train.batch_size, conv.optim.lr_g, conv.train.epochs) == (16, 3e-4, 50)
    assert conv.data.mean == [0.1307] and conv.data.std == [0.3081] and conv.train.g_update == "fresh-noise"
    cgan = get_recipe("mnist-cgan")
    assert (cgan.train.batch_size, cgan.model.resolution, cgan.model.num_classes) == (128, 64, 10)
    assert (cgan.optim.beta1, cgan.optim.beta2, cgan.model.init) == (0.5, 0.999, "dcgan")
    anime = get_recipe("anime-dcgan")
    assert (anime.train.batch_size, anime.train.d_every, anime.train.g_every, anime.train.epochs) == (256, 1, 5, 400)
    assert anime.train.drop_last and anime.sample.top_k == 64 and anime.sample.candidates == 512
    assert anime.train.sample_every == 5 and anime.train.checkpoint_every == 5
    bn = get_recipe("mnist-mlp-bn")
    assert (bn.train.batch_size, bn.optim.lr_g, bn.train.epochs, bn.train.g_update) == (256, 1e-4, 100, "simultaneous")


def test_overrides_convert_by_field_type():
    cfg = get_recipe("mnist-mlp")
    changed = apply_overrides(
        cfg, ["optim.lr_g=2e-4", "train.epochs=3", "train.drop_last=true", "data.mean=0.1,", "loss.name=bce"]
    )
    assert changed == ["optim.lr_g", "train.epochs", "train.drop_last", "data.mean", "loss.name"]
    assert cfg.optim.lr_g == 2e-4 and cfg.train.epochs == 3 and cfg.train.drop_last is True
    assert cfg.data.mean == [0.1]


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lr=1", "unknown config key 'optim.lr'"),
        ("nosection.x=1", "unknown config section"),
        ("epochs=3", "use section.field"),
        ("train.epochs=three", "expected a value of type int"),
        ("train.drop_last=maybe", "expected a value of type bool"),
        ("optim.lr_g=-1e-4", "optim.lr_g=-0.0001 must be > 0"),
        ("train.batch_size=0", "train.batch_size=0 must be > 0"),
        ("train.g_update=sometimes", "is not one of"),
        ("data.std=0", "must be > 0"),
        ("train.epochs", "expected key=value"),
        ("model.d_pack=0", "model.d_pack=0 must be > 0"),
        ("model.d_pack=3", "model.d_pack=3 needs a batch size divisible by it, not 64"),
    ],
)
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        apply_overrides(get_recipe("mnist-mlp"), [override])


def test_a_packed_d_is_refused_on_a_conditional_model():
    with pytest.raises(ConfigError, match="model.d_pack=2 packs unlabelled images: it needs model.num_classes=0"):
        apply_overrides(get_recipe("mnist-cgan"), ["model.d_pack=2"])


def test_from_dict_rejects_unknown_keys_and_wrong_types():
    raw = json.loads(to_json(RunConfig()))
    raw["train"]["warp_speed"] = 9
    with pytest.raises(ConfigError, match="warp_speed"):
        from_json(json.dumps(raw))
    raw = json.loads(to_json(RunConfig()))
    raw["train"]["epochs"] = "ten"
    with pytest.raises(ConfigError, match="train.epochs"):
        from_json(json.dumps(raw))


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'mnist-mpl'; known: .*mnist-mlp"):
        get_recipe("mnist-mpl")


def test_configs_saved_before_the_augment_section_still_load():
    """Runs and checkpoints written before augment / model.spectral_norm / train.freeze_d_layers existed
    hold no such keys: they load with the defaults, which are off."""
    raw = json.loads(to_json(get_recipe("anime-dcgan")))
    del raw["augment"], raw["model"]["spectral_norm"], raw["train"]["freeze_d_layers"]
    cfg = from_json(json.dumps(raw))
    assert cfg == get_recipe("anime-dcgan")
    assert cfg.augment.policy == "" and not cfg.model.spectral_norm and cfg.train.freeze_d_layers == 0


def test_augment_overrides_convert_and_validate():
    cfg = get_recipe("mnist-mlp")
    apply_overrides(cfg, ["augment.policy=color,cutout", "augment.adaptive=on", "augment.speed_images=1000"])
    assert (cfg.augment.policy, cfg.augment.adaptive, cfg.augment.speed_images) == ("color,cutout", True, 1000)
    for bad, message in [
        ("augment.p=1.5", r"augment\.p=1\.5 must be in \[0, 1\]"),
        ("augment.target=1", r"augment\.target=1\.0 must be in \(-1, 1\)"),
        ("augment.interval=0", "augment.interval=0 must be > 0"),
        ("train.freeze_d_layers=-1", "train.freeze_d_layers=-1 must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            apply_overrides(get_recipe("mnist-mlp"), [bad])
