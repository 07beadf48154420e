"""Image folders (torchvision's `ImageFolder` layout) as a `Dataset`, decoded once, cached.

Layout: `ROOT/<class>/<image>` (images may sit in subfolders of their class folder).
When `ROOT/train` and `ROOT/test` (or `ROOT/val`) exist they are the two splits;
otherwise a stratified, seeded share of each class (`test_split`) is held out for
testing. Class names are the class folders' names, sorted.

Only image files count (`IMAGE_SUFFIXES`, any case); other files and hidden entries
(`.DS_Store`, `.ipynb_checkpoints/`) are ignored. Nothing outside `ROOT` is read:
a symbolic link whose target resolves outside it is skipped (with a warning).
Files Pillow cannot decode (truncated, empty, not an image) are skipped with one
warning that counts them and names the first few; `strict=True` makes them an error.

Decoding (`alexnet_k3.datasets.decode`) runs on every core, into a cache
(`alexnet_k3.datasets.cache`) outside `ROOT`: a memory-mapped uint8 array and an
index of the files' paths, sizes and modification times. An unchanged folder loads
from it in well under a second; an added, removed or modified file decodes it again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from alexnet_k3.core import option_name
from alexnet_k3.datasets.base import Dataset, DatasetError, DatasetNotFoundError
from alexnet_k3.datasets.cache import cached_decode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_LISTED = 5  # bad files named in a warning or error


def cache_side(image_size: int) -> int:
    """The side images are cached at for a model of input side `image_size`.

    Up to 64 the model's own size (a 32x32 model sees whole images, as with
    CIFAR-10); above, torchvision's evaluation margin (256 for 224), so the
    on-device resize only ever shrinks.

    Example:
        >>> cache_side(32), cache_side(224)
        (32, 256)
    """
    return image_size if image_size <= 64 else round(image_size * 256 / 224)


def load_folder(
    root,
    image_size: int,
    *,
    test_split: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    workers: int | None = None,
    cache_dir=None,
) -> Dataset:
    """Loads an image folder as a `Dataset` of uint8 `(N, image_size, image_size, 3)` images.

    Args:
        root: the folder, `ROOT/<class>/<image>` or `ROOT/{train,test|val}/<class>/<image>`.
        image_size: the side the images are stored at (see `cache_side`).
        test_split: share of each class held out for testing when `root` has no
            train/test folders, in (0, 1).
        seed: seed of that hold-out.
        strict: raise on files that cannot be decoded instead of skipping them.
        workers: decoding processes (default: one per core).
        cache_dir: the cache folder (default: `$ALEXNET_K3_CACHE`, else
            `$KERAS_HOME/datasets/alexnet_k3_folders`).

    Raises:
        DatasetNotFoundError: `root` does not exist.
        DatasetError: `root` is not a folder of class folders, a class folder holds
            no images, there is only one class, or (`strict`) a file is not an image.

    Example:
        >>> data = load_folder("photos", 32)
        >>> data.class_names, data.x_train.shape[1:]
        (('cat', 'dog'), (32, 32, 3))
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int; received {image_size!r}.")
    if not (0 < test_split < 1):
        raise ValueError(
            f"{option_name('test_split', test_split)}: expected a number in (0, 1), the share "
            "of each class held out for testing (e.g. 0.2)."
        )
    root = _checked_root(root)
    splits, skipped = _scan(root)
    if skipped:
        _warn(f"skipped {len(skipped)} symbolic link(s) pointing outside {root}", skipped)
    files = [f for split in splits.values() for _, f in split]
    relative = [str(f.relative_to(root)) for f in files]

    def check(rows, failures):  # before anything is cached
        _check_bad(root, [(relative[i], why) for i, why in failures], strict, splits, rows)

    images, rows, failures = cached_decode(
        root, files, image_size, check=check, workers=workers, cache_dir=cache_dir
    )
    bad = [(relative[i], why) for i, why in failures]
    if bad:
        _warn(f"skipped {len(bad)} file(s) that are not readable images in {root}", bad)
    class_names = sorted({c for c, _ in splits["train"]})
    label_of = {name: i for i, name in enumerate(class_names)}
    labels = np.array([label_of[c] for s in splits.values() for c, _ in s], np.int64)
    keep = rows >= 0
    n_train = len(splits["train"])
    train_rows = rows[:n_train][keep[:n_train]]
    y_train, y_test = labels[:n_train][keep[:n_train]], labels[n_train:][keep[n_train:]]
    if "test" in splits:
        # Rows are stored train first: each split is a view of the memmap, no copy.
        x_train, x_test = images[: len(train_rows)], images[len(train_rows) :]
    else:
        train_idx, test_idx = _hold_out(y_train, test_split, seed)
        x_train, x_test = images[train_rows[train_idx]], images[train_rows[test_idx]]
        y_train, y_test = y_train[train_idx], y_train[test_idx]
    return Dataset("folder", x_train, y_train, x_test, y_test, tuple(class_names))


# --------------------------------------------------------------------------- scanning


def _checked_root(root) -> Path:
    if root is None:
        raise ValueError(
            f"dataset='folder' needs {option_name('data_dir')}: the folder of class folders "
            "(PATH/<class>/<image>) to train on."
        )
    path = Path(os.fspath(root)).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(
            f"{option_name('data_dir', str(root))}: no such folder. Expected a folder of "
            "class folders (PATH/<class>/<image>, as torchvision's ImageFolder reads): "
            "check the path."
        )
    if not path.is_dir():
        raise DatasetError(
            f"{option_name('data_dir', str(root))} is a file, not a folder. Expected a folder "
            "of class folders (PATH/<class>/<image>): give the folder holding them."
        )
    return path.resolve()


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _inside(root: Path, entry: os.DirEntry) -> bool:
    """False for a symbolic link resolving outside `root` (or dangling)."""
    if not entry.is_symlink():
        return True
    target = Path(entry.path).resolve()
    return target.exists() and target.is_relative_to(root)


