"""The one type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """Images and integer labels of a train and a test split.

    Shape:
        x_train: (N_train, C, H, W), any real dtype (uint8 stays uint8 until a batch is taken)
        y_train: (N_train,) int64 in [0, n_classes)
        x_test:  (N_test, C, H, W)
        y_test:  (N_test,)
    A batch is ``x[i:j].astype(dtype) * scale``. ``pixel_max`` is the stored value of a
    full-intensity pixel (255 for 8-bit images, 16 for digits, 1.0 for float data such as shapes).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    scale: float = 1.0
    pixel_max: float = 1.0
    notes: list[str] = field(default_factory=list)  # lines for the user: files ignored or skipped

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """A short hash of both splits' images and labels (shapes and dtypes included): a
        resumed run checks that it trains on the data it started with."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        return (self.x_train, self.y_train) if which == "train" else (self.x_test, self.y_test)

    def images(self, x: np.ndarray, dtype) -> np.ndarray:
        """Images as the network takes them: cast to ``dtype`` and scaled (no copy when
        they already are)."""
        b = x.astype(dtype, copy=False)
        if self.scale != 1.0:
            b = b * np.asarray(self.scale, dtype=dtype)
        return b
