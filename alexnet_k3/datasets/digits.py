"""scikit-learn's handwritten digits, shaped like CIFAR-10: the dataset with no download.

It ships inside scikit-learn (a dependency of alexnet-k3), so training, the tests and
the README's first commands run offline, on real images, in seconds.
"""

from __future__ import annotations

import numpy as np

from alexnet_k3.datasets.base import Dataset


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits as 32x32 RGB images: real data, no download.

    The 1797 grey 8x8 images (values 0..16) are scaled to 0..255, enlarged 4x by pixel
    repetition and copied to three channels, so they fit any model built for CIFAR-10.

    Args:
        test_fraction: share of the images held out for testing, stratified by class.
        seed: seed of the split; the same seed always gives the same split.

    Example:
        >>> data = load_digits()
        >>> data.x_train.shape, data.x_test.shape, data.class_names[:3]
        ((1437, 32, 32, 3), (360, 32, 32, 3), ('0', '1', '2'))
    """
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float)
        or not 0 < test_fraction < 1
    ):
        raise ValueError(f"test_fraction must be a number in (0, 1); received {test_fraction!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; received {seed!r}.")
    try:
        # Imported here: scikit-learn takes a second to import, and CIFAR-10 needs none of it.
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError(
            f"The digits dataset comes from scikit-learn, a dependency of alexnet-k3 that "
            f"cannot be imported here ({type(e).__name__}: {e}). Install it with "
            f"pip install scikit-learn, or reinstall alexnet-k3."
        ) from e
    bunch = sklearn_digits()
    grey = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)
    grey = grey.repeat(4, axis=1).repeat(4, axis=2)
    images = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return Dataset(
        "digits",
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        tuple(str(i) for i in range(10)),
    )
