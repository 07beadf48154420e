"""What every loader returns (`Dataset`) and the two errors a user can meet.

Kept apart from the loaders so that each of them, and code that only handles a
loaded dataset, depends on these few lines and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(ValueError):
    """A dataset file exists but is not valid: corrupt, truncated, refused or misshapen."""


class DatasetNotFoundError(FileNotFoundError):
    """No usable copy of a dataset was found, and none could be downloaded."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one dataset, split into train and test.

    The arrays are checked on construction, so a loader that gets a dtype or a shape
    wrong fails here, with the split named, rather than later inside training.

    Attributes:
        name: "cifar10", "digits" or "folder".
        x_train: uint8 images, shape `(N, H, W, 3)` (32x32 for CIFAR-10 and the digits),
            channels last, values 0..255; an image folder's may be a read-only
            `np.memmap` of its cache.
        y_train: int64 labels, shape `(N,)`, values `0..len(class_names) - 1`.
        x_test: like `x_train`.
        y_test: like `y_train`.
        class_names: one name per label value.

    Example:
        >>> x, y = np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int64)
        >>> Dataset("tiny", x, y, x, y, ("a",)).num_classes
        1
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(
                    f"x_{split} must be uint8 images of shape (N, H, W, 3); "
                    f"received {x.dtype} {x.shape}."
                )
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"y_{split} must be int64 of shape ({x.shape[0]},); "
                    f"received {y.dtype} {y.shape}."
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self):
        return (
            f"Dataset(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"image_shape={self.x_train.shape[1:]}, num_classes={self.num_classes})"
        )
