"""alexnet_k3: one Keras 3 AlexNet (and VGG16) for the torch, tensorflow and jax backends.

Pick the backend with the `KERAS_BACKEND` environment variable before importing
Keras (or anything that imports it).

Example:
    >>> import alexnet_k3 as ak
    >>> ak.AlexNet(num_classes=10).count_params()
    57044810
"""

__version__ = "0.1.0"

# Everything is loaded on first use: `import alexnet_k3` does not import Keras,
# so the command line can still choose the backend after importing the package.
_LAZY = {
    "AlexNet": "alexnet_k3.model",
    "VGG16": "alexnet_k3.vgg",
    "load_torchvision_weights": "alexnet_k3.weights",
    "to_torchvision_state_dict": "alexnet_k3.weights",
    "train": "alexnet_k3.training",
    "evaluate": "alexnet_k3.evaluation",
    "load_model": "alexnet_k3.evaluation",
    "predict": "alexnet_k3.prediction",
    "study": "alexnet_k3.studies",
    "datasets": "alexnet_k3.datasets",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if name == "datasets" else getattr(module, name)
    raise AttributeError(f"module 'alexnet_k3' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
