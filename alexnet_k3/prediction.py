"""Prediction: what a model sees in images, as top-k classes with probabilities.

Two kinds of model, told apart by what they take:

- a classifier trained by this package (`alexnet-k3 train`, a `model.keras`): it
  takes uint8 images at its input side and preprocesses them itself, on the device.
  Each file is decoded as the image folders' cache decodes it (shorter side to that
  side, centre square: `alexnet_k3.datasets.decode.decode_image`), so it sees new
  images exactly as it saw its training images. Its classes are the names saved
  with it (`class_names.json`).
- an AlexNet taking normalized float images (`AlexNet(weights="imagenet")`, or
  `--weights imagenet|PATH.pth|PATH.weights.h5`): each file is decoded at full
  size and goes through torchvision's ImageNet evaluation transform on the device
  (`alexnet_k3.preprocessing.imagenet_preprocess`: resize 256, centre crop 224,
  mean/std). 1000 classes are named with ImageNet's class names.

Probabilities are the softmax of the logits, computed in float64 with numpy, so the
same logits give the same numbers on every backend. Images go through in batches of
`batch_size`, so memory stays bounded for any number of files; a file that cannot be
read gets a row saying why instead of stopping the others.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import keras
import numpy as np

from alexnet_k3 import backend
from alexnet_k3.core import atomic_write_text, option_name
from alexnet_k3.datasets.decode import decode_image, read_image
from alexnet_k3.datasets.folder import image_files
from alexnet_k3.preprocessing import (
    IMAGENET_CROP_SIZE,
    IMAGENET_RESIZE_SIZE,
    imagenet_preprocess,
)

OUTPUT_SUFFIXES = (".csv", ".json")


def predict(
    model, images, *, top: int = 5, batch_size: int = 32, class_names=None, arch: str = "alexnet"
) -> list:
    """The `top` most probable classes of each image.

    Args:
        model: a `keras.Model`; the path of a `model.keras` written by
            `alexnet-k3 train` (trained on any backend); or `"imagenet"`, a
            torchvision `.pth` file or a `.weights.h5` file from
            `alexnet-k3 convert`, which builds torchvision's network of `arch`
            with those weights.
        images: an image file or a folder (walked, image files only, sorted), a list
            of them, a uint8 `(H, W, 3)` array, a `(N, H, W, 3)` batch, or a list of
            arrays.
        top: how many classes each row names (at most the model's classes).
        batch_size: images decoded and predicted at once.
        class_names: names of the model's classes, by index (default: those saved
            with the model; ImageNet's for 1000 classes; else the indices).
        arch: with a weights source, the network it holds: "alexnet" or "vgg16"
            (`alexnet_k3.core.ARCHS`).

    Returns:
        One dict per image, in input order: `image` (its path, or `"array[i]"`),
        `top` (a list of `{"index", "class", "probability"}`, most probable first)
        and `error` (None, or why the file could not be read; `top` is then empty).

    Example:
        >>> rows = predict("runs/photos/model.keras", "photos/new", top=3)
        >>> rows[0]["top"][0]["class"], rows[0]["error"]  # doctest: +SKIP
        ('cat', None)
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"{option_name('top', top)} must be a positive integer.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{option_name('batch_size', batch_size)} must be a positive integer.")
    items = _inputs(images)  # bad paths are refused before a model is loaded
    predictor = Predictor(model, class_names, arch=arch)
    return list(predictor.rows(items, top=top, batch_size=batch_size))


