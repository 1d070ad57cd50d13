"""The `tlkit` process: the `tlkit` script, `python -m tlkit` and torchrun's entry run cli.main here, in a
process tuned for one command (freed memory kept, a reader that may leave, no teardown at exit). A Python
caller of cli.main or tlkit.api gets none of this: its process is its own."""

from __future__ import annotations

import os
import sys

from tlkit.cli import main
from tlkit.runtime import keep_freed_memory


class ReaderMayLeave:
    """A stream whose reader may go away (`tlkit finetune ... 2>&1 | head -2`): once the pipe is closed, what is
    written to it is dropped, and the command goes on to write its run. Everything else is the stream's own."""

    def __init__(self, stream):
        self._stream, self._gone = stream, False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone = True
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone = True

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def run() -> None:
    """The `tlkit` command: main() in a process tuned for it, left without Python's teardown. Unloading torch's
    thousands of modules is a noticeable part of a short command (docs/benchmarks.md: Again, after issue 14's
    second session), and there is nothing left to do by then: every file is written, closed and renamed into
    place, and loader workers are shut down. Under torchrun the normal exit runs (it leaves the process group)."""
    keep_freed_memory()
    sys.stdout, sys.stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)
    code = main()
    if "RANK" in os.environ:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (`tlkit models | head -1`): nothing left to tell it
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
