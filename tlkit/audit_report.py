"""The folder `tlkit audit` writes: audit.csv (one reviewable row per photo and issue, with the suggested
action: exclude / relabel / keep; a photo of several classes names them in `suggested`), audit.json (what was
audited, the counts), audit.html (thumbnails, pairs side by side) and audit.png (the worst of each).

Every file is written atomically; an existing folder is written into only with --force, and only over an
earlier audit's files that are unchanged (tlkit/ownership.py): an audit.csv the user edited stays.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

from tlkit.atomic import atomic_write_text, check_writable
from tlkit.auditing import ISSUES, Audit, Issue
from tlkit.errors import TlkitError, option
from tlkit.labelfile import SEPARATOR
from tlkit.ownership import replace_outputs, wrote_any
from tlkit.pathtext import path_text, refuse_stdout
from tlkit.photopage import Card, Section, write_page
from tlkit.report import plot_photo_sheet
from tlkit.runtime import relpath
from tlkit.version import __version__

CSV_COLUMNS = ("path", "subset", "class", "issue", "score", "suggested", "action", "other")
OUTPUTS = ("audit.csv", "audit.json", "audit.html", "audit.png")  # all an audit folder holds
REPORT_MARK = "tlkit audit"  # audit.json's "written_by"
PAGE_LIMIT = 60  # photos (or pairs) of each issue on the page; audit.csv holds them all
SHEET_LIMIT = 8  # of each issue on the PNG sheet


def default_report_dir(data: Path) -> Path:
    """Beside the audited folder: data -> data-audit, data/train -> data/train-audit."""
    data = Path(data).resolve()
    return data.parent / f"{data.name}-audit"


def check_report_dir(out: Path, force: bool) -> None:
    """Before any feature is computed: the report folder is free (_check_free) and can be written."""
    _check_free(Path(out), force)
    check_writable(out, "out")


def _check_free(out: Path, force: bool) -> None:
    """Refuse to write into a folder that holds anything, unless --force and it is an audit folder of tlkit's
    (its record names an audit's files); what the user added or changed there stays (write_audit)."""
    refuse_stdout(out, "a folder of audit.csv, audit.html, audit.png and audit.json")
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise TlkitError(f"{relpath(out)} is a file; audit writes a folder. Choose another {option('out')}.")
    present = [p.name for p in out.iterdir()]
    if not present:
        return
    if not force:
        raise TlkitError(f"{relpath(out)} already exists; nothing was written. Use {option('force', True)} to replace "
                         f"an earlier audit there, or {option('out', 'DIR')} to write elsewhere.")
    if not wrote_any(out, OUTPUTS):
        raise TlkitError(f"{relpath(out)} is not an audit folder of tlkit's (tlkit has no record of writing "
                         f"{', '.join(sorted(present)[:3])}{' ...' if len(present) > 3 else ''}; an audit written "
                         f"before tlkit kept records counts as another's); {option('force', True)} replaces only an "
                         f"earlier audit, so nothing was changed. Choose another {option('out')}.")


def write_csv(path: Path, issues: list[Issue]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for issue in issues:
        writer.writerow([path_text(issue.path), issue.subset, issue.label, issue.issue, f"{issue.score:.4f}",
                         issue.suggested, issue.action, path_text(issue.other) if issue.other else ""])
    atomic_write_text(path, text.getvalue())


def summary(audit: Audit, settings: dict) -> dict:
    """audit.json: what was audited with which settings, and the counts."""
    return {"written_by": REPORT_MARK, "tlkit": __version__, "data": str(audit.root.resolve()),
            "photos": len(audit.photos), "classes": audit.classes, "backbone": audit.backbone,
            "settings": {key: str(value) for key, value in settings.items()},
            "counts": {label: dict(counts) for label, counts in audit.counts().items()},
            "actions": dict(Counter(issue.action for issue in audit.issues))}


def write_audit(audit: Audit, out: Path, settings: dict, *, force: bool = False) -> Path:
    """audit.csv, audit.json, audit.html and audit.png in out (each written atomically; beside a file of that
    name the user changed, as audit.new.csv and so on, said); returns out."""
    out = Path(out)
    check_report_dir(out, force)
    target = replace_outputs(out, OUTPUTS, force)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(target["audit.csv"], audit.issues)
    write_page(target["audit.html"], f"audit of {audit.root.resolve().name}", _intro(audit), page_sections(audit),
               table=count_table(audit))
    plot_photo_sheet(target["audit.png"], sheet_photos(audit), empty="no issue found")
    atomic_write_text(target["audit.json"], json.dumps(summary(audit, settings), indent=2))
    return out


def count_table(audit: Audit) -> list[list[str]]:
    """The counts per class (first row: the heads), as the command's table shows them."""
    counts, photos = audit.counts(), audit.photo_counts()
    rows = [[label, str(photos[label]), *(str(counts[label][issue]) for issue in ISSUES)] for label in audit.classes]
    return [["class", "photos", *ISSUES], *rows]


def _intro(audit: Audit) -> str:
    actions = ", ".join(f"{n} {action}" for action, n in Counter(issue.action for issue in audit.issues).items())
    return (f"{len(audit.photos)} photos of {audit.root.resolve()}, judged by {audit.backbone} features. "
            f"audit.csv beside this page lists every row ({actions or 'none'}); "
            f"here the worst {PAGE_LIMIT} of each issue. No photo was moved or changed.")


def _card(audit: Audit, issue: Issue, *lines: str) -> Card:
    return Card(audit.root / issue.path, (*lines, issue.path.as_posix()))


def page_sections(audit: Audit) -> list[Section]:
    labels = Section(f"likely label errors ({len(audit.of('label'))}): given -> suggested, P(given) out of fold",
                     [_card(audit, row, f"{row.label} -> {row.suggested}", f"{row.score:.3f}, {row.action}")
                      for row in audit.of("label")[:PAGE_LIMIT]])
    sections = [labels]
    for kind in ("near-duplicate", "identical"):
        rows = audit.of(kind)
        pairs = [(_card(audit, row, f"{row.action}: {row.label}", f"similarity {row.score:.3f}"),
                  Card(audit.root / row.other, ("its pair", row.other.as_posix()))) for row in rows[:PAGE_LIMIT]]
        sections.append(Section(f"{kind} pairs ({len(rows)}), across training and validation first", pairs=pairs))
    outliers = audit.of("outlier")
    sections.append(Section(f"outliers ({len(outliers)}): unlike every other photo, lowest score first",
                            [_card(audit, row, f"{row.label}?", f"score {row.score:.3f}, {row.action}")
                             for row in outliers[:PAGE_LIMIT]]))
    several = audit.of("several-classes")
    sections.append(Section(f"several classes in one photo ({len(several)}): parts of it show each class named; "
                            "P out of fold of the less sure class's surest part",
                            [_card(audit, row, f"{row.label}: shows {_classes(row)}", f"{row.score:.3f}, {row.action}")
                             for row in several[:PAGE_LIMIT]]))
    return sections


def _classes(row: Issue) -> str:
    """The classes a photo of several shows, in words: "cat and dog"."""
    shown = row.suggested.split(SEPARATOR)
    return " and ".join([", ".join(shown[:-1]), shown[-1]] if len(shown) > 1 else shown)


def sheet_photos(audit: Audit) -> list[tuple[Path, str]]:
    """The worst SHEET_LIMIT of each issue, titled."""
    photos = []
    for kind in ISSUES:
        for row in audit.of(kind)[:SHEET_LIMIT]:
            what = {"label": f"{row.label} -> {row.suggested}",
                    "several-classes": f"{row.label}: shows {_classes(row)}"}.get(kind, row.label)
            photos.append((audit.root / row.path, f"{kind}: {what}\n{row.score:.3f} {row.action}"))
    return photos
