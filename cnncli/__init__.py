"""cnncli: convolutional neural networks from scratch in NumPy, trained from the command line.

The Python API (imported lazily, so that ``cnn --help`` stays fast)::

    from cnncli import build_network, Network, SGD, MSELoss
    net, meta = cnncli.load_checkpoint("runs/x/best.npz")   # the model, in eval mode
    probs = cnncli.scores(net, stored_images, meta)          # (N, n_classes) probabilities

Every call into cnncli's arithmetic runs under one thread policy (single-threaded BLAS by
default); ``with cnncli.threads(n):`` chooses another (``cnncli.blas``).
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
    "load_checkpoint": ("cnncli.checkpoint", "load_model"),
    "scores": "cnncli.scoring",
    "threads": "cnncli.blas",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        module, attr = _API[name] if isinstance(_API[name], tuple) else (_API[name], name)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'cnncli' has no attribute {name!r}")
