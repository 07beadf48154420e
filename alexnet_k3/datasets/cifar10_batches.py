"""What CIFAR-10's files must hold, checked and turned into a `Dataset`.

The files arrive unpickled (by `unpickler.load`) but not trusted: every key, dtype,
shape and label is checked here before an array is used, and a file that fails
raises `BatchFormatError` naming the file and the problem. This module knows the
format only; `cifar10` knows where the files came from, and adds what to do.
"""

from __future__ import annotations

import numpy as np

from alexnet_k3.datasets.base import Dataset

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
ALL_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
NUM_CLASSES = 10
PIXELS = 32 * 32 * 3


class BatchFormatError(ValueError):
    """A CIFAR-10 file unpickled, but does not hold what CIFAR-10 files hold.

    Attributes:
        where: the file, as the caller named it.
        problem: what is wrong, a phrase without a final full stop.
    """

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}.")
        self.where, self.problem = where, problem


def to_dataset(files: dict[str, tuple[str, object]]) -> Dataset:
    """Checks the unpickled files and stacks them into the "cifar10" `Dataset`.

    Args:
        files: for each name in `ALL_FILES`, `(where, unpickled object)`; `where`
            names the file in errors.

    Raises:
        BatchFormatError: a file holds the wrong keys, types, shapes or labels.
    """
    where, meta = files[META_FILE]
    class_names = _class_names(meta, where)
    batches = {
        name: _batch_arrays(obj, batch_where)
        for name, (batch_where, obj) in files.items()
        if name != META_FILE
    }
    x_train = _stack([batches[name][0] for name in TRAIN_FILES])
    y_train = np.concatenate([batches[name][1] for name in TRAIN_FILES])
    x_test, y_test = batches[TEST_FILE]
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


def _str_keys(obj, where: str) -> dict:
    # The official files, written by Python 2, have bytes keys; Python 3 copies have str.
    if not isinstance(obj, dict):
        raise BatchFormatError(where, f"expected a pickled dict, found {type(obj).__name__}")
    result = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            try:
                key = key.decode("ascii")
            except UnicodeDecodeError:
                raise BatchFormatError(where, f"non-ASCII key {key!r}") from None
        if not isinstance(key, str) or key in result:
            raise BatchFormatError(where, f"unexpected or duplicate key {key!r}")
        result[key] = value
    return result


def _class_names(meta, where: str) -> tuple[str, ...]:
    meta = _str_keys(meta, where)
    names = meta.get("label_names")
    if not isinstance(names, list | tuple) or len(names) != NUM_CLASSES:
        found = f"{len(names)} entries" if isinstance(names, list | tuple) else repr(type(names))
        raise BatchFormatError(
            where, f"'label_names' must list {NUM_CLASSES} class names, found {found}"
        )
    result = []
    for name in names:
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                raise BatchFormatError(where, f"class name {name!r} is not UTF-8") from None
        if not isinstance(name, str) or not name:
            raise BatchFormatError(where, f"class name {name!r} is not a non-empty string")
        result.append(name)
    return tuple(result)


def _batch_arrays(batch, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(batch, where)
    for key in ("data", "labels"):
        if key not in batch:
            raise BatchFormatError(where, f"no {key!r} entry (keys: {sorted(batch)})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray):
        raise BatchFormatError(where, f"'data' must be a numpy array, found {type(data).__name__}")
    if data.dtype != np.uint8:
        raise BatchFormatError(where, f"'data' must have dtype uint8, found {data.dtype}")
    if data.ndim != 2 or data.shape[1] != PIXELS or data.shape[0] < 1:
        raise BatchFormatError(
            where, f"'data' must have shape (N, {PIXELS}) with N >= 1, found {data.shape}"
        )
    n = data.shape[0]
    if not isinstance(labels, list | np.ndarray) or len(labels) != n:
        found = f"{len(labels)} labels" if isinstance(labels, list | np.ndarray) else repr(labels)
        raise BatchFormatError(
            where, f"'labels' must be a list of {n} ints (one per image), found {found}"
        )
    # type() rather than isinstance(): True and numpy scalars are not the ints CIFAR holds.
    if isinstance(labels, list) and not all(type(v) is int for v in labels):
        raise BatchFormatError(where, "'labels' must hold only ints")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        found = f"{labels.dtype} {labels.shape}"
        raise BatchFormatError(where, f"'labels' must be a flat list of ints, found {found}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise BatchFormatError(
            where, f"labels must lie in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}"
        )
    # Rows are channel planes (R, G, B), each 32x32 row-major: NCHW, then channels last.
    images = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)
