"""`python -m tlkit` runs the command line (also the entry point torchrun uses)."""

from tlkit.cli import run

run()
