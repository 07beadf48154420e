"""The public loaders: torchvision checkpoints into Keras models, and back.

Each function finds the architecture table that fits the model (`TABLES`; a
second architecture adds its table there), opens the source, checks it all
(`plan.make_plan`) and only then assigns. This module imports no model builder:
`alexnet_k3.model` imports it (lazily), and `alexnet_k3.convert`, which builds
models, sits above both.
"""

from __future__ import annotations

import numpy as np

from alexnet_k3.weights.alexnet import ALEXNET
from alexnet_k3.weights.checkpoints import open_source
from alexnet_k3.weights.errors import WeightsError
from alexnet_k3.weights.layouts import PARAMS, ArchitectureTable
from alexnet_k3.weights.plan import assign, check_source, describe_model, make_plan
from alexnet_k3.weights.sources import Source
from alexnet_k3.weights.vgg16 import VGG16

# Every architecture with a converter table; read at call time.
TABLES: tuple[ArchitectureTable, ...] = (ALEXNET, VGG16)


def table_for(model) -> ArchitectureTable:
    """The table whose layers the model has the largest share of (ties: the first)."""
    names = {layer.name for layer in getattr(model, "layers", ())}
    return max(TABLES, key=lambda t: len(names & t.layer_names) / len(t.layer_names))


def table_named(name: str) -> ArchitectureTable:
    """The table called `name` ("alexnet")."""
    for table in TABLES:
        if table.name == name:
            return table
    known = ", ".join(repr(t.name) for t in TABLES)
    raise WeightsError(f"No converter table named {name!r}; expected one of {known}.")


def check_architecture(table: ArchitectureTable, source: Source) -> None:
    """Refuses, in one line naming both, a checkpoint of another table's architecture.

    A source is of another architecture when it holds every convolution of that
    table's and not all of `table`'s (read by layer names, before any tensor).
    """
    torch_layout = source.layout == "torch"
    present = {
        k.rpartition(".")[0] if torch_layout else k.partition("/")[0] for k in source.tensors
    }

    def fits(candidate: ArchitectureTable) -> bool:
        names = {e.prefix if torch_layout else e.layer for e in candidate.features}
        return names <= present

    if fits(table):
        return
    for other in TABLES:
        if other is not table and fits(other):
            raise WeightsError(
                f"{source.label} holds the weights of {other.title} (`{other.torch_builder}`), "
                f"but the model is {table.title} (`alexnet_k3.{table.keras_model}`): load it "
                f"into `alexnet_k3.{other.keras_model}` (--arch {other.name}), or give "
                f"{table.title} weights (--arch {table.name})."
            )


def _load(model, source, *, skip_mismatched_head: bool):
    layout = describe_model(model, table_for(model))
    with open_source(source, layout.table) as opened:
        check_architecture(layout.table, opened)
        plan = make_plan(layout, opened, skip_mismatched_head)
    assign(plan)
    return model


def load_torchvision_weights(model, source, *, skip_mismatched_head: bool = False):
    """Loads torchvision weights into a Keras `AlexNet(variant="torchvision")` or `VGG16`.

    The architecture is the model's (`TABLES`: the table whose layers it has);
    a checkpoint of the other one is refused, naming both.

    Nothing is assigned until the whole checkpoint has been checked against the
    model: after any error the model's weights are unchanged.

    Args:
        model: a model built by `alexnet_k3.AlexNet(variant="torchvision")` or
            `alexnet_k3.VGG16()` (any `num_classes`, `include_top`, input size or
            image data format).
        source: one of
            - `"imagenet"`: torchvision's `AlexNet_Weights.IMAGENET1K_V1`
              (`IMAGENET1K_V1`) or `VGG16_Weights.IMAGENET1K_V1`
              (`VGG16_IMAGENET1K_V1`), downloaded (`alexnet_k3.downloads`: a timeout,
              `ALEXNET_K3_DOWNLOAD_TIMEOUT`) and checked against the record's SHA-256
              into `torch.hub.get_dir()/checkpoints/`, or read from there when cached;
            - the path of a torchvision checkpoint (`.pth`/`.pt`), a state_dict saved
              with `torch.save(model.state_dict(), path)`; read with
              `torch.load(weights_only=True)`, which refuses any pickled code;
            - the path of a `.weights.h5` file written by `convert_checkpoint`
              (`alexnet-k3 convert`), which needs no torch;
            - a mapping of torchvision names (`features.0.weight`, ...) to torch
              tensors or arrays.
        skip_mismatched_head: the checkpoint's classifier (`classifier.6`) has to
            match the model's `predictions` layer unless this is True; then a
            classifier for another number of classes is skipped and `predictions`
            keeps its current (fresh) weights: transfer learning, as
            `AlexNet(weights=..., num_classes=N)` does. A model built with
            `include_top=False` takes only the convolutions in either case.

    Returns:
        `model`, with its weights replaced.

    Raises:
        WeightsError (a ValueError): a file that is missing (also a
        `FileNotFoundError`), unreadable, truncated, carrying pickled objects other
        than tensors, of another architecture, with a missing, unexpected or
        wrongly shaped tensor, or a model that is not torchvision's AlexNet. The
        message names the file and the first bad key with the expected and
        received shapes.

    Example:
        >>> import torchvision
        >>> model = alexnet_k3.AlexNet()
        >>> state = torchvision.models.alexnet().state_dict()
        >>> alexnet_k3.load_torchvision_weights(model, state)  # or a .pth path
    """
    return _load(model, source, skip_mismatched_head=skip_mismatched_head)


