"""torchvision's AlexNet as data: its conversion table and its published weights.

`alexnet_k3.AlexNet(variant="torchvision")` is `torchvision.models.alexnet`
layer for layer, so one row per layer is the whole converter; the layout hooks
are shared (`layouts.py`). The record sits next to the table, as torchvision
keeps `AlexNet_Weights` next to its builder.
"""

from __future__ import annotations

import types

from alexnet_k3 import preprocessing
from alexnet_k3.core import IMAGENET_CHECKPOINTS
from alexnet_k3.weights.layouts import ArchitectureTable, Entry
from alexnet_k3.weights.records import PretrainedWeights

IMAGENET1K_V1 = PretrainedWeights(
    name="IMAGENET1K_V1",
    url=IMAGENET_CHECKPOINTS["alexnet"][0],
    sha256_prefix=IMAGENET_CHECKPOINTS["alexnet"][1],
    num_params=61100840,
    num_classes=1000,
    min_size=(63, 63),
    # Preprocess with `alexnet_k3.preprocessing.imagenet_preprocess`: resize the
    # shorter side to 256 (bilinear, antialiased), centre crop 224, scale to [0, 1],
    # normalize with the ImageNet mean/std below. This is torchvision's
    # `AlexNet_Weights.IMAGENET1K_V1.transforms()`.
    resize_size=preprocessing.IMAGENET_RESIZE_SIZE,
    crop_size=preprocessing.IMAGENET_CROP_SIZE,
    mean=preprocessing.IMAGENET_MEAN,
    std=preprocessing.IMAGENET_STD,
    interpolation="bilinear",
    metrics={"ImageNet-1K": {"acc@1": 56.522, "acc@5": 79.066}},
    file_size_mb=233.087,
    gflops=0.714,
    recipe="https://github.com/pytorch/vision/tree/main/references/classification#alexnet-and-vgg",
)

ALEXNET = ArchitectureTable(
    name="alexnet",
    title="torchvision's AlexNet",
    torch_builder="torchvision.models.alexnet",
    keras_builder="AlexNet",
    keras_args="variant='torchvision'",
    entries=(
        Entry("conv1", "features.0", "conv", (64, 3, 11, 11)),
        Entry("conv2", "features.3", "conv", (192, 64, 5, 5)),
        Entry("conv3", "features.6", "conv", (384, 192, 3, 3)),
        Entry("conv4", "features.8", "conv", (256, 384, 3, 3)),
        Entry("conv5", "features.10", "conv", (256, 256, 3, 3)),
        Entry("fc6", "classifier.1", "flatten_dense", (4096, 256 * 6 * 6)),
        Entry("fc7", "classifier.4", "dense", (4096, 4096)),
        Entry("predictions", "classifier.6", "dense", (0, 4096)),
    ),
    # avgpool's output, which torch flattens as C, H, W.
    flatten_shape=(256, 6, 6),
    head="predictions",
    pretrained=types.MappingProxyType({"imagenet": IMAGENET1K_V1}),
)
