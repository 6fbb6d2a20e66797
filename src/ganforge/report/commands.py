"""CLI sub-commands ``report``, ``compare`` and ``runs`` (registered by ``ganforge.cli``)."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

REPORT_EXAMPLES = """\
    examples:
      ganforge report runs/digits-quick-20261122-101500            # writes RUN/report.html
      ganforge report RUN --out ~/Desktop/run.html                  # a self-contained file to send
      ganforge report RUN --no-embed                                # link the PNGs instead of embedding them

    The page needs no server and no network: open it from disk. A run still training works too.
    """

COMPARE_EXAMPLES = """\
    examples:
      ganforge compare runs/a runs/b --out compare.html
      ganforge compare runs/mnist-* --out all.html
    """

RUNS_EXAMPLES = """\
    examples:
      ganforge runs                 # the runs under runs/
      ganforge runs /data/gan-runs --json
    """


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _embed_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="embed the sample grids as thumbnails (default) or, with --no-embed, link the run's PNG files",
    )


def add_commands(subparsers: Any) -> None:
    """Add ``report``, ``compare`` and ``runs`` to the main parser's sub-parsers."""
    report = subparsers.add_parser(
        "report", help="a self-contained HTML report of a run (charts, sample timeline, metrics)",
        formatter_class=_formatter, epilog=textwrap.dedent(REPORT_EXAMPLES),
    )  # fmt: skip
    report.add_argument("run", type=Path, help="run directory")
    report.add_argument("--out", type=Path, help="the HTML file (default RUN/report.html)")
    _embed_flag(report)
    report.set_defaults(func=cmd_report)

    compare = subparsers.add_parser(
        "compare", help="several runs in one HTML page: curves overlaid, grids side by side",
        formatter_class=_formatter, epilog=textwrap.dedent(COMPARE_EXAMPLES),
    )  # fmt: skip
    compare.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="two or more run directories")
    compare.add_argument("--out", type=Path, default=Path("compare.html"), help="the HTML file (default compare.html)")
    _embed_flag(compare)
    compare.set_defaults(func=cmd_compare)

    runs = subparsers.add_parser(
        "runs", help="a table of the runs under a folder (default runs/)",
        formatter_class=_formatter, epilog=textwrap.dedent(RUNS_EXAMPLES),
    )  # fmt: skip
    runs.add_argument("root", type=Path, nargs="?", default=Path("runs"), metavar="DIR", help="default runs/")
    runs.add_argument("--json", action="store_true", help="print the rows as JSON")
    runs.set_defaults(func=cmd_runs)


def cmd_report(args: argparse.Namespace) -> int:
    from ganforge.report import write_report

    out = write_report(args.run, args.out, embed=args.embed)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ganforge.report import write_compare

    out = write_compare(args.runs, args.out, embed=args.embed)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from ganforge.report.runs import format_table, list_runs

    rows = list_runs(args.root)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
