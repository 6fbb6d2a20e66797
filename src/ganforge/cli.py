"""``ganforge`` command line: a thin shell over the library.

User errors (``GanforgeError``) print one line ``ganforge: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
from pathlib import Path

from ganforge.cliargs import NON_NEGATIVE, POSITIVE, SEED, Parser, one_line_warnings, real, whole
from ganforge.errors import GanforgeError

EXAMPLES = {
    "main": """\
        examples:
          ganforge recipes
          ganforge train digits-quick                    # no download needed
          ganforge train mnist-mlp --data-root ../shared/data/mnist --split test --epochs 5
          ganforge generate runs/mnist-mlp-*/ --num 64 --out samples.png
          ganforge evaluate runs/mnist-mlp-*/ --json scores.json
          ganforge export runs/mnist-mlp-*/ --format onnx --out generator.onnx
        """,
    "train": """\
        examples:
          ganforge train mnist-cgan --data-root ../shared/data/mnist --split test --epochs 2
          ganforge train anime-dcgan --data-root ../shared/data/anime-faces --set optim.lr_g=1e-4
          ganforge train --resume runs/mnist-cgan-20261122-101500 --epochs 20
        """,
    "generate": """\
        examples:
          ganforge generate RUN_DIR --num 64 --out grid.png
          ganforge generate RUN_DIR --per-class --out classes.png
          ganforge generate RUN_DIR --top-k 64 --candidates 512 --out best.npz
          ganforge generate RUN_DIR --interpolate 16 --out walk.gif
        """,
}


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ganforge",
        description="Train, evaluate and sample GANs.",
        epilog=textwrap.dedent(EXAMPLES["main"]),
        formatter_class=_formatter,
    )
    from ganforge import __version__

    parser.add_argument("--version", action="version", version=f"ganforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    recipes = sub.add_parser(
        "recipes", help="list the recipes", formatter_class=_formatter, epilog="example:\n  ganforge recipes"
    )
    recipes.set_defaults(func=cmd_recipes)

    train = sub.add_parser(
        "train",
        help="train a recipe (or resume a run)",
        formatter_class=_formatter,
        epilog=textwrap.dedent(EXAMPLES["train"]),
    )
    train.add_argument("recipe", nargs="?", help="recipe name (see `ganforge recipes`); omit with --resume")
    train.add_argument("--epochs", type=NON_NEGATIVE, help="train.epochs")
    train.add_argument("--max-steps", type=NON_NEGATIVE, help="train.max_steps: stop after N batches (0: no limit)")
    train.add_argument(
        "--max-time", type=real(0.0), help="train.max_time: stop after N minutes (checkpoint saved; 0: no limit)"
    )
    train.add_argument("--data-root", help="data.root: where the dataset is (or is downloaded to)")
    train.add_argument("--split", help="data.split: train or test")
    train.add_argument("--batch-size", type=POSITIVE, help="train.batch_size")
    train.add_argument("--seed", type=SEED, help="train.seed, in [0, 2**63)")
    train.add_argument("--device", help="train.device: auto, cpu, cuda, cuda:N, mps")
    train.add_argument("--precision", help="train.precision: fp32 or bf16")
    train.add_argument("--compile", action="store_true", default=None, help="train.compile: torch.compile")
    train.add_argument(
        "--init-g", help="train.init_g: start G from these weights (checkpoint, export or original .pth)"
    )
    train.add_argument("--init-d", help="train.init_d: start D from these weights")
    train.add_argument("--out", type=Path, help="run directory (default runs/<recipe>-<time>)")
    train.add_argument("--resume", type=Path, help="continue a run: its directory or a checkpoint file")
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config field, e.g. --set optim.lr_g=2e-4 (repeatable)",
    )
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.set_defaults(func=cmd_train)

    gen = sub.add_parser(
        "generate",
        help="sample images from a trained run or checkpoint",
        formatter_class=_formatter,
        epilog=textwrap.dedent(EXAMPLES["generate"]),
    )
    gen.add_argument("checkpoint", type=Path, help="run directory or .safetensors checkpoint")
    gen.add_argument(
        "--num", type=POSITIVE, help="number of images (default: the recipe's sample.num; with --per-class: per row)"
    )
    gen.add_argument(
        "--out",
        default="samples.png",
        help="FILE.png (one grid), DIR/ (one PNG per image), FILE.npz, or FILE.gif (--interpolate)",
    )
    gen.add_argument("--class", dest="class_index", type=NON_NEGATIVE, help="conditional models: this class only")
    gen.add_argument("--per-class", action="store_true", help="grid with one row per class, same noise per row")
    gen.add_argument(
        "--top-k",
        type=NON_NEGATIVE,
        help="keep the K samples the discriminator scores highest (0: off, as sample.top_k)",
    )
    gen.add_argument("--candidates", type=POSITIVE, help="samples drawn for --top-k (default: the recipe's)")
    gen.add_argument("--interpolate", type=whole(2), metavar="STEPS", help="latent walk with STEPS frames per leg")
    gen.add_argument("--nrow", type=POSITIVE, help="images per grid row")
    gen.add_argument("--seed", type=SEED, default=0, help="noise seed, in [0, 2**63)")
    gen.add_argument("--batch-size", type=POSITIVE, default=256, help="images per generator forward")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--no-ema", action="store_true", help="use the raw generator even if an EMA was kept")
    gen.add_argument(
        "--truncation",
        type=real(0.0, strict=True),
        metavar="T",
        help="truncated noise: redraw every latent value with |z| > T (fewer odd samples, less variety)",
    )
    gen.set_defaults(func=cmd_generate)

    from ganforge.export.commands import add_commands as add_export_commands
    from ganforge.metrics.commands import add_commands

    add_commands(sub)
    from ganforge.report.commands import add_commands as add_report_commands

    add_report_commands(sub)
    add_export_commands(sub)
    return parser


def cmd_recipes(args: argparse.Namespace) -> int:
    from ganforge.recipes import RECIPES, get_recipe

    width = max(len(n) for n in RECIPES.names())
    for name in RECIPES.names():
        print(f"{name:<{width}}  {get_recipe(name).description}")
    return 0


CLI_FIELDS = {
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "max_time": "train.max_time",
    "data_root": "data.root",
    "split": "data.split",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "compile": "train.compile",
    "init_g": "train.init_g",
    "init_d": "train.init_d",
}


def cmd_train(args: argparse.Namespace) -> int:
    from ganforge.config import apply_overrides, to_json
    from ganforge.errors import ConfigError
    from ganforge.recipes import get_recipe
    from ganforge.training.loop import train
    from ganforge.training.state import load_resume_config

    # named flags are shorthands for config fields, applied before the --set list
    overrides = [f"{key}={getattr(args, name)}" for name, key in CLI_FIELDS.items() if getattr(args, name) is not None]
    overrides += args.overrides
    checkpoint = None
    if args.resume is not None:
        if args.overwrite:
            raise ConfigError("--resume continues a run; --overwrite would delete it: use one of them")
        checkpoint, cfg = load_resume_config(args.resume)
        if args.recipe and args.recipe != cfg.recipe:
            raise ConfigError(f"{args.resume} is a {cfg.recipe} run, not {args.recipe}; drop the recipe name")
    elif args.recipe is None:
        raise ConfigError("name a recipe (see `ganforge recipes`) or pass --resume RUN_DIR")
    else:
        cfg = get_recipe(args.recipe)
    apply_overrides(cfg, overrides)
    if args.print_config:
        print(to_json(cfg))
        return 0
    result = train(
        cfg,
        out=args.out,
        resume=checkpoint,
        overwrite=args.overwrite,
        resume_overrides=overrides if checkpoint else None,
    )
    if result.signal is not None:  # the shell's codes for a process ended by SIGINT / SIGTERM
        return 130 if result.signal == signal.SIGINT else 143
    return 2 if result.alarm else 0  # train.on_divergence/on_collapse=stop ended a failed run


def cmd_generate(args: argparse.Namespace) -> int:
    from ganforge.checkpoint import check_output_space
    from ganforge.errors import ConfigError
    from ganforge.sampling import load_generator

    generator = load_generator(args.checkpoint, args.device, ema=not args.no_ema)
    cfg = generator.config
    out = Path(args.out)
    as_dir = args.out.endswith(("/", "\\")) or out.is_dir()
    if not as_dir and out.suffix.lower() not in (".png", ".npz", ".gif"):
        raise ConfigError(f"--out {out}: use FILE.png, FILE.npz, FILE.gif or a directory ending in /")
    if args.truncation is not None and (args.interpolate is not None or args.per_class):
        raise ConfigError("--truncation applies to plain and --top-k sampling, not to --interpolate/--per-class")
    num = args.num if args.num is not None else cfg.sample.num
    # --top-k 0 is "off", like sample.top_k=0; the recipe's top-k applies only when --num is not given
    top_k = args.top_k if args.top_k is not None else (cfg.sample.top_k if args.num is None else 0)
    per_row = args.num or 10
    if args.interpolate is not None:
        count = 2 * args.interpolate - 1
    elif args.per_class:
        count = generator.num_classes * per_row
    else:
        count = top_k or num
    image_bytes = generator.channels * generator.resolution**2
    # before any sampling: the output folder must take about the raw size of the images
    check_output_space(out if as_dir else out.parent, count * image_bytes, "--out folder")
    images, labels, scores, nrow = _generate_images(generator, args, num, top_k, per_row)
    _write_generated(out, as_dir, images, labels, scores, nrow)
    return 0


def _generate_images(generator, args: argparse.Namespace, num: int, top_k: int, per_row: int) -> tuple:
    """The images ``generate`` asked for: an interpolation, a per-class grid, the top-k or plain samples."""
    from ganforge.errors import ConfigError
    from ganforge.sampling import generate_top_k, interpolation_noise, per_class_grid_inputs

    scores = None
    labels = None if args.class_index is None else generator.labels_for(num, args.class_index)
    nrow = args.nrow
    if args.interpolate is not None:
        z = interpolation_noise(args.interpolate, generator.latent_dim, args.seed, points=3)
        labels = generator.labels_for(z.shape[0], args.class_index or 0) if generator.conditional else None
        images = generator.images(z, labels, args.batch_size)
        nrow = nrow or args.interpolate
    elif args.per_class:
        if not generator.conditional:
            raise ConfigError("--per-class needs a conditional model; this one is unconditional")
        z, labels = per_class_grid_inputs(generator.num_classes, per_row, generator.latent_dim, args.seed)
        images = generator.images(z, labels, args.batch_size)
        nrow = per_row
    elif top_k > 0:
        candidates = args.candidates or max(generator.config.sample.candidates, top_k)
        if labels is not None:  # one label per candidate
            labels = generator.labels_for(candidates, args.class_index)
        images, labels, scores = generate_top_k(
            generator, top_k, candidates, labels, args.seed, args.batch_size, truncation=args.truncation
        )
    else:
        images, labels = generator.sample_with_labels(num, labels, args.seed, args.truncation, args.batch_size)
    return images, labels, scores, nrow


def _write_generated(out: Path, as_dir: bool, images, labels, scores, nrow: int | None) -> None:
    """Write what ``generate`` made in the form ``--out`` names: a folder, an .npz, a .gif or a grid .png."""
    from ganforge.sampling import save_gif, save_grid, save_images, save_npz

    if as_dir:
        paths = save_images(images, out, labels)
        print(f"wrote {len(paths)} images to {out}")
    elif out.suffix.lower() == ".npz":
        written = save_npz(out, images, labels, scores)
        print(f"wrote {images.shape[0]} images to {out} ({', '.join(written)})")
    elif out.suffix.lower() == ".gif":
        save_gif(images, out)
        print(f"wrote a {images.shape[0]}-frame animation to {out}")
    else:
        save_grid(images, out, nrow=nrow or 8)
        print(f"wrote a grid of {images.shape[0]} images to {out}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with one_line_warnings():
            return int(args.func(args) or 0)
    except GanforgeError as exc:
        print(f"ganforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ganforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
