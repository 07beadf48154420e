"""Reading a Keras `.weights.h5` file (`alexnet-k3 convert`, `model.save_weights`).

Keras' public loader (`model.load_weights`) cannot serve here: it matches layers
by their position in the model, not by name; with `skip_mismatch` it only warns,
in prose, about what it skipped; and it never says what shapes the file holds.
The loader needs all three: to take a 1000-class file into a 10-class model
skipping only the head, to name the bad layer with both shapes, to read the
number of classes before building a model (`convert`), and to check everything
before assigning anything. So the file is read with h5py, and the one assumption
about Keras' private file layout lives in `keras_h5_variables`, checked against
the installed Keras by `tests/test_weights.py::test_weights_h5_layout`.

The file is untrusted: datasets are left unread until their shapes have been
checked, and links or external storage (which can point into other files) are
refused, as Keras' own loader refuses them.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from typing import Any

from alexnet_k3.weights.errors import WeightsError
from alexnet_k3.weights.layouts import ArchitectureTable
from alexnet_k3.weights.sources import Source

_PARAM_NAMES = ("kernel", "bias")  # a Dense or Conv2D layer's variables, in order


@contextlib.contextmanager
def open_weights_h5(path: pathlib.Path, table: ArchitectureTable) -> Iterator[Source]:
    """The variables of the `.weights.h5` file `path`, keyed `layer/kernel`, as a `Source`.

    The file stays open (its datasets unread) while the context is active.
    """
    import h5py

    label = f"Weights file '{path}'"
    try:
        file = h5py.File(path, "r")
    except Exception as error:  # noqa: BLE001 - h5py raises OSError subclasses and more
        raise WeightsError(
            f"{label} is not a readable HDF5 file ({type(error).__name__}: {error}). "
            "Expected a .weights.h5 file written by `alexnet-k3 convert` or "
            "`model.save_weights`; if it is truncated, write it again."
        ) from error
    with file:
        try:
            variables = keras_h5_variables(file)
        except WeightsError as error:
            raise WeightsError(f"{label} {error}") from None
        except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
            raise WeightsError(
                f"{label} is damaged ({type(error).__name__}: {error}). Write it again with "
                "`alexnet-k3 convert`."
            ) from error
        tensors = {}
        for name, datasets in variables.items():
            known = name in table.layer_names
            for index, dataset in enumerate(datasets):
                param = _PARAM_NAMES[index] if known and index < len(_PARAM_NAMES) else None
                tensors[f"{name}/{param}" if param else f"{name}/vars/{index}"] = dataset
        yield Source(label, "keras", tensors, path)


def keras_h5_variables(file) -> dict[str, list[Any]]:
    """The variables of a `model.save_weights()` file by layer name, in order, unread.

    The only code that knows Keras' private layout of `.weights.h5` (Keras 3's
    `saving_lib.H5IOStore`): layer `i` of a class is the group `layers/<class>_<i>`,
    its variables are the datasets `vars/0`, `vars/1`, ... and its name is the
    `name` attribute of `vars`. Layers without variables are left out.
    """
    import h5py

    layers = _member(file, "layers", h5py.Group)
    if layers is None:
        raise WeightsError(
            "is not a Keras .weights.h5 file (it has no 'layers' group). Expected a file "
            "written by `alexnet-k3 convert` or `model.save_weights`."
        )
    found = {}
    for group_name in layers:
        group = _member(layers, group_name, h5py.Group)
        variables = _member(group, "vars", h5py.Group) if group is not None else None
        if variables is None or len(variables) == 0:
            continue
        name = variables.attrs.get("name", group_name)
        name = name.decode() if isinstance(name, bytes) else str(name)
        indices = sorted(variables, key=lambda k: (len(k), k))
        found[name] = [_member(variables, index, h5py.Dataset) for index in indices]
    return found


def _member(group, name: str, kind):
    """`group[name]` if it is a `kind` stored in this file; None if absent or another kind."""
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        return None
    member = group[name] if isinstance(link, h5py.HardLink) else None
    if member is None or (
        isinstance(member, h5py.Dataset) and (member.external or member.is_virtual)
    ):
        raise WeightsError(
            f"refers to data outside itself at '{group.name.rstrip('/')}/{name}' (a link, "
            "external or virtual dataset), which could read other files, so it is not "
            "loaded. Write it again with `alexnet-k3 convert` or `model.save_weights`."
        )
    return member if isinstance(member, kind) else None
