"""torchvision <-> Keras weights, for `AlexNet(variant="torchvision")` and `VGG16`.

Laid out by job, as keras-hub lays out its converters, so that a second
architecture is one new table module and a line in `loader.TABLES`:

- `alexnet`: AlexNet's conversion table (Keras layer, torchvision key, layout
  kind, torch shape) and its pretrained record `IMAGENET1K_V1`; `vgg16`: VGG16's
  (`VGG16_IMAGENET1K_V1` here);
- `layouts`: the table types and the layout hooks shared by every table
  (conv OIHW <-> HWIO, dense transpose, the flatten's C,H,W <-> H,W,C order);
- `records`: `PretrainedWeights`, what a set of published weights carries;
- `checkpoints`, `torch_files`, `keras_h5`, `sources`: the safe readers. Every
  checkpoint is untrusted: torch files are read with
  `torch.load(weights_only=True)` (tensors and plain containers, never code),
  `.weights.h5` files with h5py;
- `plan`: every key, shape and dtype is checked before the first weight is
  assigned, so a failed load leaves the model as it was;
- `loader`: the public functions re-exported here.

Nothing here imports `alexnet_k3.model`: the model imports this package, and
`alexnet_k3.convert` (which builds models) sits above both.
"""

from alexnet_k3.weights.alexnet import IMAGENET1K_V1
from alexnet_k3.weights.errors import WeightsError, WeightsFileNotFoundError
from alexnet_k3.weights.loader import (
    load_torchvision_weights,
    load_weights,
    to_torchvision_state_dict,
)
from alexnet_k3.weights.records import PretrainedWeights
from alexnet_k3.weights.vgg16 import IMAGENET1K_V1 as VGG16_IMAGENET1K_V1

__all__ = [
    "IMAGENET1K_V1",
    "PretrainedWeights",
    "VGG16_IMAGENET1K_V1",
    "WeightsError",
    "WeightsFileNotFoundError",
    "load_torchvision_weights",
    "load_weights",
    "to_torchvision_state_dict",
]
