"""Datasets: CIFAR-10 (local copy, Keras cache or download) and scikit-learn's digits.

Both loaders return a `Dataset` of uint8 images `(N, 32, 32, 3)` and int64 labels, so
the rest of the package never needs to know where the pixels came from. This module is
backend-agnostic: numpy only; Keras is imported lazily for its downloader and
scikit-learn lazily for the digits.

Where `load_cifar10` looks, in order:

1. `data_dir`, else the `ALEXNET_K3_DATA` environment variable: the extracted
   `cifar-10-batches-py/` folder, the `cifar-10-python.tar.gz` tarball, or a folder that
   holds either. A path given this way is used as is (no md5 check, so a re-packed or
   reduced copy works); when it holds no CIFAR-10, that is an error rather than a reason
   to look elsewhere.
2. The Keras dataset cache, `$KERAS_HOME/datasets` (default `~/.keras/datasets`), where
   `keras.datasets.cifar10` and earlier runs of this module leave their copies. Tarballs
   found there must match the official md5.
3. A download of the official tarball into that cache, its md5 checked.

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
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
]

DATASETS = ("cifar10", "digits")

# Module constants rather than arguments so that tests can point the download at a
# local file:// tarball and exercise the real download + md5 path without a network.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
DATA_ENV_VAR = "ALEXNET_K3_DATA"

_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_FILE = "test_batch"
_META_FILE = "batches.meta"
_ALL_FILES = (*_TRAIN_FILES, _TEST_FILE, _META_FILE)
_NUM_CLASSES = 10
_PIXELS = 32 * 32 * 3
# Official batches are ~30 MB. The cap stops a hostile tar header or file from making
# us read gigabytes; it still admits batches ten times larger than any real one.
_MAX_FILE_BYTES = 1 << 30

# Where other tools leave CIFAR-10 inside the Keras cache, newest Keras first.
# Keras 3 (3.15 checked) `cifar10.load_data()` extracts to `cifar-10-batches-py-target/...`
# and keeps the tarball as `..._archive`; older Keras used `cifar-10-batches-py{,.tar.gz}`.
_CACHE_FOLDERS = (f"{CIFAR10_FOLDER}-target/{CIFAR10_FOLDER}", CIFAR10_FOLDER)
_CACHE_TARBALLS = (CIFAR10_TARBALL, f"{CIFAR10_FOLDER}-target_archive", f"{CIFAR10_FOLDER}.tar.gz")


class DatasetError(ValueError):
    """A dataset file exists but is not valid: corrupt, truncated, refused or misshapen."""


class DatasetNotFoundError(FileNotFoundError):
    """No usable copy of a dataset was found, and none could be downloaded."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one dataset, split into train and test.

    Attributes:
        name: "cifar10" or "digits".
        x_train: uint8 images, shape `(N, 32, 32, 3)`, channels last, values 0..255.
        y_train: int64 labels, shape `(N,)`, values `0..len(class_names) - 1`.
        x_test: like `x_train`.
        y_test: like `y_train`.
        class_names: one name per label value.
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


def load_dataset(name: str, data_dir=None) -> Dataset:
    """Loads a dataset by name.

    Args:
        name: one of `DATASETS`: "cifar10" or "digits".
        data_dir: CIFAR-10 only; see `load_cifar10`.

    Example:
        >>> load_dataset("digits").x_train.shape
        (1437, 32, 32, 3)
    """
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


# --------------------------------------------------------------------------- CIFAR-10


def load_cifar10(data_dir=None) -> Dataset:
    """Loads CIFAR-10: 5 training batches, the test batch and the class names.

    Args:
        data_dir: the extracted `cifar-10-batches-py` folder, the official
            `cifar-10-python.tar.gz`, or a folder holding either. Defaults to the
            `ALEXNET_K3_DATA` environment variable, then the Keras cache, then a
            download (see the module docstring).

    Returns:
        A `Dataset` with uint8 `(N, 32, 32, 3)` images (50000 train and 10000 test for
        the official files) and the class names from `batches.meta`.

    Raises:
        DatasetError: a file is not valid CIFAR-10.
        DatasetNotFoundError: nothing found locally and the download failed.

    Example:
        >>> data = load_cifar10("~/data/cifar-10-batches-py")
        >>> data.x_train.shape, data.class_names[0]
        ((50000, 32, 32, 3), 'airplane')
    """
    source = _locate_cifar10(data_dir)
    if source.is_dir():
        files = _read_folder(source)
    else:
        files = _read_tarball(source)
    return _assemble(files)


