"""Published weights carry their metadata with them, as torchvision's do.

A record says where the file comes from, the hash that proves it is that file,
the model it fits and the preprocessing it was trained with, so that nothing
about a set of weights has to be remembered elsewhere. Each architecture module
(`alexnet.py`) defines its records next to its conversion table; the download
(`torch_files.read_pretrained`) is driven by the record alone, so new weights
are a new record, not new code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources

# A data file of the package, so a jax- or tensorflow-only install has the names too.
_IMAGENET_CATEGORIES_FILE = "imagenet_categories.txt"


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order (torchvision's list).

    Example:
        >>> imagenet_categories()[:3]
        ('tench', 'goldfish', 'great white shark')
    """
    text = resources.files("alexnet_k3.weights").joinpath(_IMAGENET_CATEGORIES_FILE).read_text()
    names = tuple(line for line in text.splitlines() if line and not line.startswith("#"))
    if len(names) != 1000:  # a damaged install: say so rather than mislabel classes
        raise RuntimeError(
            f"alexnet_k3/weights/{_IMAGENET_CATEGORIES_FILE} holds {len(names)} class names, "
            "expected 1000: the installation is damaged. Reinstall alexnet-k3."
        )
    return names


@dataclass(frozen=True)
class PretrainedWeights:
    """One set of published weights with what is needed to use them correctly.

    Mirrors an entry of torchvision's `*_Weights` enums (`AlexNet_Weights`): the
    file, its hash, the model it fits, the preprocessing it was trained with and its
    reference accuracy.

    Example:
        >>> from alexnet_k3.weights import IMAGENET1K_V1
        >>> IMAGENET1K_V1.file_name
        'alexnet-owt-7be5be79.pth'
    """

    name: str
    url: str
    # The download is checked against this prefix of its SHA-256 (torch hub's
    # convention: the part of the file name after the last dash).
    sha256_prefix: str
    num_params: int
    num_classes: int
    min_size: tuple[int, int]
    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    metrics: dict = field(default_factory=dict)
    file_size_mb: float = 0.0
    gflops: float = 0.0
    recipe: str = ""

    @property
    def categories(self) -> tuple[str, ...]:
        """The class names, by index (torchvision's `meta["categories"]`)."""
        return imagenet_categories() if self.num_classes == 1000 else ()

    @property
    def file_name(self) -> str:
        """Name of the checkpoint in the download URL and in torch hub's cache."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def transforms(self) -> dict:
        """The evaluation preprocessing: `imagenet_preprocess(images, **kwargs)` plus
        the constants it uses."""
        return {
            "function": "alexnet_k3.preprocessing.imagenet_preprocess",
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
        }