class Predictor:
    """A model with the preprocessing and class names its predictions need.

    Args:
        model: see `predict`.
        class_names: see `predict`.
        arch: see `predict`.
    """

    def __init__(self, model, class_names=None, *, arch: str = "alexnet"):
        saved = None
        if not isinstance(model, keras.Model):
            model, saved = _load(model, arch)
        self.model = model
        inputs = model.inputs[0]
        self.takes_uint8 = keras.backend.standardize_dtype(inputs.dtype) == "uint8"
        shape = tuple(inputs.shape[1:])
        # The side the model takes: (H, W, 3) for raw images, either layout for floats.
        self.side = shape[0] if shape[-1] == 3 else shape[1]
        self.num_classes = int(model.outputs[0].shape[-1])
        names = class_names if class_names is not None else saved
        if names is None and self.num_classes == 1000:
            from alexnet_k3.weights.records import imagenet_categories

            names = imagenet_categories()
        names = [str(i) for i in range(self.num_classes)] if names is None else list(names)
        if len(names) != self.num_classes:
            raise ValueError(
                f"{len(names)} class names were given for a model of {self.num_classes} "
                "classes: give one name per class, in index order."
            )
        self.class_names = names

    def rows(self, items: list, *, top: int, batch_size: int) -> Iterator[dict]:
        """Prediction rows (see `predict`) for `items` from `_inputs`, batch by batch."""
        top = min(top, self.num_classes)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            prepared, errors = [], {}
            for index, (_, source) in enumerate(chunk):
                try:
                    prepared.append(self._prepare(source))
                except Exception as error:  # any unreadable file is one bad row
                    errors[index] = f"{type(error).__name__}: {error}"
            probabilities = iter(self._probabilities(prepared))
            for index, (label, _) in enumerate(chunk):
                if index in errors:
                    yield {"image": label, "top": [], "error": errors[index]}
                    continue
                p = next(probabilities)
                best = np.argsort(-p, kind="stable")[:top]
                yield {
                    "image": label,
                    "top": [
                        {"index": int(i), "class": self.class_names[i], "probability": float(p[i])}
                        for i in best
                    ],
                    "error": None,
                }

    def _prepare(self, source) -> np.ndarray:
        """One image as the model takes it (a numpy array without the batch axis)."""
        if self.takes_uint8:
            if isinstance(source, np.ndarray):
                return _fit_square(source, self.side)
            return decode_image(source, self.side)
        image = source if isinstance(source, np.ndarray) else read_image(source)
        crop = self.side or IMAGENET_CROP_SIZE
        # torchvision's margin (256 for 224) at any input side.
        resize = round(crop * IMAGENET_RESIZE_SIZE / IMAGENET_CROP_SIZE)
        tensor = imagenet_preprocess(image[None], resize_size=resize, crop_size=crop)
        return keras.ops.convert_to_numpy(tensor)[0]

    def _probabilities(self, prepared: list) -> np.ndarray:
        if not prepared:
            return np.zeros((0, self.num_classes))
        x = np.stack(prepared)
        feed = backend.array_feed(x, batch_size=len(x))
        logits = np.asarray(self.model.predict(**feed, verbose=0), dtype="float64")
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def _load(source, arch: str):
    """(model, saved class names or None) for a `.keras` path or a weights source."""
    if isinstance(source, (str, Path)) and str(source).endswith(".keras"):
        from alexnet_k3 import runs
        from alexnet_k3.evaluation import load_model

        return load_model(source), runs.saved_class_names(source)
    from alexnet_k3.model import ARCHITECTURES
    from alexnet_k3.weights.loader import build_from_checkpoint

    if arch not in ARCHITECTURES:
        raise ValueError(f"{option_name('arch', arch)} is not one of {list(ARCHITECTURES)}.")
    model = build_from_checkpoint(
        str(source) if isinstance(source, Path) else source,
        lambda classes: ARCHITECTURES[arch](num_classes=classes or 1000),
        architecture=arch,
    )
    return model, None


