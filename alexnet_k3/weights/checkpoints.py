"""One entry point for every kind of weights source, all read the safe way.

`open_source` turns what a user passes as `weights=` ('imagenet', a path, a
mapping) into a `Source` without assigning anything, and refuses what is not a
weights file with a message that says what to pass instead. The readers behind
it: `torch_files` (`torch.load(weights_only=True)`, the hash-checked download),
`keras_h5` (`.weights.h5` through h5py) and `sources.mapping_source`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator, Mapping

from alexnet_k3.weights import keras_h5, torch_files
from alexnet_k3.weights.errors import WeightsError, WeightsFileNotFoundError
from alexnet_k3.weights.layouts import ArchitectureTable
from alexnet_k3.weights.sources import Source, mapping_source


@contextlib.contextmanager
def open_source(source, table: ArchitectureTable) -> Iterator[Source]:
    """Opens `source` (a name in `table.pretrained`, a path or a mapping) for `table`.

    A `.weights.h5` file stays open while the context is active.
    """
    if isinstance(source, Mapping):
        yield mapping_source(source, "The given state_dict", table)
        return
    if isinstance(source, str) and source in table.pretrained:
        yield torch_files.read_pretrained(source, table)
        return
    names = " or ".join(repr(name) for name in table.pretrained)
    if not isinstance(source, (str, os.PathLike)):
        raise WeightsError(
            f"Weights must be {names}, the path of a torchvision .pth state_dict or of a "
            ".weights.h5 file, or a mapping of torchvision names to tensors; received an "
            f"object of type {type(source).__name__}."
        )
    path = pathlib.Path(source).expanduser()
    if not path.exists():
        raise WeightsFileNotFoundError(
            f"Weights file '{path}' does not exist. Expected {names}, the path of a "
            "torchvision .pth state_dict, or a .weights.h5 file written by "
            "`alexnet-k3 convert`."
        )
    if not path.is_file():
        raise WeightsError(
            f"Weights path '{path}' is not a file. Give the checkpoint file itself "
            "(a torchvision .pth state_dict or a .weights.h5 file)."
        )
    if path.name.endswith(".keras"):
        raise WeightsError(
            f"'{path}' is a whole saved Keras model, not a weights file. Load it with "
            "`keras.saving.load_model`, or save its weights with `model.save_weights(...)`."
        )
    if path.name.endswith(".h5"):
        with keras_h5.open_weights_h5(path, table) as opened:
            yield opened
        return
    yield torch_files.read_torch_file(path, table)
