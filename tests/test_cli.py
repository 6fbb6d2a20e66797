"""The command line as a user runs it: every recipe trains, every output form of generate works,
and every bad input ends with a one-line message and exit code 2 (never a traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.cli import main
from ganforge.recipes import RECIPES


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_shows_runnable_examples(capsys):
    for command in ([], ["train"], ["generate"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "example" in capsys.readouterr().out


def test_recipes_lists_every_recipe(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    for name in RECIPES.names():
        assert name in out


@pytest.mark.parametrize("recipe", RECIPES.names())
def test_every_recipe_trains_and_leaves_its_run_directory(trained_runs, recipe):
    run = trained_runs[recipe]
    for name in (
        "config.json",
        "metrics.jsonl",
        "loss_curves.png",
        "samples/real.png",
        "samples/epoch_0001.png",
        "checkpoints/latest.safetensors",
        "generator.safetensors",
        "discriminator.safetensors",
    ):
        assert (run / name).is_file(), f"{recipe}: {name} missing"
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == recipe
    grid = Image.open(run / "samples" / "epoch_0001.png")
    res = config["model"]["resolution"]
    columns = config["train"]["grid_columns"]
    rows = config["model"]["num_classes"] or config["train"]["grid_size"] // columns
    # make_grid: 2-pixel padding around every tile
    assert grid.size == (columns * (res + 2) + 2, rows * (res + 2) + 2)


@pytest.mark.parametrize("recipe", RECIPES.names())
def test_generate_every_output_form(trained_runs, recipe, tmp_path, capsys):
    run = trained_runs[recipe]
    config = json.loads((run / "config.json").read_text())
    channels, res = config["model"]["channels"], config["model"]["resolution"]
    conditional = config["model"]["num_classes"] > 0

    assert run_cli(capsys, "generate", run, "--num", 6, "--out", tmp_path / "grid.png")[0] == 0
    assert Image.open(tmp_path / "grid.png").size[0] > res
    assert run_cli(capsys, "generate", run, "--num", 3, "--out", f"{tmp_path / 'each'}/")[0] == 0
    files = sorted((tmp_path / "each").glob("*.png"))
    assert len(files) == 3 and Image.open(files[0]).size == (res, res)
    assert run_cli(capsys, "generate", run, "--num", 5, "--out", tmp_path / "s.npz")[0] == 0
    data = np.load(tmp_path / "s.npz")
    assert data["images"].shape == (5, channels, res, res) and data["images"].dtype == np.uint8
    assert ("labels" in data) == conditional
    if conditional:
        assert data["labels"].dtype == np.int64
        assert run_cli(capsys, "generate", run, "--class", 3, "--num", 4, "--out", tmp_path / "c.npz")[0] == 0
        assert (np.load(tmp_path / "c.npz")["labels"] == 3).all()
        assert run_cli(capsys, "generate", run, "--per-class", "--num", 4, "--out", tmp_path / "pc.png")[0] == 0
        classes = config["model"]["num_classes"]
        assert Image.open(tmp_path / "pc.png").size == (4 * (res + 2) + 2, classes * (res + 2) + 2)
    assert run_cli(capsys, "generate", run, "--interpolate", 4, "--out", tmp_path / "walk.gif")[0] == 0
    assert Image.open(tmp_path / "walk.gif").n_frames == 7  # two legs of 4 steps sharing their joint
    assert run_cli(capsys, "generate", run, "--interpolate", 5, "--out", tmp_path / "walk.png")[0] == 0
    assert Image.open(tmp_path / "walk.png").size[0] == 5 * (res + 2) + 2  # a strip of 5 per row
    code, _, err = run_cli(capsys, "generate", run, "--top-k", 3, "--candidates", 10, "--out", tmp_path / "top.npz")
    if config["model"]["d_pack"] > 1:  # a packed D scores pairs, not images: refused in one line
        assert code == 2 and "has a packed discriminator (model.d_pack=2)" in err
        assert not (tmp_path / "top.npz").exists()
        return
    assert code == 0
    top = np.load(tmp_path / "top.npz")
    assert top["images"].shape[0] == 3 and list(top["scores"]) == sorted(top["scores"], reverse=True)


def test_top_k_keeps_the_highest_discriminator_scores(trained_runs):
    from ganforge.sampling import discriminator_scores, generate_images, generate_top_k, load_gan

    gan = load_gan(trained_runs["anime-dcgan"])
    kept, _, kept_scores = generate_top_k(gan, k=4, candidates=12, seed=5)
    every, labels = generate_images(gan, 12, seed=5)
    all_scores = discriminator_scores(gan, every, labels)
    best = torch.argsort(all_scores, descending=True)[:4]
    assert torch.equal(kept, every[best])
    torch.testing.assert_close(kept_scores, all_scores[best])


def test_generate_is_reproducible_by_seed(trained_runs, tmp_path, capsys):
    run = trained_runs["mnist-mlp"]
    for name in ("a", "b"):
        run_cli(capsys, "generate", run, "--num", 4, "--seed", 7, "--out", tmp_path / f"{name}.npz")
    assert (np.load(tmp_path / "a.npz")["images"] == np.load(tmp_path / "b.npz")["images"]).all()


# --- bad input: one line, naming the problem and the fix, exit code 2 ----------------------------------------


def assert_user_error(capsys, args, *fragments):
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ganforge: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_unknown_recipe(capsys):
    assert_user_error(capsys, ["train", "mnist-mpl"], "unknown recipe 'mnist-mpl'", "mnist-mlp")


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("optim.learning_rate=1", "unknown config key"),
        ("optim.lr_g=-1", "must be > 0"),
        ("train.batch_size=0", "must be > 0"),
        ("train.epochs=ten", "expected a value of type int"),
    ],
)
def test_bad_set_values(capsys, override, fragment):
    assert_user_error(capsys, ["train", "mnist-mlp", "--set", override], fragment)


def test_missing_data_folder(capsys, tmp_path):
    assert_user_error(capsys, ["train", "anime-dcgan", "--data-root", tmp_path / "nowhere"], "nowhere", "--data-root")


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(capsys, ["train", "anime-dcgan", "--data-root", tmp_path / "empty"], "empty")


def test_folder_of_only_corrupt_files(capsys, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg at all")
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    assert_user_error(capsys, ["train", "anime-dcgan", "--data-root", folder], str(folder), "can be read")


def test_mixed_sizes_and_modes_train(capsys, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, (size, mode) in enumerate([((120, 96), "RGB"), ((64, 80), "L"), ((200, 200), "RGBA"), ((96, 96), "P")] * 2):
        array = rng.integers(0, 255, size=(size[1], size[0], 4 if mode == "RGBA" else 3), dtype=np.uint8)
        image = Image.fromarray(array[..., : 4 if mode == "RGBA" else 3])
        image = image.convert(mode)
        image.save(folder / f"{i}.png")
    code, _, err = run_cli(
        capsys,
        "train",
        "anime-dcgan",
        "--data-root",
        folder,
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--out",
        tmp_path / "run",
        "--set",
        "train.progress=false",
    )
    assert code == 0, err


def test_existing_run_directory_is_never_overwritten(capsys, trained_runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_runs["mnist-mlp"], run)
    before = (run / "metrics.jsonl").read_text()
    assert_user_error(capsys, ["train", "mnist-mlp", "--out", run], "already exists", "--resume", "--overwrite")
    assert (run / "metrics.jsonl").read_text() == before


def test_unwritable_output_path(capsys, tmp_path, trained_runs):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_user_error(capsys, ["train", "mnist-mlp", "--out", blocker / "run"], "cannot write", "--out")
    assert_user_error(capsys, ["generate", trained_runs["mnist-mlp"], "--out", blocker / "x.png"], "cannot write")


def test_resume_of_a_run_without_checkpoint(capsys, tmp_path):
    (tmp_path / "half").mkdir()
    assert_user_error(capsys, ["train", "--resume", tmp_path / "half"], "cannot resume", "latest.safetensors")


@pytest.mark.parametrize("damage", ["truncated", "not-a-checkpoint", "newer-format", "other-architecture"])
def test_bad_checkpoints(capsys, tmp_path, trained_runs, damage):
    from safetensors.torch import save_file

    from ganforge.checkpoint import FORMAT

    source = trained_runs["mnist-mlp"] / "checkpoints" / "latest.safetensors"
    target = tmp_path / "ckpt.safetensors"
    if damage == "truncated":
        target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        fragment = "truncated"
    elif damage == "not-a-checkpoint":
        target.write_text("just some text")
        fragment = "not a checkpoint"
    elif damage == "newer-format":
        save_file({"w": torch.zeros(1)}, target, metadata={"format": FORMAT, "format_version": "42", "meta": "{}"})
        fragment = "newer than this ganforge"
    else:
        from ganforge.checkpoint import load_tensors, save_tensors

        tensors, meta, kind = load_tensors(source)
        meta["config"]["model"]["arch"] = "mlp-bn"  # claims an architecture its weights do not fit
        save_tensors(target, tensors, meta, kind)
        fragment = "another architecture"
    assert_user_error(capsys, ["generate", target, "--out", tmp_path / "x.png"], fragment)
    if damage != "other-architecture":
        assert_user_error(capsys, ["train", "--resume", target], fragment)