def _scan(root: Path):
    """The splits as `{split: [(class, file), ...]}` (`test` only with split folders),
    and the links skipped."""
    skipped: list[str] = []
    top = {e.name: e for e in _entries(root) if e.is_dir() and _inside(root, e)}
    test_name = "test" if "test" in top else "val" if "val" in top else None
    if "train" in top and test_name:
        splits = {
            "train": _scan_split(root, root / "train", skipped),
            "test": _scan_split(root, root / test_name, skipped),
        }
        unknown = sorted({c for c, _ in splits["test"]} - {c for c, _ in splits["train"]})
        if unknown:
            raise DatasetError(
                f"{root / test_name} has class folders that {root / 'train'} lacks: "
                f"{', '.join(unknown)}. Expected the test classes to be training classes: "
                "add them to train/ or remove them from the test folder."
            )
    elif "train" in top or test_name:
        raise DatasetError(
            f"{root} has a {'train' if 'train' in top else test_name}/ folder but no "
            f"{'test/ (or val/)' if 'train' in top else 'train/'}: expected both splits "
            "(PATH/train/<class>, PATH/test/<class>) or class folders only (PATH/<class>)."
        )
    else:
        splits = {"train": _scan_split(root, root, skipped)}
    return splits, skipped


def _scan_split(root: Path, folder: Path, skipped: list) -> list[tuple[str, Path]]:
    classes = [e for e in _entries(folder) if e.is_dir()]
    for entry in classes:
        if not _inside(root, entry):
            skipped.append(entry.path)
    classes = [e for e in classes if _inside(root, e)]
    found = [(e.name, f) for e in classes for f in _images_under(root, Path(e.path), skipped)]
    where = option_name("data_dir", str(folder)) if folder == root else str(folder)
    if not classes:
        loose = sum(1 for e in _entries(folder) if _is_image(e.name))
        raise DatasetError(
            f"{where} holds no class folders"
            + (f" ({loose} images lie directly in it)" if loose else "")
            + ". Expected PATH/<class>/<image>, one folder per class: move the images "
            "into folders named after their classes."
        )
    counts = {e.name: 0 for e in classes}
    for name, _ in found:
        counts[name] += 1
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DatasetError(
            f"{where}: class folder(s) {', '.join(empty[:_LISTED])} hold no images (expected "
            f"files ending in {', '.join(IMAGE_SUFFIXES)}). Add images or remove the folders."
        )
    if folder == root or folder.name == "train":
        if len(classes) < 2:
            raise DatasetError(
                f"{where} holds one class folder ({classes[0].name}); a classifier needs at "
                "least two. Add a folder per class (PATH/<class>/<image>)."
            )
    return found


def _images_under(root: Path, folder: Path, skipped: list, seen=None) -> list[Path]:
    """Image files under `folder`, sorted; links leaving `root` skipped, link loops cut."""
    seen = set() if seen is None else seen
    real = folder.resolve()
    if real in seen:
        return []
    seen.add(real)
    files = []
    for entry in _entries(folder):
        if not _inside(root, entry):
            if entry.is_symlink() and (entry.is_dir() or _is_image(entry.name)):
                skipped.append(entry.path)
            continue
        if entry.is_dir():
            files += _images_under(root, Path(entry.path), skipped, seen)
        elif entry.is_file() and _is_image(entry.name):
            files.append(Path(entry.path))
    return files


def image_files(folder) -> list[Path]:
    """The image files under `folder` (any depth), sorted; hidden entries and symbolic
    links leading outside it are left out, as in `load_folder`.

    Example:
        >>> [str(p) for p in image_files("photos")]  # doctest: +SKIP
        ['photos/cat/1.jpg', 'photos/dog/2.png']
    """
    # Paths under `folder` as given (relative stays relative); links checked on the real path.
    return _images_under(Path(folder).resolve(), Path(folder), [])


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _hold_out(labels: np.ndarray, test_split: float, seed: int):
    """Stratified hold-out: `round(n * test_split)` of each class (at least one for a
    class of two or more, never all of it), chosen by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(max(int(round(len(members) * test_split)), 1), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _check_bad(root: Path, bad: list, strict: bool, splits: dict, rows: list) -> None:
    """Refuses bad files under `strict`, and classes left with no readable image."""
    if bad and strict:
        raise DatasetError(
            f"{len(bad)} file(s) in {root} are not readable images: {_listing(bad)}. "
            f"Remove or replace them, or drop {option_name('strict')} to skip them."
        )
    readable: dict[str, set] = {}
    n = 0
    for split, members in splits.items():
        for name, _ in members:
            readable.setdefault(split, set())
            if rows[n] >= 0:
                readable[split].add(name)
            n += 1
    for split, members in splits.items():
        lost = sorted({c for c, _ in members} - readable[split])
        if lost:
            raise DatasetError(
                f"{root}: class folder(s) {', '.join(lost[:_LISTED])} hold no readable image "
                f"({_listing(bad)} could not be decoded). Add images that Pillow can read."
            )


def _listing(bad: list) -> str:
    shown = "; ".join(f"{path} ({why})" for path, why in bad[:_LISTED])
    return shown + (f"; and {len(bad) - _LISTED} more" if len(bad) > _LISTED else "")


def _warn(message: str, items: list) -> None:
    items = [(i, "") if isinstance(i, str) else i for i in items]
    shown = ", ".join(str(p) for p, _ in items[:_LISTED])
    more = f", and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    print(f"warning: {message}: {shown}{more}.", file=sys.stderr)
