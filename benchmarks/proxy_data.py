"""A harder digits proxy in CIFAR-10's file layout, for comparing training recipes.

`alexnet_k3.datasets.load_digits` repeats each 8x8 glyph into a fixed, centred, grey
32x32 image, which every recipe learns to ~99%. This writes the same real glyphs
(scikit-learn's 1,797 digits) made harder: each one enlarged to a random 12..20 px
square, mirrored horizontally with p=0.5 (so flip augmentation is neither a help nor a
harm), drawn in a random bright colour on a random dark background at a random place,
with mild noise. Shape is the signal; colour and position are nuisances.

The folder is `cifar-10-batches-py/` as the official tarball extracts it
(`data_batch_1..5`, `test_batch`, `batches.meta`; protocol-2 pickles of dicts with
bytes keys, `b"data"` uint8 rows of R, G, B planes, `b"labels"` a list of ints), so
`alexnet-k3 train --dataset cifar10 --data-dir DIR` reads it with no change.
The class names are the ten digits. Seeded: the same seed writes the same bytes.

Usage:
    python -m benchmarks.proxy_data --out data/digits-proxy --seed 0
    alexnet-k3 train --dataset cifar10 --data-dir data/digits-proxy
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
SIDE = 32
TEST_SIZE = 297  # of 1,797: leaves 1,500 training images, 300 per batch file
GLYPH_SIDES = (12, 20)  # inclusive range of the enlarged glyph's side, in pixels
BACKGROUND_MAX = 90  # background channels are drawn from 0..BACKGROUND_MAX
GLYPH_MIN = 140  # glyph channels are drawn from GLYPH_MIN..255
NOISE_STD = 8.0  # Gaussian pixel noise, in grey levels
CLASS_NAMES = tuple(str(i) for i in range(10))


def _resize_bilinear(glyph: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a square 2-D array (half-pixel centres, edges clamped)."""
    n = glyph.shape[0]
    pos = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    rows = glyph[lo] * (1 - w)[:, None] + glyph[hi] * w[:, None]
    return rows[:, lo] * (1 - w) + rows[:, hi] * w


def render(glyphs: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws each 8x8 glyph (values 0..16) into a 32x32 RGB image.

    Returns:
        uint8 images `(N, 32, 32, 3)` and a bool array `(N,)`: which were mirrored.
    """
    rng = np.random.default_rng(seed)
    n = len(glyphs)
    images = np.empty((n, SIDE, SIDE, 3), np.uint8)
    mirrored = rng.random(n) < 0.5
    for i, glyph in enumerate(glyphs):
        side = int(rng.integers(GLYPH_SIDES[0], GLYPH_SIDES[1] + 1))
        alpha = np.clip(_resize_bilinear(glyph / 16.0, side), 0, 1)
        if mirrored[i]:
            alpha = alpha[:, ::-1]
        top, left = rng.integers(0, SIDE - side + 1, size=2)
        mask = np.zeros((SIDE, SIDE))
        mask[top : top + side, left : left + side] = alpha
        background = rng.integers(0, BACKGROUND_MAX + 1, size=3)
        colour = rng.integers(GLYPH_MIN, 256, size=3)
        mask = mask[..., None]
        image = background * (1 - mask) + colour * mask
        image += rng.normal(0, NOISE_STD, size=image.shape)
        images[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return images, mirrored


def stratified_split(labels: np.ndarray, test_size: int, seed: int):
    """Train and test indices with each class's share of `test_size` (largest remainders)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * test_size / len(labels)
    take = np.floor(quota).astype(int)
    short = test_size - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    train, test = [], []
    for cls, k in zip(classes, take, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _rows(images: np.ndarray) -> np.ndarray:
    # CIFAR rows: the R plane, then G, then B, each 32x32 row-major.
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _dump(path: Path, obj: dict) -> None:
    # Protocol 2, as the official (Python 2) files; the package's unpickler reads it.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_proxy(out, seed: int = 0) -> Path:
    """Writes the proxy's `cifar-10-batches-py/` folder under `out` and returns its path.

    Args:
        out: parent folder (created if needed).
        seed: seed of the rendering and the split.

    Example:
        >>> folder = write_proxy("data/digits-proxy", seed=0)
        >>> load_cifar10(folder).x_train.shape
        (1500, 32, 32, 3)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    images, _ = render(np.asarray(digits.images, dtype=np.float64), seed)
    train, test = stratified_split(labels, TEST_SIZE, seed)
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for number, part in enumerate(np.array_split(train, 5), start=1):
        _dump(
            folder / f"data_batch_{number}",
            {
                b"batch_label": f"digits proxy training batch {number} of 5".encode(),
                b"labels": [int(v) for v in labels[part]],
                b"data": _rows(images[part]),
                b"filenames": [f"digit_{i:04d}.png".encode() for i in part],
            },
        )
    _dump(
        folder / "test_batch",
        {
            b"batch_label": b"digits proxy testing batch 1 of 1",
            b"labels": [int(v) for v in labels[test]],
            b"data": _rows(images[test]),
            b"filenames": [f"digit_{i:04d}.png".encode() for i in test],
        },
    )
    _dump(
        folder / "batches.meta",
        {
            b"num_cases_per_batch": int(np.ceil(len(train) / 5)),
            b"label_names": [name.encode() for name in CLASS_NAMES],
            b"num_vis": SIDE * SIDE * 3,
        },
    )
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="parent folder of cifar-10-batches-py/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendering and split")
    args = parser.parse_args(argv)
    folder = write_proxy(args.out, args.seed)
    print(f"wrote {folder} (1500 train / {TEST_SIZE} test, seed {args.seed})")


if __name__ == "__main__":
    main()