def _locate_cifar10(data_dir) -> Path:
    if data_dir is not None:
        return _user_source(data_dir, f"data_dir={str(data_dir)!r}")
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return _user_source(env, f"{DATA_ENV_VAR}={env!r}")
    datasets_dir = _keras_datasets_dir()
    for rel in _CACHE_FOLDERS:
        if (datasets_dir / rel).is_dir():
            return datasets_dir / rel
    for rel in _CACHE_TARBALLS:
        if (datasets_dir / rel).is_file():
            _check_md5(datasets_dir / rel, downloaded=False)
            return datasets_dir / rel
    return _download(datasets_dir)


def _user_source(value, origin: str) -> Path:
    path = Path(os.fspath(value)).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if path.name == CIFAR10_FOLDER or any((path / name).exists() for name in _ALL_FILES):
            return path
        if (path / CIFAR10_FOLDER).is_dir():
            return path / CIFAR10_FOLDER
        if (path / CIFAR10_TARBALL).is_file():
            return path / CIFAR10_TARBALL
        raise DatasetNotFoundError(
            f"{origin}: {path} holds no CIFAR-10 (expected the extracted {CIFAR10_FOLDER}/ "
            f"folder with {', '.join(_ALL_FILES)}, or {CIFAR10_TARBALL}, or a folder holding "
            f"either). Download the tarball from {CIFAR10_URL}."
        )
    raise DatasetNotFoundError(
        f"{origin}: {path} does not exist. Point it at the extracted {CIFAR10_FOLDER}/ folder "
        f"or at {CIFAR10_TARBALL} (download it from {CIFAR10_URL}), or leave it unset to use "
        f"the Keras cache and download."
    )


def _keras_home() -> Path:
    # Read at call time (Keras reads KERAS_HOME once, at import), so the cache follows
    # the environment of this call; the same rule as keras.src.backend.config.
    home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(home).expanduser()


def _keras_datasets_dir() -> Path:
    home = _keras_home()
    # keras.utils.get_file falls back to /tmp/.keras when the home is not writable.
    if home.exists() and not os.access(home, os.W_OK):
        home = Path("/tmp/.keras")
    return home / "datasets"


def _download(datasets_dir: Path) -> Path:
    url = CIFAR10_URL
    try:
        import keras

        path = keras.utils.get_file(
            fname=CIFAR10_TARBALL,
            origin=url,
            cache_dir=os.fspath(datasets_dir.parent),
            cache_subdir=datasets_dir.name,
        )
    except Exception as e:  # get_file raises a bare Exception for URL errors.
        raise DatasetNotFoundError(
            f"CIFAR-10 was not found locally and could not be downloaded from {url} "
            f"({type(e).__name__}: {e}).\n"
            f"To use a copy made elsewhere, either put {CIFAR10_TARBALL} (md5 {CIFAR10_MD5}) "
            f"at {datasets_dir / CIFAR10_TARBALL}, or point the {DATA_ENV_VAR} environment "
            f"variable (or data_dir=) at that tarball or at its extracted {CIFAR10_FOLDER}/ "
            f"folder. For a dataset that needs no download, use 'digits'."
        ) from e
    _check_md5(Path(path), downloaded=True)
    return Path(path)


def _check_md5(path: Path, downloaded: bool) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() == CIFAR10_MD5:
        return
    if downloaded:
        # A bad download must not be found and trusted as the cache next time.
        path.unlink(missing_ok=True)
        what = f"The download from {CIFAR10_URL} was deleted"
    else:
        what = f"Delete {path} to download again from {CIFAR10_URL}"
    raise DatasetError(
        f"{path}: md5 is {digest.hexdigest()}, expected {CIFAR10_MD5}; the file is "
        f"incomplete or not the official CIFAR-10. {what}, or pass data_dir= to use a "
        f"copy of your own."
    )


