"""Datasets: CIFAR-10 (local copy, Keras cache or download), scikit-learn's digits, folders.

The loaders return a `Dataset` of uint8 images `(N, H, W, 3)` (32x32 for CIFAR-10 and
the digits, the cache size for image folders) and int64 labels, so
the rest of the package never needs to know where the pixels came from. This package is
backend-agnostic: numpy only; the download is the package's own Keras-free
`alexnet_k3.downloads`, and scikit-learn is imported lazily for the digits.

Where `load_cifar10` looks, in order:

1. `data_dir`, else the `ALEXNET_K3_DATA` environment variable: the extracted
   `cifar-10-batches-py/` folder, the `cifar-10-python.tar.gz` tarball, or a folder that
   holds either. A path given this way is used as is (no md5 check, so a re-packed or
   reduced copy works); when it holds no CIFAR-10, that is an error rather than a reason
   to look elsewhere.
2. The Keras dataset cache, `$KERAS_HOME/datasets` (default `~/.keras/datasets`), where
   `keras.datasets.cifar10` and earlier runs of this module leave their copies. Tarballs
   found there must match the official md5.
3. A download of the official tarball (or of `ALEXNET_K3_CIFAR10_URL`, a mirror) into
   that cache, with a timeout (`ALEXNET_K3_DOWNLOAD_TIMEOUT`, default 60 s without
   data); it is written under a temporary name and renamed into place only once its
   md5 is the official one.

Batch files are pickles. They are read with a restricted unpickler that rebuilds only
what CIFAR-10 files hold (dicts, lists, bytes, str, ints and uint8/int numpy arrays),
never imports a module, and never calls numpy's own unpickling hooks on file data.

Errors:
    DatasetError (a ValueError): a file was found but is not valid CIFAR-10 (not a
        pickle, truncated, refused content, wrong shape or dtype, md5 mismatch, missing
        batch). The message names the file and what to do.
    DatasetNotFoundError (a FileNotFoundError, so an OSError): no copy was found and none
        could be downloaded, or `data_dir` / `ALEXNET_K3_DATA` points at nothing usable.
        The message names the URL, the cache folder and the environment variable.

The modules, one job each:
    base             `Dataset` and the two errors.
    cifar10          finding, downloading and reading CIFAR-10 (its URL and md5 live
                     there: patch `alexnet_k3.datasets.cifar10.CIFAR10_URL`, not the
                     copy re-exported here).
    cifar10_batches  what CIFAR-10's files must hold, checked.
    unpickler        the restricted unpickler, for any pickled data file.
    digits           scikit-learn's digits.
    folder           image folders (torchvision's ImageFolder layout): scan, split, cache.
    decode           Pillow decoding of one image, and of many on every core.
"""

from __future__ import annotations

from alexnet_k3.core import DATASETS
from alexnet_k3.datasets.base import Dataset, DatasetError, DatasetNotFoundError
from alexnet_k3.datasets.cifar10 import CIFAR10_MD5, CIFAR10_URL, DATA_ENV_VAR, load_cifar10
from alexnet_k3.datasets.digits import load_digits
from alexnet_k3.datasets.folder import load_folder

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASETS",
    "DATA_ENV_VAR",
    "Dataset",
    "DatasetError",
    "DatasetNotFoundError",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_folder",
]


def load_dataset(name: str, data_dir=None, **folder_options) -> Dataset:
    """Loads a dataset by name.

    Args:
        name: one of `DATASETS`: "digits", "cifar10" or "folder".
        data_dir: CIFAR-10's folder or tarball (see `load_cifar10`), or the image
            folder (see `load_folder`).
        **folder_options: "folder" only: `load_folder`'s `image_size` (required),
            `test_split`, `seed`, `strict`, `workers`, `cache_dir`.

    Example:
        >>> load_dataset("digits").x_train.shape
        (1437, 32, 32, 3)
    """
    if name == "folder":
        return load_folder(data_dir, **folder_options)
    if name == "cifar10":
        return load_cifar10(data_dir)
    if name == "digits":
        if data_dir is not None:
            raise ValueError(
                f"The digits dataset ships with scikit-learn and reads no data_dir; "
                f"received data_dir={data_dir!r}. Drop data_dir, or use name='cifar10'."
            )
        return load_digits()
    raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASETS)}.")
