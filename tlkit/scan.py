"""Find the images of a dataset folder, read their class labels, and check that they decode.

Three layouts: the Kaggle flat one (`cat.0.jpg`: the class is the name before the first dot), a
class-foldered tree (`ROOT/<class>/...`) and a label file (`labels.csv`: path,label rows, tlkit/labelfile.py;
its photos under the CSV's folder). Which files count is decided here alone
(`visible_files`, `class_folders`, `class_images`: hidden files and everything in hidden
folders are left out), so check, split, training, the caches, predict and evaluate all see the
same images; every stage opens an image through `open_image` (one pixel limit, Pillow's
Image.MAX_IMAGE_PIXELS) and reads its pixels through `open_photo` (upright, 8 bits). Reads only.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from tlkit.errors import TlkitError
from tlkit.labelfile import SEPARATOR, BadRow, bad_row_text, is_label_file, read_label_file
from tlkit.pathtext import shown
from tlkit.runtime import progress, relpath, warn

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
# Threads, not processes: PIL releases the GIL while it decodes, and file I/O waits anyway.
_THREADS = 8
EMPTY_FILE = "empty file (0 bytes)"
EXIF_ORIENTATION = 0x0112
SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that turn the photo by 90 degrees (width and height swap)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # PIL's modes for 16-bit (and 32-bit integer) samples
# What opening or decoding a damaged, foreign or oversized file raises (UnidentifiedImageError is an OSError;
# DecompressionBombError is not): caught on every path that decodes, and worded by decode_failure.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageInfo:
    """What a full check learns about one image that decodes."""

    width: int
    height: int
    mode: str
    sha1: str


@dataclass
class Scan:
    """The files of one dataset folder, sorted by path, sorted into what can be used and what not."""

    root: Path  # the folder the photos' paths are relative to (a label file's own folder)
    layout: str  # "flat", "folders" or "labels"
    images: list[tuple[Path, str]] = field(default_factory=list)  # (path, class); multi_label: its labels joined
    unlabelled: list[Path] = field(default_factory=list)  # no class in the name or place
    non_images: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (path, why)
    details: dict[Path, ImageInfo] = field(default_factory=dict)  # filled by a full check
    labels_file: Path | None = None  # the label file read, for the "labels" layout
    bad_rows: list[BadRow] = field(default_factory=list)  # its rows left out, each with why
    given_subsets: dict[Path, str] = field(default_factory=dict)  # photo -> subset, from its split column
    multi_label: bool = False  # a label file read with several labels a photo: images' labels joined by SEPARATOR

    @property
    def source(self) -> Path:
        """What the user named: the folder, or the label file."""
        return self.labels_file or self.root

    @property
    def classes(self) -> list[str]:
        return sorted(self.class_counts())

    def labels_of(self, label: str) -> list[str]:
        """The classes of an images row's label: itself, or a multi-label row's several."""
        return label.split(SEPARATOR) if self.multi_label else [label]

    def class_counts(self) -> Counter:
        return Counter(name for _, label in self.images for name in self.labels_of(label))

    @property
    def problems(self) -> int:
        return len(self.unlabelled) + len(self.non_images) + len(self.unreadable) + len(self.bad_rows)

    def duplicates(self) -> list[list[Path]]:
        """Groups of files with identical bytes (needs a full check)."""
        by_hash: dict[str, list[Path]] = defaultdict(list)
        for path, info in self.details.items():
            by_hash[info.sha1].append(path)
        return sorted(sorted(group) for group in by_hash.values() if len(group) > 1)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def flat_label(path: Path) -> str | None:
    """`cat.12.jpg` -> `cat`; a name without `<class>.<id>.<ext>` carries no class."""
    parts = path.name.split(".")
    return parts[0] if len(parts) >= 3 and parts[0] else None


def is_hidden(name: str) -> bool:
    """A file or folder name starting with a dot (.ipynb_checkpoints, .DS_Store): never a photo or a class."""
    return name.startswith(".")


def visible_files(folder: Path, depth: int | None = None) -> list[Path]:
    """Files under folder, sorted by path, leaving out hidden ones and everything in hidden folders.

    depth: 1 for the folder's own files, 2 with those one folder down, ...; None for all."""
    return list_folder(folder, depth).files


