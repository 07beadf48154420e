"""The plain PyTorch loop's parts: torch's AlexNets, their inputs, one epoch, prediction.

What the course notebooks wrote by hand, in torch only (`alexnet_k3.reference`
runs it as a run of the package):

- the models: `CifarAlexNet`, the layers of `alexnet_k3.model.VARIANTS["cifar"]`
  written in torch (3,723,946 parameters for 10 classes as Keras counts them,
  batch norm's running statistics included; 32x32 by default), and
  `torchvision.models.alexnet` for the torchvision variant (224x224 by default);
- their inputs, what the package's Keras model feeds its network
  (`preprocessing.input_pipeline`): uint8 images scaled to [0, 1], padded by 4
  pixels and cropped back at random and flipped (in training, when asked),
  resized bilinearly to the input side, normalized with ImageNet's mean and std;
- `run_epoch`: shuffle, forward, cross-entropy, `optimizer.step()`, batch after batch;
- `predict_logits`: the logits of numpy images, in eval mode.

Keras-free: this module imports torch, never Keras.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from alexnet_k3.core import option_name

# First: without torch nothing else here is worth loading.
try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError as error:
    raise ImportError(
        f"{option_name('implementation', 'torch-reference')} trains in plain PyTorch, but "
        f"torch cannot be imported ({error}). Install it (pip install alexnet-k3[torch]), "
        f"or train the Keras model: leave out {option_name('implementation')}."
    ) from None

# `alexnet_k3.preprocessing.IMAGENET_MEAN/STD` (torchvision's ImageNet statistics) and
# `alexnet_k3.model.default_input_size` of each variant, restated here because those
# modules import Keras; tests/test_reference.py checks that they agree.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZES = {"cifar": 32, "torchvision": 224}
VARIANTS = tuple(DEFAULT_SIZES)
MOMENTUM = 0.9
# The pad-crop augmentation's largest shift, as `preprocessing.input_pipeline`'s.
AUGMENT_PADDING = 4


class SamePadMaxPool2d(nn.Module):
    """Max pooling padded as Keras's `MaxPooling2D(padding="same")` pads, with -inf.

    TensorFlow's rule, which Keras follows on every backend: the output side is
    `ceil(side / stride)`, and the padding that needs is split with the odd pixel
    at the bottom and right. torch's symmetric `padding=` would shift every
    window of an even side by a pixel.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        k, s, pads = self.kernel_size, self.stride, []
        for side in (x.shape[-1], x.shape[-2]):  # F.pad takes the last axis first
            total = max((math.ceil(side / s) - 1) * s + k - side, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)


class CifarAlexNet(nn.Module):
    """`VARIANTS["cifar"]` of the package in torch: conv-ReLU-BatchNorm blocks, 32 -> 4 px.

    Args:
        num_classes: outputs of the last layer.
        dropout: rate of the two dropout layers of the classifier.
        image_size: the input side (the flattened features' size depends on it).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, image_size: int = 32):
        super().__init__()
        layers, channels, side = [], 3, image_size
        for filters, pool in ((32, True), (96, True), (192, False), (128, False), (128, True)):
            layers += [
                nn.Conv2d(channels, filters, 3, padding=1),
                nn.ReLU(inplace=True),
                # momentum 0.1 in torch's convention is Keras's momentum=0.9.
                nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1),
            ]
            if pool:
                layers.append(SamePadMaxPool2d(3, 2))
                side = math.ceil(side / 2)
            channels = filters
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(128 * side * side, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model(variant: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """The reference model of `variant` ("cifar" or "torchvision"), torch's default init.

    Example:
        >>> keras_parameter_count(build_model("cifar", 10))
        3723946
    """
    if variant == "cifar":
        return CifarAlexNet(num_classes, image_size=image_size or DEFAULT_SIZES["cifar"])
    if variant == "torchvision":
        try:
            import torchvision
        except ImportError as error:
            raise ImportError(
                f"the torchvision variant of {option_name('implementation', 'torch-reference')} "
                f"is torchvision's AlexNet, but torchvision cannot be imported ({error}). "
                "Install it (pip install alexnet-k3[torch]), or train the cifar variant."
            ) from None
        return torchvision.models.alexnet(num_classes=num_classes)
    raise ValueError(f"Unknown variant={variant!r}; expected one of {', '.join(VARIANTS)}.")


def keras_parameter_count(model: nn.Module) -> int:
    """Parameters as Keras's `count_params` counts them: weights plus BN running mean/var."""
    stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    return sum(p.numel() for p in model.parameters()) + stats


def state_sha256(model: nn.Module) -> str:
    """SHA-256 (hex) of the float32 bytes of every `state_dict` entry, in sorted key order."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        values = state[key].detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(values.tobytes())
    return digest.hexdigest()


def to_inputs(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """uint8 NCHW -> normalized float32, resized (bilinear) when `image_size` differs."""
    x = images.float().div_(255.0)
    if image_size is not None and image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images, generator: torch.Generator, *, flip: bool = True, padding: int = 4):
    """The package's augmentation: zero-pad by `padding`, crop back at random, flip (p=0.5).

    Runs on the uint8 images, so the zero fill is black as in the package (which pads
    after scaling to [0, 1] and before normalizing). Draws from `generator` (on the CPU).
    """
    n, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(device)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    if not flip:
        return cropped
    flips = (torch.rand(n, generator=generator) < 0.5).to(device)
    return torch.where(flips[:, None, None, None], cropped.flip(-1), cropped)


def run_epoch(
    model,
    optimizer,
    images,
    labels,
    generator: torch.Generator,
    *,
    batch_size: int,
    image_size: int,
    augment_images: bool = False,
    flip: bool = True,
    progress=None,
) -> dict:
    """One epoch of the plain loop over uint8 NCHW `images` and int64 `labels` (on the device).

    Shuffles with `generator`, then for each batch: augment (optional), forward,
    cross-entropy, `optimizer.step()`. The loss and accuracy are summed on the
    device and read once, at the end: no step waits for the one before.

    Returns:
        The epoch's mean training `loss` and `accuracy` (and `top5_accuracy` with more
        than 5 classes), measured in training mode as Keras's `fit` logs them.
    """
    model.train()
    n, device = len(images), images.device
    outputs = model.classifier[-1].out_features
    order = torch.randperm(n, generator=generator).to(device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    steps = math.ceil(n / batch_size)
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        batch, target = images[index], labels[index]
        if augment_images:
            batch = augment(batch, generator, flip=flip, padding=AUGMENT_PADDING)
        logits = model(to_inputs(batch, image_size))
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            total_loss += loss.detach().double() * len(index)
            correct += (logits.argmax(1) == target).sum()
            if outputs > 5:
                correct5 += (logits.topk(5, 1).indices == target[:, None]).any(1).sum()
        if progress is not None:
            progress(step + 1, steps)
    result = {"loss": total_loss.item() / n, "accuracy": correct.item() / n}
    if outputs > 5:
        result["top5_accuracy"] = correct5.item() / n
    return result


def predict_logits(model, images, *, image_size: int, batch_size: int = 256) -> np.ndarray:
    """The model's logits (float32 numpy) for uint8 `(N, H, W, 3)` numpy images, in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[start : start + batch_size])
            x = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2)
            out.append(model(to_inputs(x, image_size)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), "float32")