def _read_folder(folder: Path) -> dict:
    missing = [name for name in _ALL_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{folder}: missing {', '.join(missing)}; a CIFAR-10 folder holds "
            f"{', '.join(_ALL_FILES)}. Extract the full tarball from {CIFAR10_URL}."
        )
    files = {}
    for name in _ALL_FILES:
        path = folder / name
        where = str(path)
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise DatasetError(f"{where}: {size} bytes is too large for a CIFAR-10 batch.")
        with open(path, "rb") as f:
            files[name] = (where, _unpickle(f, where))
    return files


def _read_tarball(tar_path: Path) -> dict:
    wanted = {f"{CIFAR10_FOLDER}/{name}": name for name in _ALL_FILES}
    files = {}
    try:
        # Members are read straight from the stream, in archive order: nothing is
        # extracted to disk and no member path is ever trusted as a destination.
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                key = re.sub(r"^(\./)+", "", member.name)
                if key not in wanted:
                    continue
                name = wanted[key]
                where = f"{tar_path} (member {member.name})"
                if name in files:
                    raise DatasetError(f"{where}: appears twice in the tarball.")
                if not member.isfile():
                    raise DatasetError(f"{where}: is not a regular file.")
                if member.size > _MAX_FILE_BYTES:
                    raise DatasetError(f"{where}: {member.size} bytes is too large.")
                files[name] = (where, _unpickle(tar.extractfile(member), where))
    except DatasetError:
        raise
    except Exception as e:  # tarfile.ReadError, EOFError, zlib.error, OSError ...
        raise DatasetError(
            f"{tar_path}: cannot be read as a tar.gz archive ({type(e).__name__}: {e}); it is "
            f"truncated or corrupt. Download it again from {CIFAR10_URL}."
        ) from e
    missing = [f"{CIFAR10_FOLDER}/{name}" for name in _ALL_FILES if name not in files]
    if missing:
        raise DatasetError(
            f"{tar_path}: the archive lacks {', '.join(missing)}. Download the full "
            f"tarball from {CIFAR10_URL}."
        )
    return files


def _assemble(files: dict) -> Dataset:
    where, meta = files[_META_FILE]
    class_names = _class_names(meta, where)
    batches = {
        name: _batch_arrays(obj, batch_where)
        for name, (batch_where, obj) in files.items()
        if name != _META_FILE
    }
    x_train = _stack([batches[name][0] for name in _TRAIN_FILES])
    y_train = np.concatenate([batches[name][1] for name in _TRAIN_FILES])
    x_test, y_test = batches[_TEST_FILE]
    return Dataset("cifar10", x_train, y_train, _stack([x_test]), y_test, class_names)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    # Copies the transposed views once, into a C-contiguous array (np.concatenate
    # would keep their channels-first memory order).
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), np.uint8)
    start = 0
    for part in parts:
        out[start : start + len(part)] = part
        start += len(part)
    return out


def _bad(where: str, problem: str) -> DatasetError:
    return DatasetError(
        f"{where}: {problem}. This is not a valid CIFAR-10 file; download the official "
        f"tarball again from {CIFAR10_URL} (md5 {CIFAR10_MD5})."
    )


