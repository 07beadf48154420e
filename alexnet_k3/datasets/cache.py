"""The decoded-image cache of an image folder: `images.npy` and `index.json`.

One cache folder per data folder and size, `<name>-<size>px-<hash of the resolved
path>`, under `$ALEXNET_K3_CACHE` (default `$KERAS_HOME/datasets/alexnet_k3_folders`,
beside Keras's own dataset cache): nothing is written inside the data folder.

- `images.npy`: every readable image, uint8 `(N, size, size, 3)`, in the order of the
  files given; read back memory-mapped (`np.load(mmap_mode="r")`, never unpickled).
- `index.json`: each file's path (relative to the data folder), size, modification
  time, change time (`st_ctime_ns`) and inode number, each file's row in
  `images.npy` (-1: not decodable) and why the others failed. The cache is used
  only when the index names exactly the files found now, and is otherwise rebuilt;
  an index that is not what this module writes counts as no cache. The change time
  and inode catch what size and modification time miss: a file replaced by one of
  the same size with its modification time kept (`touch -r`, `cp -p`, `rsync -t`)
  has a new change time (any write or `utime` sets it, and no user call can set it
  back) and, when replaced by a rename, a new inode. The cost: a `chmod`, `chown`
  or a copy of the whole folder also decodes it again.

Both files are written under `.tmp-<pid>-` names and renamed into place
(`alexnet_k3.core`), the old index removed first and the new one written last,
so a decode killed at any point leaves no cache a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from alexnet_k3.core import atomic_save, atomic_write_json, remove_stale_temp_files
from alexnet_k3.datasets.decode import ALPHA_BACKGROUND, decode_into

CACHE_ENV_VAR = "ALEXNET_K3_CACHE"
# Bumped whenever decoding changes what a file decodes to: older caches are redone.
CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """`$ALEXNET_K3_CACHE`, else `alexnet_k3_folders` in Keras's dataset cache."""
    from alexnet_k3.datasets.cifar10 import _keras_datasets_dir

    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else _keras_datasets_dir() / "alexnet_k3_folders"


