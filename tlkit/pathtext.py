"""File names as text. A name that is not valid UTF-8 (bytes written by another system) reaches Python as a str
with surrogate escapes (os.fsdecode); every file tlkit writes or reads a path list from carries such a name as its
own bytes (ENCODING, ERRORS; JSON escapes it as \\udcff and reads it back the same), and every page or screen shows
it readable (`shown`: cat.\\xff1.jpg). Also the one rule for `--out -`. Knows nothing of what is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tlkit.errors import TlkitError, option

ENCODING, ERRORS = "utf-8", "surrogateescape"  # how every text file tlkit writes or reads holds a file name
STDOUT = "-"  # `--out -`: the rows go to standard output


def path_text(path: Path | str) -> str:
    """A path as tlkit writes it in a CSV or JSON file: posix form, a name that is not UTF-8 kept as its bytes."""
    return Path(os.fsdecode(path)).as_posix()


def shown(text: Path | str) -> str:
    """Text for a page or a screen: a name's bytes that are not UTF-8 written as \\xff, never an encoding error."""
    return os.fsdecode(text).encode(ENCODING, ERRORS).decode(ENCODING, "backslashreplace")


def is_stdout(out: Path | str | None) -> bool:
    return out is not None and str(out) == STDOUT


def refuse_stdout(out: Path | str | None, writes: str, python: str = "out") -> None:
    """`--out -` where the output is not one stream of rows: one message, rather than a file named `-`.
    python: the parameter's name from Python (export's path=)."""
    if is_stdout(out):
        raise TlkitError(f"{option('out', STDOUT, python=python)} means standard output, which only predict's rows "
                         f"go to; this writes {writes}. Give {option('out', python=python)} a path.")


def write_stdout(text: str) -> None:
    """text on standard output, a file name in it as its own bytes (as in a file tlkit writes); a reader that went
    away (`| head -1`) is not an error."""
    try:
        sys.stdout.flush()
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # a notebook's stream takes text only
            sys.stdout.write(shown(text))
        else:
            buffer.write(text.encode(ENCODING, ERRORS))
            buffer.flush()
    except BrokenPipeError:
        pass
