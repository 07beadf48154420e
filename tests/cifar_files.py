"""Writes small fake CIFAR-10 copies in the official layout, for tests.

CIFAR-10 cannot be downloaded in CI, so tests make their own: the same folder
(`cifar-10-batches-py/` with `data_batch_1..5`, `test_batch`, `batches.meta`), the same
dict keys and array layout, and optionally the same tarball name. Files are pickled
either as Python 3's `pickle.dump` writes them (protocols 2 to 5) or byte-for-byte the
way Python 2's cPickle wrote the official files (`python2_style=True`).

Images are noise around a colour per class, so a model can learn them in a few steps.

Example (tests/ is on sys.path under pytest's default import mode):
    >>> from cifar_files import write_cifar10
    >>> folder = write_cifar10(tmp_path, n_train=50, n_test=10)
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def fake_arrays(n_train: int = 50, n_test: int = 10, seed: int = 0) -> dict:
    """Images `(N, 32, 32, 3)` uint8 and int64 labels, as `load_cifar10` should return them."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, size=(10, 3))
    result = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        noise = rng.integers(-30, 31, size=(n, 32, 32, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        result[f"x_{split}"], result[f"y_{split}"] = images, labels
    return result


def to_rows(images: np.ndarray) -> np.ndarray:
    """`(N, 32, 32, 3)` images to CIFAR's `(N, 3072)` rows: R plane, G plane, B plane."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def batch_dict(images: np.ndarray, labels, batch_label: str = "training batch 1 of 5") -> dict:
    """One batch as the official files hold it: bytes keys, uint8 rows, a list of ints."""
    return {
        b"data": to_rows(images),
        b"labels": [int(v) for v in labels],
        b"batch_label": batch_label.encode(),
        b"filenames": [f"fake_{i:06d}.png".encode() for i in range(len(labels))],
    }


def meta_dict(class_names=CLASS_NAMES, num_cases_per_batch: int = 10000) -> dict:
    return {
        b"num_cases_per_batch": num_cases_per_batch,
        b"label_names": [name.encode() for name in class_names],
        b"num_vis": 3072,
    }


def dump_pickle(obj, path, protocol: int = 2, python2_style: bool = True) -> Path:
    """Writes `obj` with Python 3's pickle at `protocol`, or as Python 2's cPickle did."""
    if python2_style:
        if protocol != 2:
            raise ValueError(f"python2_style files are protocol 2; received protocol={protocol}.")
        data = python2_pickle(obj)
    else:
        data = pickle.dumps(obj, protocol=protocol)
    path = Path(path)
    path.write_bytes(data)
    return path


def write_cifar10(
    root,
    n_train: int = 50,
    n_test: int = 10,
    protocol: int = 2,
    python2_style: bool = True,
    as_tarball: bool = False,
    seed: int = 0,
) -> Path:
    """Writes a fake CIFAR-10 under `root`; returns the folder or the tarball.

    Args:
        root: an existing folder; receives `cifar-10-batches-py/` (and, with
            `as_tarball=True`, `cifar-10-python.tar.gz` packed from it).
        n_train: training images, spread over the 5 training batches (at least 5).
        n_test: images in `test_batch`.
        protocol: pickle protocol, 2 to 5 (2 for `python2_style`).
        python2_style: write the pickles as Python 2 did (the official files).
        as_tarball: also pack the folder the way the official tarball is packed, and
            return the tarball's path.
        seed: `fake_arrays(n_train, n_test, seed)` gives the expected contents.
    """
    if n_train < 5 or n_test < 1:
        raise ValueError(f"need n_train >= 5 and n_test >= 1; received {n_train}, {n_test}.")
    arrays = fake_arrays(n_train, n_test, seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(n_train), 5)
    for i, (name, idx) in enumerate(zip(TRAIN_FILES, parts, strict=True)):
        batch = batch_dict(
            arrays["x_train"][idx], arrays["y_train"][idx], f"training batch {i + 1} of 5"
        )
        dump_pickle(batch, folder / name, protocol, python2_style)
    test = batch_dict(arrays["x_test"], arrays["y_test"], "testing batch 1 of 1")
    dump_pickle(test, folder / TEST_FILE, protocol, python2_style)
    dump_pickle(
        meta_dict(num_cases_per_batch=len(parts[0])), folder / META_FILE, protocol, python2_style
    )
    (folder / "readme.html").write_text("<html>fake CIFAR-10 for tests</html>\n")
    if as_tarball:
        return pack_tarball(folder, Path(root) / TARBALL)
    return folder


def pack_tarball(folder, tar_path) -> Path:
    """Packs a `cifar-10-batches-py` folder as the official tarball is: one top folder."""
    folder, tar_path = Path(folder), Path(tar_path)
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname=FOLDER, recursive=False)
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"{FOLDER}/{path.name}")
    return tar_path


def md5_of(path) -> str:
    return hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()


# ------------------------------------------------------------ Python 2 style pickles
#
# The official batches were written by Python 2's cPickle at protocol 2. Python 3 cannot
# write that stream (its bytes become `_codecs.encode` calls, numpy >= 2 names
# `numpy._core`), so it is emitted here opcode by opcode as cPickle did: py2 `str` as
# SHORT_BINSTRING/BINSTRING, numpy arrays via `numpy.core.multiarray._reconstruct`,
# MARK ... SETITEMS/APPENDS in batches of 1000, and BINPUT only for the objects cPickle
# memoized (containers, shared strings longer than one character, reduce results; not
# the temporaries of __reduce__). The official data_batch_1 begins
#   \x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\n...


class _Py2Writer:
    def __init__(self):
        self.out = io.BytesIO()
        self.memo = 0

    def put(self):
        self.memo += 1
        if self.memo < 256:
            self.out.write(b"q" + bytes([self.memo]))
        else:
            self.out.write(b"r" + struct.pack("<I", self.memo))

    def global_(self, module: str, name: str):
        self.out.write(b"c" + module.encode() + b"\n" + name.encode() + b"\n")
        self.put()

    def string(self, value: bytes, memoize: bool = True):
        if len(value) < 256:
            self.out.write(b"U" + bytes([len(value)]) + value)
        else:
            self.out.write(b"T" + struct.pack("<i", len(value)) + value)
        if memoize and len(value) > 1:
            self.put()

    def int_(self, value: int):
        if 0 <= value < 256:
            self.out.write(b"K" + bytes([value]))
        elif 0 <= value < 65536:
            self.out.write(b"M" + struct.pack("<H", value))
        else:
            self.out.write(b"J" + struct.pack("<i", value))

    def save(self, obj):
        w = self.out.write
        if obj is None:
            w(b"N")
        elif isinstance(obj, bool):
            w(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            self.int_(obj)
        elif isinstance(obj, bytes):
            self.string(obj)
        elif isinstance(obj, str):
            data = obj.encode("utf-8")
            w(b"X" + struct.pack("<I", len(data)) + data)
            self.put()
        elif isinstance(obj, list):
            w(b"]")
            self.put()
            self._batched(obj, b"e", b"a")
        elif isinstance(obj, dict):
            w(b"}")
            self.put()
            self._batched(list(obj.items()), b"u", b"s")
        elif isinstance(obj, np.ndarray):
            self.array(obj)
        else:
            raise TypeError(f"python2_pickle cannot write {type(obj).__name__}")

    def _batched(self, items, many: bytes, one: bytes):
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            if len(chunk) > 1:
                self.out.write(b"(")
            for item in chunk:
                for part in item if one == b"s" else (item,):
                    self.save(part)
            self.out.write(many if len(chunk) > 1 else one)

    def array(self, a: np.ndarray):
        if a.dtype.kind not in "biuf" or a.ndim > 3:
            raise TypeError(f"python2_pickle writes plain numeric arrays, not {a.dtype}")
        w = self.out.write
        a = np.ascontiguousarray(a)
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        w(b"K\x00\x85")  # (0,)
        self.string(b"b", memoize=False)
        w(b"\x87R")  # TUPLE3, REDUCE
        self.put()
        w(b"(K\x01")  # state: (1, shape, dtype, is_fortran, raw bytes)
        for dim in a.shape:
            self.int_(dim)
        w({0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[a.ndim])
        self.global_("numpy", "dtype")
        self.string(a.dtype.str[1:].encode(), memoize=False)
        w(b"K\x00K\x01\x87R")  # dtype(spec, 0, 1)
        self.put()
        order = a.dtype.str[0].encode()
        w(b"(K\x03")
        self.string(order, memoize=False)
        w(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")  # dtype state, BUILD
        w(b"\x89")  # is_fortran = False
        self.string(a.tobytes(), memoize=False)
        w(b"tb")  # array state, BUILD


def python2_pickle(obj) -> bytes:
    """`obj` (dicts, lists, bytes as py2 str, str as py2 unicode, ints, arrays) as cPickle
    protocol 2 wrote it under Python 2."""
    writer = _Py2Writer()
    writer.out.write(b"\x80\x02")
    writer.save(obj)
    writer.out.write(b".")
    return writer.out.getvalue()
