"""torchvision's VGG16 as data: its conversion table and its published weights.

`alexnet_k3.VGG16` is `torchvision.models.vgg16` layer for layer; the layout
hooks are AlexNet's (`layouts.py`): thirteen convolutions, the first dense layer
after the (512, 7, 7) flatten, two more dense layers. In torchvision's
`features` every convolution is followed by a ReLU and each block by a max
pooling, which is where the gaps in the indices come from.
"""

from __future__ import annotations

import types

from alexnet_k3 import preprocessing
from alexnet_k3.core import IMAGENET_CHECKPOINTS
from alexnet_k3.weights.layouts import ArchitectureTable, Entry
from alexnet_k3.weights.records import PretrainedWeights

IMAGENET1K_V1 = PretrainedWeights(
    name="IMAGENET1K_V1",
    url=IMAGENET_CHECKPOINTS["vgg16"][0],
    sha256_prefix=IMAGENET_CHECKPOINTS["vgg16"][1],
    num_params=138357544,
    num_classes=1000,
    min_size=(32, 32),
    # torchvision's `VGG16_Weights.IMAGENET1K_V1.transforms()`: AlexNet's transform.
    resize_size=preprocessing.IMAGENET_RESIZE_SIZE,
    crop_size=preprocessing.IMAGENET_CROP_SIZE,
    mean=preprocessing.IMAGENET_MEAN,
    std=preprocessing.IMAGENET_STD,
    interpolation="bilinear",
    metrics={"ImageNet-1K": {"acc@1": 71.592, "acc@5": 90.382}},
    file_size_mb=527.796,
    gflops=15.47,
    recipe="https://github.com/pytorch/vision/tree/main/references/classification#alexnet-and-vgg",
)

VGG16 = ArchitectureTable(
    name="vgg16",
    title="torchvision's VGG16",
    torch_builder="torchvision.models.vgg16",
    keras_builder="VGG16",
    keras_args="",
    entries=(
        Entry("conv1_1", "features.0", "conv", (64, 3, 3, 3)),
        Entry("conv1_2", "features.2", "conv", (64, 64, 3, 3)),
        Entry("conv2_1", "features.5", "conv", (128, 64, 3, 3)),
        Entry("conv2_2", "features.7", "conv", (128, 128, 3, 3)),
        Entry("conv3_1", "features.10", "conv", (256, 128, 3, 3)),
        Entry("conv3_2", "features.12", "conv", (256, 256, 3, 3)),
        Entry("conv3_3", "features.14", "conv", (256, 256, 3, 3)),
        Entry("conv4_1", "features.17", "conv", (512, 256, 3, 3)),
        Entry("conv4_2", "features.19", "conv", (512, 512, 3, 3)),
        Entry("conv4_3", "features.21", "conv", (512, 512, 3, 3)),
        Entry("conv5_1", "features.24", "conv", (512, 512, 3, 3)),
        Entry("conv5_2", "features.26", "conv", (512, 512, 3, 3)),
        Entry("conv5_3", "features.28", "conv", (512, 512, 3, 3)),
        Entry("fc6", "classifier.0", "flatten_dense", (4096, 512 * 7 * 7)),
        Entry("fc7", "classifier.3", "dense", (4096, 4096)),
        Entry("predictions", "classifier.6", "dense", (0, 4096)),
    ),
    # avgpool's output, which torch flattens as C, H, W.
    flatten_shape=(512, 7, 7),
    head="predictions",
    pretrained=types.MappingProxyType({"imagenet": IMAGENET1K_V1}),
)