def _str_keys(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise _bad(where, f"expected a pickled dict, found {type(obj).__name__}")
    result = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            try:
                key = key.decode("ascii")
            except UnicodeDecodeError:
                raise _bad(where, f"non-ASCII key {key!r}") from None
        if not isinstance(key, str) or key in result:
            raise _bad(where, f"unexpected or duplicate key {key!r}")
        result[key] = value
    return result


def _class_names(meta, where: str) -> tuple[str, ...]:
    meta = _str_keys(meta, where)
    names = meta.get("label_names")
    if not isinstance(names, list | tuple) or len(names) != _NUM_CLASSES:
        found = f"{len(names)} entries" if isinstance(names, list | tuple) else repr(type(names))
        raise _bad(where, f"'label_names' must list {_NUM_CLASSES} class names, found {found}")
    result = []
    for name in names:
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(where, f"class name {name!r} is not UTF-8") from None
        if not isinstance(name, str) or not name:
            raise _bad(where, f"class name {name!r} is not a non-empty string")
        result.append(name)
    return tuple(result)


def _batch_arrays(batch, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(batch, where)
    for key in ("data", "labels"):
        if key not in batch:
            raise _bad(where, f"no {key!r} entry (keys: {sorted(batch)})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray):
        raise _bad(where, f"'data' must be a numpy array, found {type(data).__name__}")
    if data.dtype != np.uint8:
        raise _bad(where, f"'data' must have dtype uint8, found {data.dtype}")
    if data.ndim != 2 or data.shape[1] != _PIXELS or data.shape[0] < 1:
        raise _bad(where, f"'data' must have shape (N, {_PIXELS}) with N >= 1, found {data.shape}")
    n = data.shape[0]
    if not isinstance(labels, list | np.ndarray) or len(labels) != n:
        found = f"{len(labels)} labels" if isinstance(labels, list | np.ndarray) else repr(labels)
        raise _bad(where, f"'labels' must be a list of {n} ints (one per image), found {found}")
    if isinstance(labels, list) and not all(type(v) is int for v in labels):
        raise _bad(where, "'labels' must hold only ints")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        found = f"{labels.dtype} {labels.shape}"
        raise _bad(where, f"'labels' must be a flat list of ints, found {found}")
    if labels.min() < 0 or labels.max() >= _NUM_CLASSES:
        raise _bad(
            where, f"labels must lie in 0..{_NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}"
        )
    # Rows are channel planes (R, G, B), each 32x32 row-major: NCHW, then channels last.
    images = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


# ------------------------------------------------------------ the restricted unpickler
#
# CIFAR-10 batches are pickled dicts whose only non-builtin content is numpy arrays.
# Rebuilding an array takes a handful of globals; each allowed global is replaced by a
# small function of ours that accepts only the arguments numpy itself writes, so a file
# can neither import a module nor reach numpy's own `__setstate__` with crafted state.
#
#   Python 2 (the official files) and Python 3, protocols 2-4:
#       numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b") + BUILD(state)
#       numpy.dtype("u1", False, True) + BUILD(dtype state)
#   numpy >= 2 writes numpy._core.multiarray instead of numpy.core.multiarray.
#   Protocol 5: numpy._core.numeric._frombuffer(buffer, dtype, shape, order)
#   Python 3 protocol 2 spells bytes as _codecs.encode(text, "latin1") and b"" as
#   __builtin__.bytes().


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _NdarrayType:
    """Stands for `numpy.ndarray` inside a pickle: usable only as `_reconstruct`'s subtype."""


_NDARRAY = _NdarrayType()
_DTYPE_SPEC = re.compile(r"[biuf][1248]")


class _PendingDtype:
    """`numpy.dtype(spec, align, copy)`; pickle's BUILD then supplies the byte order."""

    __slots__ = ("dtype",)

    def __init__(self, spec, align=False, copy=False):
        if isinstance(spec, bytes):
            spec = spec.decode("ascii", "replace")
        if not isinstance(spec, str) or not _DTYPE_SPEC.fullmatch(spec):
            raise pickle.UnpicklingError(f"dtype {spec!r} is not allowed (only plain numbers)")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # numpy's dtype state for a plain number: (3, byteorder, None, None, None, -1, -1, 0).
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[0] == 3
            and state[2:] == (None, None, None, -1, -1, 0)
        ):
            raise pickle.UnpicklingError(f"unexpected dtype state {state!r}")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"unexpected dtype byte order {state[1]!r}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _PendingArray:
    """What `_reconstruct` returns; pickle's BUILD then hands it shape, dtype and bytes."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("unexpected numpy array state")
        if len(state) == 5:
            if state[0] != 1:
                raise pickle.UnpicklingError(f"unknown numpy array state version {state[0]!r}")
            state = state[1:]
        shape, dtype, fortran, raw = state
        if fortran not in (0, 1):  # also admits False and True
            raise pickle.UnpicklingError("unexpected numpy array order flag")
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _check_shape(shape) -> tuple:
    if not (
        isinstance(shape, tuple)
        and len(shape) <= 8
        and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise pickle.UnpicklingError(f"unexpected array shape {shape!r}")
    return shape


def _array_from_bytes(raw, dtype, shape, order) -> np.ndarray:
    if not isinstance(dtype, _PendingDtype):
        raise pickle.UnpicklingError("numpy array without an allowed dtype")
    if isinstance(raw, pickle.PickleBuffer):
        raw = raw.raw()
    if not isinstance(raw, bytes | bytearray | memoryview):
        # A list here would be an object array: refused, its dtype could not exist anyway.
        raise pickle.UnpicklingError(f"numpy array data is {type(raw).__name__}, not bytes")
    shape = _check_shape(shape)
    dtype = dtype.dtype
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise pickle.UnpicklingError(
            f"numpy array of shape {shape} and dtype {dtype} needs "
            f"{math.prod(shape) * dtype.itemsize} bytes, the file holds {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order)


def _reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY or shape != (0,) or dtype not in (b"b", "b"):
        raise pickle.UnpicklingError("unexpected arguments to numpy's _reconstruct")
    return _PendingArray()


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    if order not in ("C", "F", "K"):
        raise pickle.UnpicklingError(f"unexpected array order {order!r}")
    if order == "K" and axis_order is not None:
        shape = _check_shape(shape)
        if sorted(axis_order) != list(range(len(shape))):
            raise pickle.UnpicklingError(f"unexpected axis order {axis_order!r}")
        return _array_from_bytes(buf, dtype, shape, "C").transpose(axis_order)
    return _array_from_bytes(buf, dtype, shape, "C" if order == "K" else order)


def _latin1_encode(text, encoding):
    if type(text) is not str or encoding != "latin1":
        raise pickle.UnpicklingError("unexpected arguments to _codecs.encode")
    return text.encode("latin1")


def _empty_bytes(*args):
    if args:
        raise pickle.UnpicklingError("unexpected arguments to bytes()")
    return b""


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PendingDtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _resolve(obj):
    """Replaces the placeholders the unpickler built by the arrays and dtypes they stand for."""
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise pickle.UnpicklingError("numpy array without its data")
        return obj.array
    if isinstance(obj, _PendingDtype):
        return obj.dtype
    if obj is _NDARRAY:
        raise pickle.UnpicklingError("stray numpy.ndarray reference")
    if isinstance(obj, dict):
        return {_resolve(k): _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def _unpickle(f: io.BufferedIOBase, where: str):
    try:
        # encoding="bytes": Python 2 `str` (the keys and the pixel buffers of the
        # official files) stays bytes instead of being decoded as text.
        return _resolve(_BatchUnpickler(f, encoding="bytes").load())
    except _RefusedGlobal as e:
        raise DatasetError(
            f"{where}: refused to load the global {e} from this pickle. CIFAR-10 batches "
            f"hold only dicts, lists, bytes, str, ints and numpy arrays; this file holds "
            f"something else and may be malicious. Delete it and download the official "
            f"tarball from {CIFAR10_URL}."
        ) from None
    except RecursionError:
        raise _bad(where, "the pickle is nested too deeply") from None
    except Exception as e:  # EOFError, UnpicklingError, ValueError, struct.error, ...
        if isinstance(e, EOFError) or "truncated" in str(e) or "ran out" in str(e).lower():
            problem = "the file is truncated"
        else:
            problem = "the file is not a CIFAR-10 pickle or is corrupt"
        raise _bad(where, f"{problem} ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------ digits


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
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError(
            "The digits dataset comes from scikit-learn, which is not installed: "
            "pip install 'alexnet-k3[report]' (or pip install scikit-learn)."
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
