"""tlkit's version, in a module of its own: a leaf that any stage can import (to record which tlkit
wrote a file) without going through the package face, which loads the API and with it every stage.
pyproject.toml reads it from here."""

__version__ = "0.1.0"
