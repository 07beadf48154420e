"""A plain PyTorch training loop (no Keras): the reference our recipe is measured against.

The loop of the course notebooks: `torch.optim.SGD(lr=0.02, momentum=0.9,
weight_decay=5e-4)` (coupled decay, on every parameter), cross-entropy, batch 128, a
fixed learning rate, torch's default initialization, no augmentation unless asked, the
test set evaluated after every epoch and the last epoch's accuracy reported. Inputs are
what the package feeds its models: scaled to [0, 1], then normalized with ImageNet's
mean and std.

Models:
    cifar        the layers of `alexnet_k3.model.VARIANTS["cifar"]`, written in torch
                 (`CifarAlexNet`): 3,723,946 parameters for 10 classes, as Keras counts
                 them (BatchNorm's running statistics included).
    torchvision  `torchvision.models.alexnet(num_classes=...)`, inputs resized on the
                 fly (bilinear) to `--image-size`.

Usage:
    python -m benchmarks.torch_reference --variant cifar --dataset data/digits-proxy \
        --epochs 8 --seed 0 --out benchmarks/results/torch-reference.json
    python -m benchmarks.torch_reference --variant torchvision --image-size 64 --dataset digits

Prints one JSON record (the fields of `train_reference`); `--out` also writes it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.nn import functional as F

from alexnet_k3.core import atomic_write_json, cpu_name
from alexnet_k3.datasets import Dataset, load_cifar10, load_digits

# The statistics of `alexnet_k3.preprocessing.IMAGENET_MEAN/STD` (torchvision's
# AlexNet_Weights.IMAGENET1K_V1 transforms); stated here because that module imports Keras.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VARIANTS = ("cifar", "torchvision")


class CifarAlexNet(nn.Module):
    """`VARIANTS["cifar"]` of the package in torch: conv-ReLU-BatchNorm blocks, 32 -> 4 px.

    Keras's 3x3 stride-2 `MaxPooling2D(padding="same")` on an even side pads one row and
    column at the bottom and right only (TensorFlow's rule: the odd pixel goes last);
    `-inf` there and an unpadded torch pool give the same windows and values. torch's
    symmetric `padding=1` would shift every window by a pixel.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        layers, channels = [], 3
        for filters, pool in ((32, True), (96, True), (192, False), (128, False), (128, True)):
            layers += [
                nn.Conv2d(channels, filters, 3, padding=1),
                nn.ReLU(inplace=True),
                # momentum 0.1 in torch's convention is Keras's momentum=0.9.
                nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1),
            ]
            if pool:
                layers += [nn.ConstantPad2d((0, 1, 0, 1), float("-inf")), nn.MaxPool2d(3, 2)]
            channels = filters
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(128 * 4 * 4, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model(variant: str, num_classes: int) -> nn.Module:
    """The reference model of `variant` ("cifar" or "torchvision"), torch's default init."""
    if variant == "cifar":
        return CifarAlexNet(num_classes)
    if variant == "torchvision":
        import torchvision

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


def load_data(dataset: str) -> Dataset:
    """ "digits" (`alexnet_k3.datasets.load_digits`) or a CIFAR-10-layout folder / tarball."""
    return load_digits() if dataset == "digits" else load_cifar10(dataset)


def _to_inputs(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """uint8 NCHW -> normalized float32, resized when `image_size` differs from the data."""
    x = images.float().div_(255.0)
    if image_size is not None and image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4):
    """The package's augmentation: zero-pad by `padding`, crop back at random, flip (p=0.5).

    Runs on the uint8 images, so the zero fill is black as in the package (which pads
    after scaling to [0, 1] and before normalizing).
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy, dx = (torch.randint(0, 2 * padding + 1, (2, n), generator=generator)).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


def _accuracy(model, images, labels, image_size, batch_size=512) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(_to_inputs(images[start : start + batch_size], image_size))
            correct += (logits.argmax(1) == labels[start : start + batch_size]).sum().item()
    return correct / len(images)


def train_reference(
    data: Dataset,
    *,
    variant: str = "cifar",
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 0.02,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    decoupled: bool = False,
    augment: bool = False,
    image_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    dataset_name: str | None = None,
    verbose: bool = False,
) -> dict:
    """Trains the reference model on `data` and returns its record.

    Args:
        data: images and labels (`alexnet_k3.datasets.Dataset`).
        variant: "cifar" or "torchvision".
        image_size: input side for the model; default 32 for "cifar", 64 for "torchvision".
        weight_decay: coupled (torch's `weight_decay`, the gradient gets `wd * p`, every
            parameter) unless `decoupled`: then `p -= lr * wd * p` after each step on
            weights only, not biases or BatchNorm (Keras's `SGD(weight_decay=)` form,
            the package's rule until issue 11; `alexnet_k3.optimizers.TorchSGD` couples it now).
        augment: the package's pad-4 random crop and horizontal flip in training.
        device: "cpu", "cuda", ...; default CUDA when available.
        dataset_name: the name recorded (default `data.name`).

    Returns:
        A record: impl "torch-reference", the settings, `history` (per epoch: epoch,
        train_loss, test_accuracy, seconds), the last `test_accuracy`, `wall_seconds`,
        versions, CPU and thread count.

    Example:
        >>> record = train_reference(load_digits(), epochs=1)
        >>> sorted(record["history"][0])
        ['epoch', 'seconds', 'test_accuracy', 'train_loss']
    """
    start_wall = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    image_size = image_size or (32 if variant == "cifar" else 64)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(variant, data.num_classes).to(device)

    def tensors(x, y):
        return (
            torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device),
            torch.from_numpy(y).to(device),
        )

    x_train, y_train = tensors(data.x_train, data.y_train)
    x_test, y_test = tensors(data.x_test, data.y_test)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=momentum,
        weight_decay=0.0 if decoupled else weight_decay,
    )
    decayed = [p for p in model.parameters() if p.ndim > 1]
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(device)
        total_loss = 0.0
        for begin in range(0, len(order), batch_size):
            idx = order[begin : begin + batch_size]
            images = x_train[idx]
            if augment:
                images = _augment(images, generator)
            loss = loss_fn(model(_to_inputs(images, image_size)), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if decoupled and weight_decay:
                with torch.no_grad():
                    torch._foreach_mul_(decayed, 1 - lr * weight_decay)
            total_loss += loss.item() * len(idx)
        accuracy = _accuracy(model, x_test, y_test, image_size)
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(total_loss / len(x_train), 5),
                "test_accuracy": round(accuracy, 5),
                "seconds": round(time.perf_counter() - epoch_start, 3),
            }
        )
        if verbose:
            print(json.dumps(history[-1]), flush=True)
    import torchvision

    return {
        "impl": "torch-reference",
        "variant": variant,
        "dataset": dataset_name or data.name,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "decoupled_weight_decay": decoupled,
        "augment": augment,
        "image_size": image_size,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "parameters": keras_parameter_count(model),
        "history": history,
        "test_accuracy": history[-1]["test_accuracy"],
        "wall_seconds": round(time.perf_counter() - start_wall, 3),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": device,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default="cifar")
    parser.add_argument(
        "--dataset", default="digits", help="'digits' or a CIFAR-10-layout folder / tarball"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--decoupled",
        action="store_true",
        help="Keras's decoupled weight decay on weights only (default: torch's coupled, all "
        "params)",
    )
    parser.add_argument(
        "--augment", action="store_true", help="pad-4 random crop and horizontal flip"
    )
    parser.add_argument(
        "--image-size", type=int, help="model input side (default 32 cifar, 64 torchvision)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="torch device (default: cuda when available)")
    parser.add_argument("--out", help="also write the record to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="print each epoch")
    # Every option but these two is a keyword of train_reference, by the same name.
    options = vars(parser.parse_args(argv))
    dataset, out = options.pop("dataset"), options.pop("out")
    record = train_reference(load_data(dataset), dataset_name=dataset, **options)
    if out:
        atomic_write_json(out, record, indent=2)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
