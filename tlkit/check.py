"""What `tlkit check` finds in a dataset folder or label file: per folder checked, its images and every problem
that split or training would meet (unusable files, empty class folders, identical files, one class,
a class of a single image, a label file's bad rows), and of a split, the files in both training/ and validation/.

Decides which folders are checked and counts the problems; prints nothing (cli.py shows the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tlkit.runtime import relpath
from tlkit.scan import Scan, class_folders, scan_with_progress
from tlkit.split import SUBSETS, finish_pending_split, single_image_classes

PLAIN_MODES = ("RGB", "L")  # other colour modes are converted to RGB when loaded


@dataclass
class FolderCheck:
    """One folder, every image decoded and hashed."""

    scan: Scan
    empty_classes: list[Path]  # class folders with no usable image: training refuses them
    duplicates: list[list[Path]]  # groups of identical files
    odd_modes: list[Path]  # images in neither RGB nor L
    one_class: bool  # split and training refuse a folder of one class
    single_image: list[str]  # classes of one image: split refuses them (a folder to split only)

    @property
    def refusal(self) -> str | None:
        """Why the folder cannot be checked at all (no usable labelled image), else None."""
        if self.scan.images:
            return None
        return (f"{relpath(self.scan.source)} holds no usable labelled image ({self.scan.layout} layout); the files "
                "found are listed above. Name them <class>.<n>.jpg, or put them in <class>/ folders.")

    @property
    def problems(self) -> int:
        return (self.scan.problems + len(self.duplicates) + len(self.empty_classes) + self.one_class
                + len(self.single_image))


@dataclass
class DatasetCheck:
    root: Path
    folders: list[FolderCheck]  # a split's training/ and validation/, else the root alone
    leaks: list[list[Path]] = field(default_factory=list)  # groups of identical files found in both subsets

    @property
    def problems(self) -> int:
        return sum(folder.problems for folder in self.folders) + len(self.leaks)


def check_folder(folder: Path, to_split: bool = True) -> FolderCheck:
    """Decode and hash every image of one flat or class-foldered folder, and sort out its problems.
    to_split: the folder is one `tlkit split` would split (not a subset it wrote)."""
    scan = scan_with_progress(folder, full=True)
    counts = scan.class_counts()
    empty = [folder / name for name in class_folders(folder) if name not in counts] if scan.layout == "folders" else []
    one_class = bool(scan.images) and len(counts) < 2
    return FolderCheck(
        scan=scan, empty_classes=empty, duplicates=scan.duplicates(),
        odd_modes=[path for path, info in scan.details.items() if info.mode not in PLAIN_MODES],
        one_class=one_class, single_image=single_image_classes(scan) if to_split and not one_class else [],
    )


def _leaks(root: Path, subsets: list[FolderCheck]) -> list[list[Path]]:
    """Groups of identical files (Scan.duplicates over both subsets at once) that lie in more than one subset."""
    both = Scan(root=root, layout="folders", details={path: info for subset in subsets
                                                      for path, info in subset.scan.details.items()})
    return [group for group in both.duplicates() if len({path.relative_to(root).parts[0] for path in group}) > 1]


def check_dataset(root: Path) -> DatasetCheck:
    """Check a folder `tlkit split` wrote as its two subsets (each a class-foldered tree of its own),
    any other folder as one; a folder refused (FolderCheck.refusal) ends the check."""
    root = Path(root)
    finish_pending_split(root)  # check the split that is in place, not half of one
    subsets = [root / subset for subset in SUBSETS]
    is_split = all(folder.is_dir() for folder in subsets)
    report = DatasetCheck(root=root, folders=[])
    for folder in subsets if is_split else [root]:
        report.folders.append(check_folder(folder, to_split=not is_split))
        if report.folders[-1].refusal:
            return report
    report.leaks = _leaks(root, report.folders) if is_split else []
    return report