@dataclass
class Listing:
    """What list_folder found under a folder, each list sorted."""

    files: list[Path]  # visible files, a linked folder's included
    hidden: list[Path]  # hidden files and folders left out (a hidden folder once, never walked into)
    repeated: list[Path]  # links to a folder walked already (a loop, or a second way in): not walked again


def list_folder(folder: Path, depth: int | None = None) -> Listing:
    """The files under folder, following links to folders; a folder is walked once however many links lead to
    it, and a link to folder or a folder above it is a loop, never walked. No folder there: nothing found."""
    folder, listing = Path(folder), Listing([], [], [])
    if not folder.is_dir():
        return listing
    walked = {_identity(above) for above in (folder.resolve(), *folder.resolve().parents)}
    for parent, subfolders, names in os.walk(folder, followlinks=True):
        level = len(Path(parent).relative_to(folder).parts) + 1
        if depth is not None and level >= depth:
            subfolders[:] = []
        listing.hidden += (Path(parent, name) for name in (*subfolders, *names) if is_hidden(name))
        subfolders[:] = [name for name in subfolders if not is_hidden(name)]
        for name in list(subfolders):
            identity = _identity(Path(parent, name))
            if identity in walked:
                listing.repeated.append(Path(parent, name))
                subfolders.remove(name)
            walked.add(identity)
        listing.files += (Path(parent, name) for name in names if not is_hidden(name))
    return Listing(sorted(path for path in listing.files if path.is_file()), sorted(listing.hidden),
                   sorted(listing.repeated))


def _identity(folder: Path) -> tuple[int, int]:
    """(device, inode) of a folder, a link followed: the same for every way to it."""
    status = os.stat(folder)
    return status.st_dev, status.st_ino


def class_folders(folder: Path) -> list[str]:
    """The names of folder's visible subfolders, sorted: the classes of a class-foldered tree. Two spelt alike but
    for capitals or spaces (Cat/, cat/) are refused (one_spelling_each)."""
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not is_hidden(p.name))
    one_spelling_each({name: [Path(folder, name)] for name in names}, Path(folder))
    return names


def one_spelling_each(files_by_class: dict[str, list[Path]], root: Path) -> None:
    """Refuse class names that differ only in capitals or surrounding spaces (`Cat` and `cat`, `dog ` and `dog`):
    they would train as different classes, and which spelling is meant is the user's to say."""
    spellings: dict[str, list[str]] = defaultdict(list)
    for label in sorted(files_by_class):
        spellings[label.strip().casefold()].append(label)
    clashes = [labels for labels in spellings.values() if len(labels) > 1]
    if not clashes:
        return
    said = "; ".join(" and ".join(f"'{shown(label)}' ({len(files_by_class[label])} file(s), such as "
                                  f"{shown(files_by_class[label][0].relative_to(root))})" for label in labels)
                     for labels in clashes)
    raise TlkitError(f"{relpath(root)} spells a class in more than one way: {said}. Names that differ only in capitals "
                     "or spaces would be trained as different classes; rename the files or folders to one spelling "
                     "and run again.")


def class_images(subset_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path relative to subset_dir in posix form, class index) of every image in subset_dir/<class>/,
    by class in the order given, then by path: the rows training and the caches read."""
    subset_dir = Path(subset_dir)
    return [(path.relative_to(subset_dir).as_posix(), index)
            for index, label in enumerate(classes)
            for path in visible_files(subset_dir / label) if is_image_name(path)]


def detect_layout(root: Path) -> str:
    """`folders` when a subfolder holds images, else `flat`; a folder that holds both photos named by class
    (cat.0.jpg) and subfolders of images is refused: which of them are the classes is the user's to say."""
    image_folders = [name for name in class_folders(root)
                     if any(is_image_name(p) for p in visible_files(root / name))]
    named = [path for path in visible_files(root, depth=1) if is_image_name(path) and flat_label(path)]
    if image_folders and named:
        folders = ", ".join(f"{shown(name)}/" for name in image_folders[:3])
        folders += ", ..." if len(image_folders) > 3 else ""
        raise TlkitError(f"{relpath(root)} holds {len(named)} photo(s) named by class (such as {shown(named[0].name)}) "
                         f"and {len(image_folders)} subfolder(s) of images ({folders}), so its classes could be "
                         "either. Move the subfolders out to use the names, or the named photos into <class>/ "
                         "folders, and run again.")
    return "folders" if image_folders else "flat"


