"""The `tlkit` command line: argparse subcommands that call the stages.

The only module that reads argv, prints user errors and chooses the exit code. Each
subcommand is a `cmd_*` function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from rich.table import Table

from tlkit import __version__
from tlkit.errors import TlkitError
from tlkit.runtime import console, out, progress, relpath, set_quiet, warn

LIST_LIMIT = 10  # problem files named on screen before "... and N more"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default that says something, and keeps the examples' line breaks."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("-q", "--quiet", action="store_true", help="no progress bars or chatter")


def _subparser(subparsers, name: str, summary: str, description: str, example: str):
    """A subcommand whose --help shows its defaults and an example."""
    return subparsers.add_parser(
        name, help=summary, description=description, epilog=f"example:\n  {example}",
        formatter_class=_HelpFormatter, parents=[_COMMON],
    )


def _list_paths(title: str, items: list, root: Path | None = None) -> None:
    if not items:
        return
    warn(f"{title}: {len(items)}")
    for item in items[:LIST_LIMIT]:
        path, why = item if isinstance(item, tuple) else (item, "")
        shown = path.relative_to(root) if root else path
        console.print(f"  {shown}" + (f"  [dim]{why}[/]" if why else ""))
    if len(items) > LIST_LIMIT:
        console.print(f"  ... and {len(items) - LIST_LIMIT} more")


def _report_skipped(scan) -> None:
    _list_paths("files whose names carry no class (skipped)", scan.unlabelled, scan.root)
    _list_paths("non-image files (skipped)", scan.non_images, scan.root)
    _list_paths("unreadable images (skipped)", scan.unreadable, scan.root)


def _scan_with_progress(root: Path, full: bool):
    from tlkit.scan import list_dataset, verify_images

    scan = list_dataset(root)
    with progress() as bar:
        task = bar.add_task("checking images", total=len(scan.images))
        return verify_images(scan, full=full, on_progress=lambda: bar.advance(task))


# ---------------------------------------------------------------- split


def cmd_split(args: argparse.Namespace) -> int:
    from tlkit.split import SUBSETS, default_out, execute_split, parse_val, plan_split, check_outputs_free

    val = parse_val(args.val)
    out_dir = Path(args.out) if args.out else default_out(args.src)
    check_outputs_free(out_dir, Path(args.src), args.force)
    scan = _scan_with_progress(Path(args.src), full=False)
    _report_skipped(scan)
    plan = plan_split(scan, val, out_dir, seed=args.seed)
    counts = plan.counts()
    table = Table(title=f"split of {relpath(scan.root)} ({scan.layout} layout, seed {args.seed})")
    table.add_column("class")
    for subset in (*SUBSETS, "total"):
        table.add_column(subset, justify="right")
    for label in scan.classes:
        n_train, n_val = counts["training"][label], counts["validation"][label]
        table.add_row(label, str(n_train), str(n_val), str(n_train + n_val))
    totals = [sum(counts[s].values()) for s in SUBSETS]
    table.add_row("[bold]all", *(f"[bold]{n}" for n in (*totals, sum(totals))))
    out.print(table)
    if args.dry_run:
        console.print("dry run: nothing written")
        return 0
    with progress() as bar:
        task = bar.add_task(f"{args.mode} files", total=len(plan.rows))
        execute_split(plan, mode=args.mode, force=args.force, on_progress=lambda: bar.advance(task))
    for subset in SUBSETS:
        console.print(f"wrote {relpath(out_dir / subset)}/")
    console.print(f"manifest: {relpath(out_dir / 'split.csv')}; every one of the {len(plan.rows)} images is in place once")
    return 0


def _add_split(subparsers) -> None:
    from tlkit.split import MODES

    parser = _subparser(
        subparsers, "split", "split a folder of photos into training/ and validation/ class folders",
        "Split a flat folder (cat.0.jpg, dog.0.jpg, ...) or a class-foldered tree into "
        "OUT/training/<class>/ and OUT/validation/<class>/, stratified by class.",
        "tlkit split data/train --val 2000    # writes data/training, data/validation",
    )
    parser.add_argument("src", type=Path, help="the folder of images")
    parser.add_argument("--val", required=True, help="validation size: a count (2000) or a fraction (0.1)")
    parser.add_argument("--out", help="where training/ and validation/ go (default: beside SRC)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument(
        "--mode", choices=MODES, default="link",
        help="hard-link (copies across file systems), copy, symlink, or move the originals",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing split in OUT")
    parser.add_argument("--dry-run", action="store_true", help="show the split, write nothing")
    parser.set_defaults(func=cmd_split)


# ---------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    scan = _scan_with_progress(Path(args.dir), full=True)
    table = Table(title=f"{relpath(scan.root)} ({scan.layout} layout)")
    table.add_column("class")
    table.add_column("images", justify="right")
    for label, count in sorted(scan.class_counts().items()):
        table.add_row(label, str(count))
    table.add_row("[bold]all", f"[bold]{len(scan.images)}")
    out.print(table)
    if scan.details:
        infos = scan.details.values()
        widths, heights = [i.width for i in infos], [i.height for i in infos]
        modes = ", ".join(f"{mode} {n}" for mode, n in sorted(Counter(i.mode for i in infos).items()))
        out.print(f"sizes: width {min(widths)}-{max(widths)} px, height {min(heights)}-{max(heights)} px")
        out.print(f"colour modes: {modes}")
        odd = [p for p, i in scan.details.items() if i.mode not in ("RGB", "L")]
        _list_paths("images not in RGB or L mode (converted to RGB when loaded)", odd, scan.root)
    _report_skipped(scan)
    duplicates = scan.duplicates()
    if duplicates:
        warn(f"groups of identical files: {len(duplicates)}")
        for group in duplicates[:LIST_LIMIT]:
            console.print("  " + " = ".join(str(p.relative_to(scan.root)) for p in group))
    problems = scan.problems + len(duplicates)
    if problems == 0:
        out.print("no problems found")
        return 0
    out.print(f"problems found: {problems}")
    if args.strict:
        raise TlkitError(f"{relpath(scan.root)} has {problems} problem(s), listed above (--strict).")
    return 0


def _add_check(subparsers) -> None:
    parser = _subparser(
        subparsers, "check", "report classes, broken or odd images and duplicates in a dataset folder",
        "Decode every image of a flat or class-foldered dataset and report images per class, "
        "unreadable / empty / non-image files, sizes, colour modes and duplicate files.",
        "tlkit check data/train --strict",
    )
    parser.add_argument("dir", type=Path, help="the dataset folder")
    parser.add_argument("--strict", action="store_true", help="exit non-zero when any problem is found")
    parser.set_defaults(func=cmd_check)


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlkit",
        description="Transfer-learning image classification: split your photos, fine-tune a "
        "pretrained backbone, predict.",
        epilog="workflow:\n  tlkit split data/train --val 2000\n  tlkit finetune --backbone resnet18\n"
        "  tlkit predict photos/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tlkit {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (_add_split, _add_check):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(getattr(args, "quiet", False))
    try:
        return args.func(args)
    except TlkitError as error:
        console.print(f"[bold red]error:[/] {error}")
        return 1
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
