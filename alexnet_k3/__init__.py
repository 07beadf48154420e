"""alexnet_k3: one Keras 3 AlexNet for the torch, tensorflow and jax backends.

Pick the backend with the `KERAS_BACKEND` environment variable before importing.

Example:
    >>> import alexnet_k3 as ak
    >>> ak.AlexNet(num_classes=10).count_params()
    57044810
"""

from alexnet_k3.model import AlexNet

__version__ = "0.1.0"

# Loaded on first use so that `import alexnet_k3` stays light (no h5py reading,
# no matplotlib, no scikit-learn) until a feature needs them.
_LAZY = {
    "load_torchvision_weights": "alexnet_k3.weights",
    "to_torchvision_state_dict": "alexnet_k3.weights",
    "train": "alexnet_k3.training",
    "evaluate": "alexnet_k3.evaluation",
    "datasets": "alexnet_k3.datasets",
}

__all__ = ["AlexNet", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if name == "datasets" else getattr(module, name)
    raise AttributeError(f"module 'alexnet_k3' has no attribute {name!r}")
