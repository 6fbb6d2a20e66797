"""``ganforge export``: the command-line shell over ``ganforge.export.export_model`` (imports nothing heavy)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

EXAMPLES = """\
    examples:
      ganforge export runs/quickstart --format onnx --out digits.onnx           # uint8 images, EMA weights
      ganforge export runs/quickstart --format onnx --raw --out digits-raw.onnx # G's float output in [-1, 1]
      ganforge export runs/quickstart --format torchscript --out digits.pt --card
      ganforge export runs/mnist-cgan --format reference --out G.pth            # the original script's keys
      ganforge export runs/mnist-cgan --format reference --which d --out D.pth
    """


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a trained generator (or discriminator) as ONNX, TorchScript or the original script's .pth",
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=32),
        epilog=textwrap.dedent(EXAMPLES),
    )
    parser.add_argument("checkpoint", type=Path, help="run directory or .safetensors checkpoint")
    parser.add_argument(
        "--format",
        choices=("onnx", "torchscript", "reference"),
        help="default: from --out's suffix (.onnx, .pt, .pth)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the file to write (FILE.json, the card, beside it)")
    parser.add_argument("--which", choices=("g", "d"), default="g", help="g: the generator (default), d: discriminator")
    parser.add_argument("--raw", action="store_true", help="onnx/torchscript: float in/output, no uint8 conversion")
    parser.add_argument("--no-ema", action="store_true", help="the raw generator even if the run kept an EMA")
    parser.add_argument("--card", action="store_true", help="also write a short README.md beside the export")
    parser.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ganforge.export.pipeline import export_model, infer_format

    fmt = args.format or infer_format(args.out)
    result = export_model(args.checkpoint, args.out, fmt, args.which, args.raw, ema=not args.no_ema, readme=args.card)
    export = result.card["export"]
    size = f"{export['bytes'] / 1e6:.1f} MB" if export["bytes"] >= 1e5 else f"{export['bytes'] / 1e3:.1f} kB"
    what = f"{fmt}, {export['network']}, {export['weights']} weights, {size}"
    print(f"wrote {result.path} ({what}, sha256 {result.sha256[:16]})")
    print(f"model card: {result.card_path}" + (f" and {result.readme_path}" if result.readme_path else ""))
    return 0
