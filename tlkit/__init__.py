"""tlkit: transfer-learning image classification on PyTorch.

The package is laid out as the data flows: split -> data -> models -> features -> train
-> predict. Importing it is cheap; heavy libraries load inside the stages that need them.
The Python API is tlkit/api.py (`from tlkit import api`); its audit, finetune, load and classes are
also here, loaded on first use. (api.split and api.models keep the module: tlkit.split and
tlkit.models are the stages of those names.)
"""

from tlkit.errors import TlkitError
from tlkit.version import __version__

_API = ("Audit", "Classifier", "Prediction", "Run", "Split", "audit", "finetune", "load", "predictions_frame")
__all__ = ["TlkitError", "__version__", *_API]


def __getattr__(name: str):
    """`tlkit.finetune(...)`, `tlkit.load(...)` without importing torch when `import tlkit` runs."""
    if name in _API:
        from tlkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