def cache_folder(root: Path, size: int, cache_dir=None) -> Path:
    """The cache folder of data folder `root` (resolved) at `size`.

    Example:
        >>> cache_folder(Path("/data/photos"), 256).name  # doctest: +SKIP
        'photos-256px-3f5c0a1b2d4e'
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return base / f"{root.name or 'root'}-{size}px-{digest}"


def cached_decode(root: Path, files: list[Path], size: int, *, check, workers=None, cache_dir=None):
    """`files` (under `root`) decoded at `size`: from the cache when it matches, else
    decoded on every core and cached.

    Args:
        root: the resolved data folder.
        files: the image files, in the order their rows are stored.
        size: the side of the stored squares.
        check: `check(rows, failures)`, called before anything is cached (and on a
            cache hit), raises to refuse the result: a failed first decode leaves no
            cache folder behind.
        workers: decoding threads (default: one per core).
        cache_dir: the folder holding the caches (default: `default_cache_dir()`).

    Returns:
        `(images, rows, failures)`: the memmap of readable images, each file's row in
        it (-1: not decodable), and `[file number, reason]` of the failures.
    """
    folder = cache_folder(root, size, cache_dir)
    records = []
    for path in files:
        stat = path.stat()
        identity = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        records.append([str(path.relative_to(root)), *identity])
    header = {"version": CACHE_VERSION, "root": str(root), "size": size}
    header["background"] = list(ALPHA_BACKGROUND)
    hit = _cache_hit(folder, header, records)
    if hit is not None:
        check(hit[1].tolist(), hit[2])
        return hit
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(folder)
    except OSError as error:
        raise _write_error(error, folder, cache_dir) from error
    try:
        # The old index goes first: it must never describe the new images.npy.
        (folder / "index.json").unlink(missing_ok=True)
        rows, failures = _decode(folder, files, size, workers, root.name, check)
        index = {**header, "files": records, "rows": rows.tolist(), "failures": failures}
        atomic_write_json(folder / "index.json", index)
    except BaseException as error:
        if created:  # a failed first decode leaves no folder behind
            for leftover in folder.iterdir():
                leftover.unlink(missing_ok=True)
            folder.rmdir()
        if isinstance(error, OSError):  # the cache cannot be written: the images were read
            raise _write_error(error, folder, cache_dir) from error
        raise
    print(f"cached {rows.max() + 1} images in {folder}", file=sys.stderr)
    return np.load(folder / "images.npy", mmap_mode="r"), rows, failures


def _write_error(error: OSError, folder: Path, cache_dir) -> OSError:
    """`error` (which may name a temporary file) as one line naming the cache folder and
    what to do."""
    if cache_dir is not None:
        where = "pass a writable cache_dir"
    else:
        where = f"point {CACHE_ENV_VAR} at a writable folder ({CACHE_ENV_VAR}=/tmp/ak3-cache)"
    return type(error)(
        f"Cannot write the decoded-image cache in {folder} "
        f"({error.strerror or type(error).__name__}): make that folder writable, free "
        f"space on its disk, or {where}."
    )


def _cache_hit(folder: Path, header: dict, records: list):
    """The cached `(images, rows, failures)` when the index matches `records` and is
    consistent with `images.npy`; else None (rebuilt)."""
    with contextlib.suppress(OSError, ValueError):
        index = json.loads((folder / "index.json").read_text())
        if not isinstance(index, dict) or {k: index.get(k) for k in header} != header:
            return None
        if index.get("files") != records:
            return None
        rows, failures = index.get("rows"), index.get("failures")
        good = isinstance(rows, list) and len(rows) == len(records)
        good = good and all(type(r) is int for r in rows) and isinstance(failures, list)
        good = good and all(
            isinstance(f, list) and len(f) == 2 and type(f[0]) is int and isinstance(f[1], str)
            for f in failures
        )
        if not good:
            return None
        rows = np.array(rows, np.int64)
        kept = rows[rows >= 0]
        failed = sorted(f[0] for f in failures)
        if (
            not np.array_equal(kept, np.arange(len(kept)))
            or failed != np.flatnonzero(rows < 0).tolist()
        ):
            return None
        images = np.load(folder / "images.npy", mmap_mode="r")
        expected = (len(kept), header["size"], header["size"], 3)
        if images.dtype != np.uint8 or images.shape != expected:
            return None
        return images, rows, failures
    return None


def _decode(folder: Path, files, size: int, workers, label: str, check):
    """Decodes `files` into `folder/images.npy` (atomically): each file's row and
    `[file number, reason]` of the files that could not be decoded."""
    result = {}

    def write(tmp_path):
        raw = Path(f"{tmp_path}.all.npy")
        try:
            shape = (len(files), size, size, 3)
            np.lib.format.open_memmap(raw, "w+", np.uint8, shape).flush()
            failed = dict(decode_into(raw, files, size, workers=workers, label=label))
            failures = [[r, failed[r]] for r in sorted(failed)]
            rows = np.cumsum([r not in failed for r in range(len(files))]) - 1
            rows[list(failed)] = -1
            check(rows.tolist(), failures)
            if failed:
                _compact(raw, tmp_path, rows)
            else:
                os.replace(raw, tmp_path)
            result.update(rows=rows, failures=failures)
        finally:
            raw.unlink(missing_ok=True)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())  # the pixels are on disk before the index says so

    atomic_save(write, folder / "images.npy")
    return result["rows"], result["failures"]


def _compact(raw: Path, out: Path, rows: np.ndarray) -> None:
    """Copies the readable rows of `raw` to a new `.npy` at `out`, in bounded chunks."""
    source = np.load(raw, mmap_mode="r")
    good = np.flatnonzero(rows >= 0)
    target = np.lib.format.open_memmap(out, "w+", np.uint8, (len(good), *source.shape[1:]))
    for start in range(0, len(good), 256):
        target[start : start + 256] = source[good[start : start + 256]]
    target.flush()
    del target, source
