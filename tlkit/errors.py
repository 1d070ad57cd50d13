"""The one exception type for mistakes a user can fix.

`cli.py` prints a TlkitError as a short message and exits non-zero; any other exception is
a bug in tlkit and keeps its traceback.
"""


class TlkitError(Exception):
    """A problem with the user's input or environment, worded as what, where and what to do."""
