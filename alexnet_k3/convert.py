"""`alexnet-k3 convert`: a torchvision checkpoint once, a Keras weights file after.

The converted `.weights.h5` is what Keras itself writes and reads, so the
weights then load without torch, on any backend. This module builds an
`AlexNet`, so it sits above both `alexnet_k3.model` and `alexnet_k3.weights`
(which may not import the model).
"""

from __future__ import annotations

import pathlib

from alexnet_k3.core import atomic_save
from alexnet_k3.weights import WeightsError
from alexnet_k3.weights.loader import build_from_checkpoint


def convert_checkpoint(
    source, out, *, num_classes: int | None = None, arch: str = "alexnet"
) -> pathlib.Path:
    """Converts a torchvision AlexNet (or VGG16) checkpoint into a Keras `.weights.h5` file.

    The file is what `AlexNet(num_classes=N).save_weights(out)` writes (`VGG16(...)`
    with `arch="vgg16"`), so it loads without torch, on any backend:
    `AlexNet(weights=out)` or `model.load_weights(out)`.
    It is written to a temporary name first and renamed, so a failed conversion
    leaves no partial file.

    Args:
        source: `"imagenet"`, a `.pth` path or a mapping, as for
            `load_torchvision_weights`.
        out: path of the file to write; must end in `.weights.h5`.
        num_classes: the checkpoint's number of classes; None reads it from
            `classifier.6`. A different value is an error (a converted file never
            carries a random classifier).
        arch: the checkpoint's network, "alexnet" or "vgg16"; a checkpoint of the
            other one is refused, naming both.

    Returns:
        The path written.

    Raises:
        WeightsError: a bad `out` or `num_classes`, or a checkpoint that does not
            load (see `load_torchvision_weights`); nothing is written then.

    Example:
        >>> convert_checkpoint("imagenet", "alexnet_imagenet.weights.h5")
        >>> model = alexnet_k3.AlexNet(weights="alexnet_imagenet.weights.h5")
    """
    from alexnet_k3.model import ARCHITECTURES

    out = pathlib.Path(out).expanduser()
    if not out.name.endswith(".weights.h5"):
        stem = out.name.split(".")[0] or "weights"
        raise WeightsError(
            f"The output file '{out}' must end in '.weights.h5' (Keras' weights format), "
            f"e.g. '{out.with_name(stem + '.weights.h5')}'."
        )
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise WeightsError(f"num_classes must be a positive integer, received {num_classes!r}.")
    if arch not in ARCHITECTURES:
        raise WeightsError(f"arch must be one of {list(ARCHITECTURES)}, received {arch!r}.")
    model = build_from_checkpoint(
        source,
        lambda classes: ARCHITECTURES[arch](num_classes=classes or 1000),
        architecture=arch,
        num_classes=num_classes,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(model.save_weights, out)
    return out
