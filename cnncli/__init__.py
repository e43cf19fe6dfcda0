"""cnncli: convolutional neural networks from scratch in NumPy, trained from the command line.

The Python API (imported lazily, so that ``cnn --help`` stays fast)::

    from cnncli import build_network, Network, SGD, MSELoss

Every call into cnncli's arithmetic runs under one thread policy; ``with cnncli.threads(n):``
chooses another (``cnncli.parallel``).
"""

__version__ = "0.1.0"

_API = {
    "build_network": "cnncli.network",
    "Network": "cnncli.network",
    "SGD": "cnncli.optim",
    "Adam": "cnncli.optim",
    "MSELoss": "cnncli.losses",
    "CrossEntropyLoss": "cnncli.losses",
    "LAYERS": "cnncli.layers",
    "register": "cnncli.layers",
    "CnnError": "cnncli.errors",
    "threads": "cnncli.parallel",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cnncli' has no attribute {name!r}")
