"""The named plans of `alexnet-k3 study`, written in the TOML plan's own shape (Keras-free).

`demo` runs offline on scikit-learn's digits; `course` is the course studies'
CIFAR-10 comparison (their settings: `shared/COURSE_STUDIES.md` in the repository).
"""

from __future__ import annotations


def _demo() -> dict:
    return {
        "cross_backend": True,
        "defaults": {
            "dataset": "digits",
            "variant": "cifar",
            "epochs": 8,
            "batch_size": 64,
            "seed": 0,
        },
        "runs": [
            {"name": "scratch-cifar-{backend}", "backend": "all"},
            {"name": "scratch-cifar-torch-reference", "implementation": "torch-reference"},
        ],
        "notes": "The cifar variant from scratch on scikit-learn's digits (offline), from the "
        "same initial weights on every backend, beside the plain PyTorch loop of the same recipe.",
    }


def _course() -> dict:
    return {
        "cross_backend": True,
        "defaults": {"dataset": "cifar10", "batch_size": 64, "seed": 0},
        "scratch": {"variant": "cifar", "epochs": 30},
        "transfer": {"weights": "imagenet", "epochs": 10, "freeze_epochs": 2},
        "runs": [
            {"name": "scratch-cifar-{backend}", "backend": "all"},
            {"name": "scratch-cifar-torch-reference", "implementation": "torch-reference"},
            {
                "name": "transfer-alexnet-{backend}",
                "backend": "all",
                "variant": "torchvision",
                "weights": "imagenet",
            },
            {"name": "transfer-vgg16", "arch": "vgg16", "weights": "imagenet"},
        ],
        "notes": "The course studies' settings: from scratch 30 epochs, transfer (AlexNet and "
        "VGG16) 10 epochs of which 2 train the classifier only, batch 64, ImageNet models "
        "at 224x224 (resized on the device). The learning rates are the package's measured "
        "defaults (SGD 0.02 for the cifar variant, 0.01 for networks without batch norm), "
        "not the reports' 0.001 to 0.002.",
    }


PRESETS = {"demo": _demo, "course": _course}