def _require_folder(root: Path) -> None:
    if not root.exists():
        raise TlkitError(f"{relpath(root)} does not exist. Give the folder that holds your images, or a label file "
                         "(labels.csv).")
    if not root.is_dir():
        raise TlkitError(f"{relpath(root)} is a file, not a folder. Give the folder that holds your images, or a label "
                         "file (labels.csv: a CSV with the columns path,label).")


def photo_root(source: Path) -> Path:
    """The folder a dataset's photo paths are relative to: a folder itself, a label file's own folder."""
    source = Path(source)
    return source.parent if is_label_file(source) and source.is_file() else source


def list_dataset(root: Path, label_sep: str | None = None) -> Scan:
    """Sort every file under root (a folder), or every row of a label file, into labelled images, unlabelled
    images and non-images (and a label file's bad rows). label_sep: a label file's separator between the
    several labels of a photo (multi-label; labelfile.row_labels), None for one label a photo."""
    root = Path(root)
    if is_label_file(root) and root.is_file():
        return _checked_classes(_label_file_scan(root, label_sep))
    _require_folder(root)
    scan = Scan(root=root, layout=detect_layout(root))
    if scan.layout == "folders":
        for path in visible_files(root, depth=1):
            # Loose files beside the class folders belong to no class.
            (scan.unlabelled if is_image_name(path) else scan.non_images).append(path)
        for label in class_folders(root):
            for path in visible_files(root / label):
                if is_image_name(path):
                    scan.images.append((path, label))
                else:
                    scan.non_images.append(path)
    else:
        for path in visible_files(root):
            if not is_image_name(path):
                scan.non_images.append(path)
            elif (label := flat_label(path)) is None:
                scan.unlabelled.append(path)
            else:
                scan.images.append((path, label))
    if not scan.images and not scan.unlabelled and not scan.non_images:
        raise TlkitError(f"{relpath(root)} is empty. Put your images there (cat.0.jpg, ... or <class>/<image>).")
    return _checked_classes(scan)


def _checked_classes(scan: Scan) -> Scan:
    files_by_class: dict[str, list[Path]] = defaultdict(list)
    for path, label in scan.images:
        for name in scan.labels_of(label):
            files_by_class[name].append(path)
    one_spelling_each(files_by_class, scan.root)
    return scan


def warn_rows_left_out(scan: Scan) -> None:
    """One warning for a label file's bad rows, where a command does not list them (check and split do)."""
    if scan.bad_rows:
        warn(f"{len(scan.bad_rows)} row(s) of {relpath(scan.source)} left out (such as {bad_row_text(scan.bad_rows[0])}); "
             f"`tlkit check {relpath(scan.source)}` lists them all")


def _label_file_scan(path: Path, label_sep: str | None = None) -> Scan:
    """A label file's rows as a Scan of its folder: a non-image passed over as in a folder, a hidden path (left
    out of every folder) a bad row; a file whose rows name no usable photo is refused, its first bad rows said."""
    labels = read_label_file(path, label_sep)
    scan = Scan(root=path.parent, layout="labels", labels_file=path, bad_rows=list(labels.bad),
                multi_label=label_sep is not None)
    for row in labels.rows:
        if any(is_hidden(part) for part in row.path.relative_to(scan.root).parts):
            scan.bad_rows.append(BadRow(row.line, row.text, "names a hidden file or folder (a name starting with "
                                                            "'.'), which tlkit leaves out everywhere"))
        elif not is_image_name(row.path):
            scan.non_images.append(row.path)
        else:
            scan.images.append((row.path, SEPARATOR.join(row.labels)))  # one label, or a multi-label row's several
            if row.subset:
                scan.given_subsets[row.path] = row.subset
    scan.bad_rows.sort(key=lambda row: row.line)
    if not scan.images and not scan.non_images:
        said = "".join(f"; {bad_row_text(row)}" for row in scan.bad_rows[:3]) + ("; ..." if len(scan.bad_rows) > 3 else "")
        raise TlkitError(f"{relpath(path)} is empty: none of its {len(scan.bad_rows)} row(s) names a usable photo{said}. "
                         "Each row names a photo by its path relative to the label file's folder, and its label.")
    return scan


