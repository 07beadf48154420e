"""Image folders for the tests: crops of real photos in every format and mode, the digits
as PNG files, and the bad files a folder may hold.

The photos are scikit-learn's two sample images (`china.jpg`, `flower.jpg`), so the
two classes differ the way photographs do.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("china", "flower")


def photo(name: str) -> np.ndarray:
    """scikit-learn's sample photo `name` ("china" or "flower"), uint8 (427, 640, 3)."""
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    return sample.images[[Path(f).stem for f in sample.filenames].index(name)]


def crops(name: str, count: int, shape=(60, 80), seed: int = 0) -> list[np.ndarray]:
    """`count` random crops of photo `name`, each `shape` (height, width)."""
    image = photo(name)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        top = rng.integers(0, image.shape[0] - shape[0] + 1)
        left = rng.integers(0, image.shape[1] - shape[1] + 1)
        out.append(np.ascontiguousarray(image[top : top + shape[0], left : left + shape[1]]))
    return out


def save_every_format(folder: Path, crop: np.ndarray) -> list[Path]:
    """`crop` saved in every format and mode the folder loader reads; the files written.

    JPEG (RGB, grey, CMYK, EXIF-rotated), PNG (RGB, RGBA, 16-bit grey, palette with a
    transparent colour), BMP, GIF (two frames), WebP, TIFF (RGB and 16-bit grey).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(crop)
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    saved = {
        "rgb.jpg": (rgb, {}),
        "grey.jpeg": (rgb.convert("L"), {}),
        "cmyk.jpg": (rgb.convert("CMYK"), {}),
        "rotated.JPG": exif_rotated(rgb),
        "rgb.png": (rgb, {}),
        "rgba.png": (rgba, {}),
        "grey16.png": (grey16, {}),
        "palette.png": (rgb.convert("P"), {"transparency": 0}),
        "rgb.bmp": (rgb, {}),
        "rgb.webp": (rgb, {"quality": 90}),
        "rgb.tif": (rgb, {}),
        "grey16.tiff": (grey16, {}),
    }
    paths = []
    for name, (image, options) in saved.items():
        paths.append(folder / name)
        image.save(paths[-1], **options)
    second = Image.fromarray(255 - crop)
    paths.append(folder / "two-frames.gif")
    rgb.save(paths[-1], save_all=True, append_images=[second])
    return paths


def exif_rotated(image: Image.Image):
    """`image` stored turned 90 degrees clockwise, with the EXIF orientation (6) that
    turns it back: (image to save, save options)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: "rotate 90 CW to display"
    return image.transpose(Image.Transpose.ROTATE_90), {"exif": exif.tobytes()}


def write_photo_folder(root: Path, per_class: int = 6, shape=(60, 80)) -> Path:
    """`root/<china|flower>/NN.jpg`: `per_class` crops of each photo; returns `root`."""
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(crops(name, per_class, shape, seed=len(name))):
            Image.fromarray(crop).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def write_digits_folder(root: Path) -> Path:
    """scikit-learn's digits as 32x32 grey PNGs, `root/{train,test}/<digit>/NNNN.png`,
    in the split of `alexnet_k3.datasets.load_digits` (the same pixels); returns `root`."""
    from alexnet_k3.datasets import load_digits

    data = load_digits()
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        for i, (image, label) in enumerate(zip(x, y)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(folder / f"{i:04d}.png")
    return root


def jpeg_bytes(crop: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# The bad files a folder may hold, by name: (file name, bytes).
BAD_FILES = {
    "truncated": ("truncated.jpg", lambda crop: jpeg_bytes(crop)[:400]),
    "empty": ("empty.jpg", lambda crop: b""),
    "text": ("notes.jpg", lambda crop: b"these are my notes, not a photo\n"),
}
