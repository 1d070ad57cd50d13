"""The one exception type for mistakes a user can fix, and how a message names the option to change.

`cli.py` prints a TlkitError as a short message and exits non-zero; any other exception is
a bug in tlkit and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

COMMAND_LINE, PYTHON = "command line", "python"  # how options are named: --batch-size, or batch_size=
# None: no caller chose (a stage called directly), named as on the command line.
_naming: contextvars.ContextVar[str | None] = contextvars.ContextVar("tlkit_naming", default=None)


class TlkitError(Exception):
    """A problem with the user's input or environment, worded as what, where and what to do."""


def option(name: str, value=None, *, python: str | None = None) -> str:
    """An option as the user gives it: `--batch-size` on the command line, `batch_size=` from Python (inside
    `naming(PYTHON)`, which tlkit.api's calls set). With a value: `--device cpu` / `device='cpu'`, and True
    is the bare switch `--force` / `force=True`. A value in capitals (PATH, DIR, N) is a placeholder, written
    as it is. python: the parameter's name where it differs from the flag's (--out is export's path=)."""
    placeholder = isinstance(value, str) and value.isupper()
    if _naming.get() == PYTHON:
        return f"{python or name}=" + ("" if value is None else value if placeholder else repr(value))
    flag = "--" + name.replace("_", "-")
    if value is None or value is True:
        return flag
    return f"{flag} {str(value).lower() if isinstance(value, bool) else value}"


@contextlib.contextmanager
def naming(style: str, *, keep_chosen: bool = False) -> Iterator[None]:
    """Messages raised in the block name options in `style` (COMMAND_LINE or PYTHON); the style before comes back
    at the block's end. keep_chosen: a style an outer block chose stays (a command that calls tlkit.api still
    names its flags)."""
    if keep_chosen and _naming.get() is not None:
        yield
        return
    token = _naming.set(style)
    try:
        yield
    finally:
        _naming.reset(token)
