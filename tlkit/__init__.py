"""tlkit: transfer-learning image classification on PyTorch.

The package is laid out as the data flows: split -> data -> models -> features -> train
-> predict. Importing it is cheap; heavy libraries load inside the stages that need them.
"""

__version__ = "0.1.0"

from tlkit.errors import TlkitError

__all__ = ["TlkitError", "__version__", "finetune"]


def __getattr__(name: str):
    """`tlkit.finetune(...)` without importing torch when `import tlkit` runs."""
    if name == "finetune":
        from tlkit.finetuning import finetune

        return finetune
    raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
