"""An opened checkpoint, whatever it was read from, before anything is assigned.

Every reader (torch files, `.weights.h5`, mappings, the 'imagenet' download)
ends in a `Source`: tensors keyed either by torchvision's names or by Keras'
`layer/kernel` names, left unread where the reader allows it (h5py datasets,
memory-mapped torch tensors), so that the whole checkpoint is checked against
the model before a single array is converted.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from alexnet_k3.weights.errors import WeightsError
from alexnet_k3.weights.layouts import ArchitectureTable, Entry


@dataclass
class Source:
    """An opened checkpoint: tensors keyed in `layout` ("torch" or "keras")."""

    label: str  # how messages name it
    layout: str
    tensors: Mapping[str, Any]
    path: pathlib.Path | None = None

    def key(self, entry: Entry, param: str) -> str:
        if self.layout == "torch":
            return f"{entry.prefix}.{param}"
        return f"{entry.layer}/{'kernel' if param == 'weight' else 'bias'}"

    def expected_shape(self, entry: Entry, param: str, num_classes: int) -> tuple[int, ...]:
        if self.layout == "torch":
            return entry.torch_shape_of(param, num_classes)
        return entry.keras_shape_of(param, num_classes)

    def head_classes(self, table: ArchitectureTable) -> int | None:
        """The number of classes of the checkpoint's classifier, if it has one."""
        value = self.tensors.get(self.key(table.head_entry, "weight"))
        shape = shape_of(value) if value is not None else None
        if shape is None or len(shape) != 2:
            return None
        return shape[0] if self.layout == "torch" else shape[1]

    def to_keras(self, table: ArchitectureTable, entry: Entry, param: str) -> np.ndarray:
        array = to_numpy(self.tensors[self.key(entry, param)])
        if self.layout == "torch":
            array = table.to_keras(entry, param, array)
        return np.ascontiguousarray(array, dtype=np.float32)


def mapping_source(
    mapping: Mapping, label: str, table: ArchitectureTable, path: pathlib.Path | None = None
) -> Source:
    """A torchvision state_dict (torch tensors or arrays by name) as a `Source`."""
    example = f"{table.entries[0].prefix}.weight"
    bad_keys = [k for k in mapping if not isinstance(k, str)]
    if bad_keys:
        raise WeightsError(
            f"{label} has a key {bad_keys[0]!r} of type {type(bad_keys[0]).__name__}; a "
            f"state_dict maps torchvision parameter names (str, e.g. {example!r}) to tensors."
        )
    for key, value in mapping.items():
        if shape_of(value) is None:
            if isinstance(value, Mapping):
                hint = (
                    f" It looks like a training checkpoint with the weights under {key!r}: "
                    f"pass that entry, or re-save it with `torch.save(model.state_dict(), path)`."
                )
            else:
                hint = (
                    " Expected torch tensors or numpy arrays keyed by torchvision's names "
                    f"({example}, ...)."
                )
            raise WeightsError(
                f"{label} is not a state_dict of tensors: the value of {key!r} is a "
                f"{type(value).__name__}.{hint}"
            )
    return Source(label, "torch", mapping, path)


def shape_of(value) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


def dtype_name(value) -> str:
    dtype = getattr(value, "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else type(value).__name__


def is_float(value) -> bool:
    if hasattr(value, "is_floating_point"):  # torch.Tensor
        return bool(value.is_floating_point())
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    try:
        return np.dtype(dtype).kind == "f" or str(dtype) == "bfloat16"
    except TypeError:
        return str(dtype) in ("bfloat16", "float16", "float32", "float64")


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor: numpy has no bfloat16
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f":  # e.g. ml_dtypes' bfloat16
        array = array.astype(np.float32)
    return array