def _inputs(images) -> list[tuple[str, object]]:
    """`(label, path or array)` per image; missing paths and empty folders refused."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"Image arrays must be (H, W, 3) or (N, H, W, 3) RGB; received shape "
                f"{images.shape}."
            )
        return [(f"array[{i}]", _checked_array(a)) for i, a in enumerate(images)]
    if isinstance(images, (str, Path)):
        images = [images]
    items = []
    for i, entry in enumerate(_as_list(images)):
        if isinstance(entry, np.ndarray):
            if entry.ndim != 3 or entry.shape[-1] != 3:
                raise ValueError(
                    f"images[{i}] must be an (H, W, 3) RGB array; received shape {entry.shape}."
                )
            items.append((f"array[{i}]", _checked_array(entry)))
            continue
        path = Path(entry).expanduser()
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise FileNotFoundError(
                    f"The folder {path} holds no image files (expected files ending in "
                    ".jpg, .jpeg, .png, .bmp, .gif, .webp, .tif or .tiff, at any depth)."
                )
            items += [(str(f), f) for f in files]
        elif path.exists():
            items.append((str(path), path))  # named explicitly: tried whatever its suffix
        else:
            raise FileNotFoundError(f"No image or folder at {path}: check the path.")
    if not items:
        raise ValueError("No images were given: pass image files, folders or arrays.")
    return items


def _as_list(images: Iterable) -> list:
    try:
        return list(images)
    except TypeError:
        raise TypeError(
            "images must be a path, a list of paths or an image array; received an object "
            f"of type {type(images).__name__}."
        ) from None


def _checked_array(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ValueError(
            f"Image arrays must be uint8 (0-255), as decoded files are; received {image.dtype}. "
            "Convert with np.clip(x, 0, 255).astype('uint8')."
        )
    return image


def _fit_square(image: np.ndarray, side: int) -> np.ndarray:
    """An array image as `decode_image` makes a file: shorter side to `side`, centre square."""
    if image.shape[:2] == (side, side):
        return image
    from PIL import Image, ImageOps

    fitted = ImageOps.fit(Image.fromarray(image), (side, side), Image.Resampling.BILINEAR)
    return np.asarray(fitted, dtype=np.uint8)


# --- Output ------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    """The rows as a markdown table: one line per image and rank."""
    lines = ["| image | rank | class | probability |", "|---|---:|---|---:|"]
    for row in rows:
        if row["error"]:
            lines.append(f"| {_cell(row['image'])} | - | not read: {_cell(row['error'])} | - |")
        for rank, entry in enumerate(row["top"], start=1):
            lines.append(
                f"| {_cell(row['image'])} | {rank} | {_cell(entry['class'])} | "
                f"{entry['probability']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out) -> Path:
    """Writes the rows to `out`: `.json` (the rows as returned) or `.csv` (one line per
    image: image, error, then class, index and probability for each rank)."""
    out = Path(out)
    check_output(out)
    if out.suffix.lower() == ".json":
        text = json.dumps(rows, indent=1) + "\n"
    else:
        ranks = max((len(row["top"]) for row in rows), default=0)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["image", "error"]
        for rank in range(1, ranks + 1):
            header += [f"class_{rank}", f"index_{rank}", f"probability_{rank}"]
        writer.writerow(header)
        for row in rows:
            line = [row["image"], row["error"] or ""]
            for entry in row["top"]:
                line += [entry["class"], entry["index"], repr(entry["probability"])]
            writer.writerow(line)
        text = buffer.getvalue()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    except OSError as error:  # which may name the temporary file: name the user's
        raise type(error)(
            f"{option_name('out', str(out))}: could not write it "
            f"({error.strerror or type(error).__name__}). {_WRITABLE}"
        ) from error
    return out


_WRITABLE = "Give a file in a folder you can write to, e.g. predictions.csv."


def check_output(out) -> None:
    """Refuses an output file `write` cannot write, before any work is done."""
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"{option_name('out', str(out))}: expected a file ending in .csv or .json, "
            "e.g. predictions.csv."
        )
    if out.is_dir():
        raise IsADirectoryError(f"{option_name('out', str(out))} is a folder. {_WRITABLE}")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:  # the folder mkdir would start in
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{option_name('out', str(out))}: cannot write in {folder} "
            f"({'not a folder' if not folder.is_dir() else 'not writable'}). {_WRITABLE}"
        )


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
