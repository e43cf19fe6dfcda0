"""Fashion-MNIST (Xiao, Rasul and Vollgraf, Zalando Research): 28x28 greyscale pictures of ten
kinds of clothing, in the four IDX files of MNIST's format with MNIST's file names.

Read, cached and downloaded by ``cnncli.data.mnist``'s code with this module's constants: the
cache is ``$CNNCLI_DATA_DIR/fashion-mnist`` (else ``$XDG_CACHE_HOME/cnncli/fashion-mnist``, else
``~/.cache/cnncli/fashion-mnist``), filled from ``MIRRORS`` unless offline (``--offline``,
``CNNCLI_OFFLINE=1``); every download is checked against the published ``MD5`` before it enters the cache.
"""

from __future__ import annotations

import sys

import cnncli.data.mnist as mnist  # the module only (cnncli.data imports this one)

NAME = "fashion_mnist"  # as `cnn data download NAME` takes it; the cache folder is fashion-mnist
TITLE = "Fashion-MNIST"
LABEL_WORD = "class label"
FILES = mnist.FILES
IMAGE_SIZE = (28, 28)
N_CLASSES = 10
MAX_DOWNLOAD_BYTES = 64 * 2**20  # the largest file is 26.4 MB

# The label order of the dataset's README (label 0 is t-shirt/top, ..., 9 ankle boot).
CLASS_NAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle boot"]

# Published MD5 of each .gz file (the dataset's README; torchvision lists the same).
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# The official locations, tried in order for each file.
MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]


def cache_dir():
    return mnist.cache_dir("fashion-mnist")


def load_fashion_mnist(path: str | None = None, offline: bool = False):
    """The Fashion-MNIST train and test splits.

    Returns (x_train, y_train, x_test, y_test):
        x_train: (60000, 1, 28, 28) uint8
        y_train: (60000,) int64 in 0..9 (``CLASS_NAMES`` order)
        x_test:  (10000, 1, 28, 28) uint8
        y_test:  (10000,) int64
    ``path``: a folder holding the four IDX files (used as is, never downloaded into); None
    uses the cache and downloads what is missing there (unless ``offline``).
    """
    return mnist.load_mnist(path, offline, source=sys.modules[__name__])
