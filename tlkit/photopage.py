"""One self-contained HTML page of photos to look at: each a small JPEG thumbnail embedded in the page
(base64), with its caption; sections of single photos, or of pairs side by side. `tlkit audit` shows its
issues on one, `tlkit evaluate` its mistakes and its reliability diagram (a plot, at its own size).

Given paths and caption lines; knows nothing of models. The page loads nothing from anywhere (its
Content-Security-Policy forbids it) and runs no script: it can be mailed, archived or opened offline.
Written atomically. The HTML is written by hand with html.escape: one page of cards needs no template engine.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tlkit.atomic import atomic_write_text
from tlkit.pathtext import shown
from tlkit.scan import DECODE_ERRORS, open_photo

THUMB_SIDE = 160  # px, the longer side
THUMB_QUALITY = 70  # JPEG: about 5 KB a thumbnail
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card,.pair{border:1px solid #ccc;border-radius:6px;padding:6px}
.pair{display:flex;gap:8px}.card img,.pair img{display:block;max-width:160px;max-height:160px}
.caption{font-size:12px;max-width:160px;overflow-wrap:anywhere}.caption b{color:#a00}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"""


@dataclass(frozen=True)
class Card:
    """A photo and the lines under it; the first line in bold (what is wrong)."""

    path: Path
    lines: tuple[str, ...]


@dataclass
class Section:
    title: str
    cards: list[Card] = field(default_factory=list)
    pairs: list[tuple[Card, Card]] = field(default_factory=list)  # shown side by side
    figure: Path | None = None  # a PNG plot shown at its own size (evaluate's reliability diagram)


def thumbnail_uri(path: Path) -> str:
    """A data: URI of the photo upright, its longer side THUMB_SIDE px, as JPEG; a grey square where it
    does not decode (the caption still names it)."""
    try:
        image = open_photo(Path(path), "RGB", draft_side=2 * THUMB_SIDE)
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    except DECODE_ERRORS:
        image = Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), (200, 200, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_uri(path: Path) -> str:
    """A data: URI of a PNG plot as it is (a plot is not shrunk like a photo: its text must stay readable)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _card(card: Card) -> str:
    lines = [f"<b>{html.escape(card.lines[0])}</b>", *map(html.escape, card.lines[1:])] if card.lines else []
    return (f'<img src="{thumbnail_uri(card.path)}" alt="{html.escape(card.path.name)}">'
            f'<div class="caption">{"<br>".join(lines)}</div>')


def _section(section: Section) -> str:
    parts = [f'<div class="card">{_card(card)}</div>' for card in section.cards]
    parts += [f'<div class="pair"><div>{_card(left)}</div><div>{_card(right)}</div></div>'
              for left, right in section.pairs]
    if section.figure is not None:
        parts.append(f'<img src="{figure_uri(section.figure)}" alt="{html.escape(section.title)}">')
    body = "".join(parts) or "<p>none</p>"
    return f'<h2>{html.escape(section.title)}</h2><div class="cards">{body}</div>'


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head, *body = rows
    cells = "".join(f"<th>{html.escape(cell)}</th>" for cell in head)
    lines = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in body)
    return f"<table><tr>{cells}</tr>{lines}</table>"


def render_page(title: str, intro: str, sections: list[Section], table: list[list[str]] | None = None) -> str:
    """The page: a title, a line of introduction, a table (first row: its heads), the sections."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>{_table(table or [])}"
            + "".join(map(_section, sections)) + "</body></html>\n")


def write_page(path: Path, title: str, intro: str, sections: list[Section],
               table: list[list[str]] | None = None) -> None:
    # shown: a file name that is not UTF-8 reads as cat.\xff1.jpg on the page (a browser would show a glyph of doubt)
    atomic_write_text(Path(path), shown(render_page(title, intro, sections, table)))
