"""tlkit against the seed tutorial's way on this machine's CPU (issue 14), in one run on the same photos:
precompute, predict and one fine-tuning epoch, for resnet18 and efficientnet_lite0. Each command is
a whole process, timed from its start to its exit (start-up included), tutorial and tlkit in turn,
`--repeats` times; the table gives each one's median and the ratio of the medians.

    python scripts/bench_cpu.py [--photos ../shared/data/dogs-vs-cats-2k/train] [--count 600] [--repeats 2]
                                [--write docs/benchmarks.md]

--write puts the run's table, with the machine, the command and the date, into that file between the lines
`<!-- bench_cpu: latest -->` and `<!-- bench_cpu: end -->` (added at the end the first time), replacing the
previous run's; the rest of the file is kept.

Weights are random (--weights none: speed does not depend on them). tlkit runs with its defaults
(bf16 autocast where the CPU has bf16, channels_last; decode threads and compute threads for the cores).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from _bench_common import SHARED_PHOTOS  # noqa: E402
from bench_transfer import subset_of  # noqa: E402

from tlkit.atomic import atomic_write_text  # noqa: E402

TLKIT = [sys.executable, "-m", "tlkit"]


def jobs(data: Path, runs: Path, backbone: str) -> dict[str, tuple[list[str], list[str]]]:
    """job -> (the tutorial's command, tlkit's command)."""
    tutorial = [sys.executable, str(SCRIPTS / "tutorial_way.py")]
    common = ["--data", str(data), "--backbone", backbone, "--weights", "none", "--quiet"]
    return {
        "precompute": ([*tutorial, "precompute", str(data), "--backbone", backbone],
                       [*TLKIT, "precompute", *common, "--force"]),
        "predict": ([*tutorial, "predict", str(data), "--backbone", backbone],
                    [*TLKIT, "predict", str(data / "training"), str(data / "validation"), "--checkpoint",
                     str(runs / backbone), "--out", str(runs / f"{backbone}.csv"), "--force", "--batch-size", "64",
                     "--quiet"]),
        "fine-tuning epoch": ([*tutorial, "finetune", str(data), "--backbone", backbone],
                             [*TLKIT, "finetune", *common, "--epochs", "1", "--freeze", "none", "--runs-dir",
                              str(runs), "--name", f"{backbone}-epoch", "--force"]),
    }


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=SHARED_PHOTOS)
    parser.add_argument("--count", type=int, default=600, help="photos used, half cats and half dogs")
    parser.add_argument("--val", default="100")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet_lite0"])
    parser.add_argument("--jobs", nargs="+", default=["precompute", "predict", "fine-tuning epoch"])
    parser.add_argument("--write", type=Path, help="record the table in this Markdown file (docs/benchmarks.md)")
    args = parser.parse_args()
    command = " ".join(["python", "scripts/bench_cpu.py", *sys.argv[1:]])
    rows = [f"Machine: {machine()}, {torch.get_num_threads()} threads; "
            f"bf16 on the CPU: {torch.cpu._is_avx512_bf16_supported()}; date {date.today()}; "
            f"{args.count} photos ({args.val} validation), {args.repeats} runs each, medians.", "",
            f"Command: `{command}`", "",
            "| backbone | job | tutorial (s) | tlkit (s) | tlkit vs tutorial |", "| --- | --- | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        photos = subset_of(args.photos, args.count, work / "photos")
        subprocess.run([*TLKIT, "split", str(photos), "--val", args.val, "--out", str(work / "data"), "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        for backbone in args.backbones:
            # A checkpoint for predict: the head from cached features, one epoch.
            subprocess.run([*TLKIT, "finetune", "--data", str(work / "data"), "--backbone", backbone, "--weights",
                            "none", "--precompute-features", "--epochs", "1", "--runs-dir", str(work / "runs"),
                            "--name", backbone, "--quiet"], check=True, stdout=subprocess.DEVNULL)
            for job, (tutorial, ours) in jobs(work / "data", work / "runs", backbone).items():
                if job not in args.jobs:
                    continue
                times = {"tutorial": [], "tlkit": []}
                for _ in range(args.repeats):  # in turn, so that a drift of the machine hits both
                    times["tutorial"].append(timed(tutorial))
                    times["tlkit"].append(timed(ours))
                theirs, mine = statistics.median(times["tutorial"]), statistics.median(times["tlkit"])
                rows.append(f"| {backbone} | {job} | {theirs:.1f} | {mine:.1f} | {theirs / mine:.2f}x |")
                print(rows[-1], flush=True)
    print("\n".join(rows))
    if args.write:
        record(args.write, rows)


LATEST, END = "<!-- bench_cpu: latest -->", "<!-- bench_cpu: end -->"


def record(path: Path, rows: list[str]) -> None:
    """Replace the block between LATEST and END in path with rows (append the block the first time)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = "\n".join([LATEST, "### Latest `scripts/bench_cpu.py` run", "", *rows, END])
    if LATEST in text and END in text:
        before, rest = text.split(LATEST, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)
    print(f"recorded in {path}")


def machine() -> str:
    """The CPU's model name (platform.processor() is empty on Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
