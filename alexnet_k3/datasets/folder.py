"""Image folders (torchvision's `ImageFolder` layout) as a `Dataset`, decoded once, cached.

Layout: `ROOT/<class>/<image>` (images may sit in subfolders of their class folder).
When `ROOT/train` and `ROOT/test` (or `ROOT/val`) exist they are the two splits;
otherwise a stratified, seeded share of each class (`test_split`) is held out for
testing. Class names are the class folders' names, sorted.

Only image files count (`IMAGE_SUFFIXES`, any case); other files and hidden entries
(`.DS_Store`, `.ipynb_checkpoints/`) are ignored. Nothing outside `ROOT` is read, and
no image is counted twice or under a class it is not in: a symbolic link inside a
class folder is followed only when its target lies inside that same class folder
(a link to a file already found counts once), and a class folder that is a link
only when its target is inside `ROOT` and overlaps no other class folder. Other
links are skipped, with a warning naming them: those leading outside `ROOT`, those
leading into another class folder or split (their images count where they really
are), and loops (a link to a folder it is inside).
Files Pillow cannot decode (truncated, empty, not an image) are skipped with one
warning that counts them and names the first few; `strict=True` makes them an error.

Decoding (`alexnet_k3.datasets.decode`) runs on every core, into a cache
(`alexnet_k3.datasets.cache`) outside `ROOT`: a memory-mapped uint8 array and an
index of the files' paths, sizes, modification and change times and inodes. An
unchanged folder loads from it in well under a second; an added, removed, modified or
replaced file decodes it again.
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
# The warnings for the symbolic links `_scan` skips, by why it skipped them.
SKIPPED_LINKS = {
    "outside": "skipped {count} symbolic link(s) pointing outside {root}",
    "class": "skipped {count} symbolic link(s) leading out of their class folder (into "
    "another class or split; each image counts once, in the class folder where it is)",
    "loop": "skipped {count} symbolic link loop(s) (a link to a folder it is inside)",
}


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
        workers: decoding threads (default: one per core).
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
    for kind, links in skipped.items():
        if links:
            _warn(SKIPPED_LINKS[kind].format(count=len(links), root=root), links)
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


def _overlap(a: Path, b: Path) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)


def _scan(root: Path):
    """The splits as `{split: [(class, file), ...]}` (`test` only with split folders),
    and the links skipped, `{kind: [link, ...]}` (kinds of `SKIPPED_LINKS`)."""
    skipped: dict[str, list[str]] = {kind: [] for kind in SKIPPED_LINKS}
    top = {e.name: e for e in _entries(root) if e.is_dir() and _inside(root, e)}
    test_name = "test" if "test" in top else "val" if "val" in top else None
    if "train" in top and test_name:
        folders = {"train": root / "train", "test": root / test_name}
    elif "train" in top or test_name:
        raise DatasetError(
            f"{root} has a {'train' if 'train' in top else test_name}/ folder but no "
            f"{'test/ (or val/)' if 'train' in top else 'train/'}: expected both splits "
            "(PATH/train/<class>, PATH/test/<class>) or class folders only (PATH/<class>)."
        )
    else:
        folders = {"train": root}
    # The class folders that are real folders, of every split: a class folder that is a
    # link may not overlap them (its images would count twice, or in both splits).
    claimed = [
        Path(e.path).resolve()
        for folder in folders.values()
        for e in _entries(folder)
        if e.is_dir() and not e.is_symlink()
    ]
    splits = {split: _scan_split(root, f, skipped, claimed) for split, f in folders.items()}
    if "test" in splits:
        unknown = sorted({c for c, _ in splits["test"]} - {c for c, _ in splits["train"]})
        if unknown:
            raise DatasetError(
                f"{folders['test']} has class folders that {root / 'train'} lacks: "
                f"{', '.join(unknown)}. Expected the test classes to be training classes: "
                "add them to train/ or remove them from the test folder."
            )
    return splits, skipped


def _scan_split(root: Path, folder: Path, skipped: dict, claimed: list) -> list[tuple[str, Path]]:
    classes = []
    for entry in (e for e in _entries(folder) if e.is_dir()):
        if not _inside(root, entry):
            skipped["outside"].append(entry.path)
        elif entry.is_symlink():
            target = Path(entry.path).resolve()
            if any(_overlap(target, other) for other in claimed):
                kind = "loop" if folder.resolve().is_relative_to(target) else "class"
                skipped[kind].append(f"{entry.path} -> {target}")
            else:
                claimed.append(target)
                classes.append(entry)
        else:
            classes.append(entry)
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


def _images_under(root: Path, folder: Path, skipped: dict) -> list[Path]:
    """Image files under `folder` (a class folder), sorted, each real file once; links
    followed only inside `folder`, the others put in `skipped` by kind."""
    within, found, walked, files = folder.resolve(), set(), set(), []

    def walk(path: Path, real: Path, walking: set) -> None:
        walking = walking | {real}
        walked.add(real)
        for entry in _entries(path):
            link = entry.is_symlink()
            target = Path(entry.path).resolve() if link else None
            if entry.is_dir():
                if link:
                    if target in walking or real.is_relative_to(target):  # inside it: a loop
                        skipped["loop"].append(f"{entry.path} -> {target}")
                        continue
                    kind = _link_kind(root, within, target)
                    if kind is not None:
                        skipped[kind].append(entry.path)
                        continue
                if (target or real / entry.name) not in walked:  # else its files are in
                    walk(Path(entry.path), target or real / entry.name, walking)
            elif _is_image(entry.name) and (entry.is_file() or link):
                kind = _link_kind(root, within, target) if link else None
                if kind is not None:
                    skipped[kind].append(entry.path)
                elif (target or real / entry.name) not in found:  # a file reached twice
                    found.add(target or real / entry.name)
                    files.append(Path(entry.path))

    walk(folder, within, set())
    return files


def _link_kind(root: Path, within: Path, target: Path) -> str | None:
    """Why a link to `target` is not followed (a `SKIPPED_LINKS` kind), or None."""
    if not target.exists() or not target.is_relative_to(root):
        return "outside"
    return None if target.is_relative_to(within) else "class"


def image_files(folder) -> list[Path]:
    """The image files under `folder` (any depth), sorted, each real file once; hidden
    entries, link loops and symbolic links leading outside it are left out, as in
    `load_folder`.

    Example:
        >>> [str(p) for p in image_files("photos")]  # doctest: +SKIP
        ['photos/cat/1.jpg', 'photos/dog/2.png']
    """
    # Paths under `folder` as given (relative stays relative); links checked on the real path.
    skipped: dict[str, list[str]] = {kind: [] for kind in SKIPPED_LINKS}
    return _images_under(Path(folder).resolve(), Path(folder), skipped)


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