# Pillow warns, then decodes the whole image, between Image.MAX_IMAGE_PIXELS and twice that (2.5 GB for a
# 12000x12000 PNG), and refuses only above. tlkit refuses from the limit on, in open_image, with a message of
# its own: Pillow's raw warning would only repeat it, so it is not shown (a filter set once: changing filters
# per call is not safe while decode threads open images).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(source: Path | BinaryIO) -> Image.Image:
    """Image.open (the header only), refusing an image of more than Pillow's Image.MAX_IMAGE_PIXELS pixels
    with DecompressionBombError. Every stage opens images here, so every stage refuses the same files
    (decode_failure words the reason)."""
    image = Image.open(source)
    if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
        image.close()
        raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
    return image


def decode_failure(error: Exception) -> str:
    """Why a file did not decode, in the same words on every path (check, split, predict, the caches)."""
    if isinstance(error, Image.DecompressionBombError):
        return (f"is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's "
                "Image.MAX_IMAGE_PIXELS; shrink it)")
    return f"cannot be decoded ({error})"


def open_photo(path: Path, mode: str, draft_side: int | None = None) -> Image.Image:
    """A file as a PIL image in `mode` ("RGB" or "L"), as every stage reads it: upright (the EXIF
    orientation a phone records applied), 16-bit samples scaled to 8 bits (PIL's convert would clip
    them to white), and a JPEG decoded at 1/2, 1/4 or 1/8 scale when both sides stay >= draft_side.
    An image over the pixel limit raises DecompressionBombError (open_image)."""
    with open_image(path) as image:
        if draft_side:
            image.draft(mode, (draft_side, draft_side))  # square: right whichever way the photo is turned
        return upright_photo(image, mode)


def upright_photo(image: Image.Image, mode: str) -> Image.Image:
    """An open PIL image as every stage reads a photo (open_photo): its EXIF orientation applied, 16-bit
    samples scaled to 8 bits, converted to `mode`. The image given is left as it was."""
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    return image.convert(mode)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) of an open image once its EXIF orientation is applied (a header read only)."""
    sideways = image.getexif().get(EXIF_ORIENTATION) in SIDEWAYS
    return (image.width, image.height) if sideways else (image.height, image.width)


def check_image(path: Path, full: bool) -> ImageInfo | str:
    """ImageInfo when the file is a usable image, else the reason it is not.

    A quick check parses the header; a full one decodes the pixels too (at reduced size
    where the format allows, which still reads every byte) and hashes the file.
    """
    try:
        if path.stat().st_size == 0:
            return EMPTY_FILE
        with open_image(path) as image:
            (height, width), mode = (image.height, image.width), image.mode
            if full:
                height, width = upright_size(image)  # only a full check's details are kept (verify_images)
                image.draft("RGB", (64, 64))
                image.load()
            else:
                image.verify()  # must come right after open: no EXIF read before it
    except DECODE_ERRORS as error:
        return decode_failure(error)
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest() if full else ""
    return ImageInfo(width, height, mode, sha1)


def verify_images(scan: Scan, full: bool = False, on_progress=None) -> Scan:
    """Move images that do not decode from `scan.images` to `scan.unreadable`."""
    paths = [path for path, _ in scan.images]
    with ThreadPoolExecutor(_THREADS) as pool:
        results = []
        for result in pool.map(lambda p: check_image(p, full), paths):
            results.append(result)
            if on_progress:
                on_progress()
    kept = []
    for (path, label), result in zip(scan.images, results):
        if isinstance(result, str):
            scan.unreadable.append((path, result))
        else:
            kept.append((path, label))
            if full:
                scan.details[path] = result
    scan.images = kept
    return scan


def scan_dataset(root: Path, full: bool = False, on_progress=None) -> Scan:
    """List a dataset folder and check every image in it."""
    return verify_images(list_dataset(Path(root)), full=full, on_progress=on_progress)


def scan_with_progress(root: Path, full: bool = False, label_sep: str | None = None) -> Scan:
    """scan_dataset, with a bar on stderr while the images are checked (label_sep: list_dataset's)."""
    scan = list_dataset(Path(root), label_sep)
    with progress() as bar:
        task = bar.add_task("checking images", total=len(scan.images))
        return verify_images(scan, full=full, on_progress=lambda: bar.advance(task))
