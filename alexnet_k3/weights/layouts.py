"""How a torchvision checkpoint maps onto a Keras model: a table plus layout hooks.

As in keras-hub's converters (`utils/timm/convert_vgg.py`), an architecture is
described by data alone, an `ArchitectureTable` of (Keras layer, torchvision key
prefix, tensor kind, torch shape) rows, and every tensor of a kind is converted
by the same hook. Nothing here knows an architecture: VGG16 (13 convolutions,
3 dense layers, a (512, 7, 7) flatten) is a new table module, not new code.

The kinds:

- `"conv"`: torch `(out, in, kh, kw)` <-> Keras `(kh, kw, in, out)`;
- `"dense"`: torch `(out, in)` <-> Keras `(in, out)`;
- `"flatten_dense"`: the first dense layer after the flatten. torch flattens the
  `(C, H, W)` feature map (the table's `flatten_shape`) in C, H, W order, Keras'
  `Flatten` in H, W, C order under either image data format (it transposes
  channels-first maps first), so the input axis of the matrix is permuted too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from alexnet_k3.weights.records import PretrainedWeights

KINDS = ("conv", "dense", "flatten_dense")
PARAMS = ("weight", "bias")  # torch names; Keras calls them kernel and bias


@dataclass(frozen=True)
class Entry:
    """One layer of a table: a Keras layer and the torchvision tensors it holds."""

    layer: str  # Keras layer name
    prefix: str  # torchvision state_dict key prefix
    kind: str  # one of KINDS
    torch_shape: tuple[int, ...]  # torchvision's weight shape; 0 stands for num_classes

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"Entry {self.layer!r}: kind must be one of {KINDS}, got {self.kind!r}"
            )

    def torch_shape_of(self, param: str, num_classes: int) -> tuple[int, ...]:
        shape = tuple(num_classes if d == 0 else d for d in self.torch_shape)
        return shape if param == "weight" else shape[:1]

    def keras_shape_of(self, param: str, num_classes: int) -> tuple[int, ...]:
        shape = self.torch_shape_of(param, num_classes)
        if param == "bias":
            return shape
        if self.kind == "conv":
            out, inp, kh, kw = shape
            return (kh, kw, inp, out)
        return shape[::-1]


@dataclass(frozen=True)
class ArchitectureTable:
    """Everything the loader needs to know about one torchvision architecture.

    The words fill the error messages: `title` ("torchvision's AlexNet"),
    `torch_builder` ("torchvision.models.alexnet"), `keras_builder` ("AlexNet") and
    the arguments that select the matching model (`keras_args`, "variant='torchvision'");
    `name` is the stem of suggested file names.
    `pretrained` maps the names that `weights=` takes ("imagenet") to records.
    """

    name: str
    title: str
    torch_builder: str
    keras_builder: str
    keras_args: str
    entries: tuple[Entry, ...]
    flatten_shape: tuple[int, int, int]  # (C, H, W) of the map the flatten sees
    head: str  # the classifier layer, dropped when the number of classes differs
    pretrained: Mapping[str, PretrainedWeights]

    def __post_init__(self):
        # Table typos surface when the table is written, not at a user's first load.
        if self.entries[-1].layer != self.head:
            raise ValueError(f"{self.name}: the head {self.head!r} must be the last entry")
        flat = [e for e in self.entries if e.kind == "flatten_dense"]
        if len(flat) != 1 or flat[0].torch_shape[1] != math.prod(self.flatten_shape):
            raise ValueError(
                f"{self.name}: expected one flatten_dense entry taking "
                f"{math.prod(self.flatten_shape)} inputs (flatten_shape {self.flatten_shape})"
            )

    @property
    def keras_model(self) -> str:
        """The call that builds the model, e.g. "AlexNet(variant='torchvision')"."""
        return f"{self.keras_builder}({self.keras_args})"

    @property
    def features(self) -> tuple[Entry, ...]:
        """The entries before the flatten: what an `include_top=False` model has."""
        return self.entries[: self.entries.index(self.top[0])]

    @property
    def top(self) -> tuple[Entry, ...]:
        """The classifier: the first dense layer after the flatten and all after it."""
        index = next(i for i, e in enumerate(self.entries) if e.kind == "flatten_dense")
        return self.entries[index:]

    @property
    def head_entry(self) -> Entry:
        return self.entries[-1]

    @property
    def layer_names(self) -> frozenset[str]:
        return frozenset(e.layer for e in self.entries)

    def to_keras(self, entry: Entry, param: str, array: np.ndarray) -> np.ndarray:
        """One torchvision tensor (as numpy) in the layout of its Keras variable."""
        if param == "bias":
            return array
        if entry.kind == "conv":
            return array.transpose(2, 3, 1, 0)
        if entry.kind == "flatten_dense":
            channels, height, width = self.flatten_shape
            out = array.shape[0]
            # (out, C, H*W) -> (out, H*W, C) -> transposed: (H*W*C, out)
            array = array.reshape(out, channels, height * width).transpose(0, 2, 1)
            return transpose_2d(array.reshape(out, height * width * channels))
        return transpose_2d(array)

    def to_torch(self, entry: Entry, param: str, array: np.ndarray) -> np.ndarray:
        """The inverse of `to_keras`."""
        if param == "bias":
            return array
        if entry.kind == "conv":
            return array.transpose(3, 2, 0, 1)
        if entry.kind == "flatten_dense":
            channels, height, width = self.flatten_shape
            out = array.shape[1]
            # (H*W*C, out) -> transposed: (out, H*W, C) -> (out, C, H*W)
            array = transpose_2d(array).reshape(out, height * width, channels)
            return array.transpose(0, 2, 1).reshape(out, channels * height * width)
        return transpose_2d(array)


def transpose_2d(array: np.ndarray, rows: int = 64, cols: int = 512) -> np.ndarray:
    """`array.T` as a new C-contiguous array, copied tile by tile.

    numpy's own transposing copy walks one side with a large stride and misses the
    cache on every element: tiles make it three times faster on AlexNet's fc6
    (38M values).
    """
    out = np.empty(array.shape[::-1], dtype=array.dtype)
    for i in range(0, array.shape[0], rows):
        for j in range(0, array.shape[1], cols):
            out[j : j + cols, i : i + rows] = array[i : i + rows, j : j + cols].T
    return out