def load_weights(model, weights) -> None:
    """`AlexNet(weights=...)`'s loader: `"imagenet"`, a `.pth`/`.pt` or a `.weights.h5` path.

    A `predictions` layer whose number of classes differs from the checkpoint's is
    left freshly initialized (every other layer is loaded); a model without a top
    takes only the convolutions. Any other mismatch raises `WeightsError` with the
    model unchanged. See `load_torchvision_weights`.

    Args:
        model: the freshly built `AlexNet(variant="torchvision", ...)`.
        weights: `"imagenet"` or the path of a `.pth`/`.pt`/`.weights.h5` file.

    Example:
        >>> model = alexnet_k3.AlexNet(num_classes=10)
        >>> load_weights(model, "alexnet_imagenet.weights.h5")  # all but the head
    """
    _load(model, weights, skip_mismatched_head=True)


def check_checkpoint(weights, architecture: str) -> None:
    """Reads and checks a weights file as `load_weights` will, before any model exists.

    Everything `load_weights` checks (a weights file read the safe way, of
    `architecture`, with every key, shape and dtype a model with a top needs; the
    classifier may be of any number of classes) is checked here, so a training run
    refuses a bad checkpoint before it reads any data. Pretrained names
    ("imagenet") are checked by their own SHA-256 when read, and pass here.

    Args:
        weights: the path of a `.pth`/`.pt` or `.weights.h5` file, or a pretrained name.
        architecture: the table's name, "alexnet" or "vgg16" (`--arch`).

    Raises:
        WeightsError: what `load_weights` would raise for this file.

    Example:
        >>> check_checkpoint("alexnet_imagenet.weights.h5", "alexnet")
    """
    table = table_named(architecture)
    if isinstance(weights, str) and weights in table.pretrained:
        return
    with open_source(weights, table) as opened:
        check_architecture(table, opened)
        check_source(table, True, None, opened, skip_mismatched_head=True)


def to_torchvision_state_dict(model) -> dict[str, np.ndarray]:
    """The weights of a Keras torchvision-variant AlexNet or VGG16 as a torchvision state_dict.

    Args:
        model: an `AlexNet(variant="torchvision", num_classes=N)` or a
            `VGG16(num_classes=N)`, with its top.

    Returns:
        A dict of float32 numpy arrays, in torchvision's key order and layouts.
        `torch.nn.Module.load_state_dict` takes tensors, not arrays, so wrap them
        with `torch.from_numpy`; the torchvision model then computes what the Keras
        model computes.

    Example:
        >>> state = alexnet_k3.to_torchvision_state_dict(model)
        >>> net = torchvision.models.alexnet(num_classes=model.output_shape[-1])
        >>> net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    """
    layout = describe_model(model, table_for(model))
    table = layout.table
    if not layout.has_top:
        prefixes = "/".join(e.prefix for e in table.top)
        raise WeightsError(
            f"The model was built with include_top=False, but {table.title} always has "
            f"its classifier ({prefixes}): export a model built with include_top=True."
        )
    state = {}
    for entry in table.entries:
        arrays = layout.layers[entry.layer].get_weights()
        for param, array in zip(PARAMS, arrays, strict=True):
            array = table.to_torch(entry, param, np.asarray(array, dtype=np.float32))
            state[f"{entry.prefix}.{param}"] = np.ascontiguousarray(array)
    return state


def build_from_checkpoint(source, build, *, architecture: str, num_classes: int | None = None):
    """A new model built by `build(num_classes)` holding the checkpoint `source`.

    The checkpoint is opened first, so that the model gets the checkpoint's number
    of classes (`num_classes=None`) or a different requested one is refused: the
    model never carries a random classifier.

    Args:
        source: anything `load_torchvision_weights` takes.
        build: called with the number of classes (None when the checkpoint has no
            classifier), returns the model.
        architecture: the table's name, "alexnet" or "vgg16" (`--arch`).
        num_classes: None, or the number of classes the checkpoint must have.

    Returns:
        The model, with every weight from `source`.

    Example:
        >>> model = build_from_checkpoint("x.pth", lambda n: AlexNet(num_classes=n or 1000),
        ...                               architecture="alexnet")
    """
    table = table_named(architecture)
    with open_source(source, table) as opened:
        check_architecture(table, opened)
        found = opened.head_classes(table)
        if num_classes is not None and found is not None and found != num_classes:
            raise WeightsError(
                f"{opened.label} classifies {found} classes, but num_classes={num_classes} "
                f"was requested. Pass num_classes={found} (or leave it unset)."
            )
        model = build(num_classes or found)
        plan = make_plan(describe_model(model, table), opened, skip_mismatched_head=False)
    assign(plan)
    return model
