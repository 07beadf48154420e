"""`TrainConfig`: every setting of a training run, typed once (Keras-free).

Each field carries its help text, its kind (what values it takes) and, where it
differs from the field name, its command-line flag. `alexnet-k3 train` builds its
options from these fields (`cli.add_config_options`), `TrainConfig.validate`
checks values by the same kinds, and `config.json` of a run is `asdict(config)`.
Like `alexnet_k3.core`, this module imports neither Keras nor a framework, so
the command line can read it before choosing a backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from alexnet_k3.core import (
    ARCHS,
    ARCHS_WITH_VARIANTS,
    DATA_FORMATS,
    DATASETS,
    IMPLEMENTATIONS,
    INITS,
    JIT_SETTINGS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    VARIANTS,
    default_learning_rate,
)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Kind:
    """What a setting admits: `test` on the value, `words` for messages, `parse` for the CLI.

    `parse` turns command-line text into the value (None: a flag, no text).
    """

    parse: Callable[[str], Any] | None
    test: Callable[[Any], bool]
    words: str


_INF = float("inf")
# The largest model input side admitted: one batch of 128 images at 1024 x 1024 is
# already 1.6 GB of float32 input before the first convolution.
MAX_IMAGE_SIZE = 1024
# `None` is admitted where the field's default is None ("not set"), and nowhere else.
KINDS = {
    "positive_int": Kind(int, lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "non_negative_int": Kind(int, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "int": Kind(int, _is_int, "an integer"),
    "positive_float": Kind(
        float, lambda v: _is_number(v) and 0 < v < _INF, "a positive finite number"
    ),
    "non_negative_float": Kind(
        float, lambda v: _is_number(v) and 0 <= v < _INF, "a finite number >= 0"
    ),
    "fraction": Kind(float, lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "open_fraction": Kind(float, lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "bool": Kind(None, lambda v: isinstance(v, bool), "True or False"),
    "str": Kind(str, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "jit": Kind(
        JIT_SETTINGS.__getitem__,
        # `is` tells True from 1; a string read back from config.json is equal, not identical.
        lambda v: any(v is s or (type(v) is str and v == s) for s in JIT_SETTINGS.values()),
        "True, False or 'auto' (on, off or auto on the command line)",
    ),
}


def option(default, help: str, *, kind: str = "str", choices=None, flags=None):
    """A `TrainConfig` field with what the command line and `validate` need to know."""
    if kind not in KINDS and choices is None:
        raise ValueError(f"unknown option kind {kind!r}")
    metadata = {"help": help, "kind": kind, "choices": choices, "flags": flags}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every setting of a run; saved as `config.json` so `resume` can rebuild it exactly."""

    implementation: str = option(
        "keras",
        "what trains the run: the package's Keras model on the active backend, or "
        "torch-reference, the course notebooks' plain PyTorch loop (torch's own nn.Module "
        "AlexNet of --variant cifar or torchvision, torch.optim.SGD with weight decay on "
        "every parameter, constant learning rate, from scratch, float32, one device; it "
        "ignores --data-format, --jit and the Keras backend)",
        choices=IMPLEMENTATIONS,
    )
    dataset: str = option("digits", "dataset to train and test on", choices=DATASETS)
    data_dir: str | None = option(
        None,
        "cifar10: its folder or tarball (default: ALEXNET_K3_DATA, then the Keras cache); "
        "folder: the image folder, PATH/<class>/<image> or PATH/{train,test}/<class>/<image>",
    )
    test_split: float = option(
        0.2,
        "folder without train/test subfolders: share of each class held out for testing",
        kind="open_fraction",
    )
    strict: bool = option(
        False,
        "folder: stop at a file that is not a readable image instead of skipping it",
        kind="bool",
    )
    arch: str = option(
        "alexnet",
        "network: AlexNet (in its --variant) or torchvision's VGG16 (224x224 by default; "
        "no variants)",
        choices=ARCHS,
    )
    variant: str = option("cifar", "AlexNet variant", choices=VARIANTS)
    image_size: int | None = option(
        None,
        "model input side; images are resized on the device (default: the variant's, 224 "
        "for vgg16)",
        kind="positive_int",
    )
    weights: str | None = option(
        None, "'imagenet' or a torchvision .pth / converted .weights.h5 (transfer learning)"
    )
    freeze_epochs: int = option(
        0,
        "with --weights: epochs training only the classifier before fine-tuning all",
        kind="non_negative_int",
    )
    epochs: int = option(10, "epochs in all (the frozen ones included)", kind="positive_int")
    batch_size: int = option(128, "images per training step", kind="positive_int")
    optimizer: str = option("sgd", "sgd (momentum 0.9), adam or adamw", choices=OPTIMIZERS)
    learning_rate: float | None = option(
        None,
        "peak learning rate of the schedule (default: sgd 0.02, or 0.01 for the networks "
        "without batch norm: the torchvision and paper variants, vgg16; adam/adamw 1e-3)",
        kind="positive_float",
        flags=("--lr", "--learning-rate"),
    )
    warmup_epochs: int = option(
        0, "epochs of linear learning-rate warm-up", kind="non_negative_int"
    )
    schedule: str = option(
        "constant",
        "learning rate after the warm-up: cosine decay to 0, or constant at the peak",
        choices=SCHEDULES,
    )
    weight_decay: float = option(
        5e-4,
        "weight decay, not on biases and normalization: sgd adds it to the gradient as "
        "torch.optim.SGD does (coupled); adam/adamw decay decoupled",
        kind="non_negative_float",
    )
    label_smoothing: float = option(0.0, "label smoothing of the loss", kind="fraction")
    precision: str = option("float32", "Keras dtype policy", choices=PRECISIONS)
    validation_split: float = option(
        0.0,
        "share of the training images held out to pick the best epoch (0: keep the last)",
        kind="fraction",
    )
    augment: bool = option(
        False,
        "random pad-crop and horizontal flips (no flips for the digits) in training",
        kind="bool",
    )
    seed: int = option(
        0, "seed of the split, the initialization and the shuffles", kind="non_negative_int"
    )
    init: str = option(
        "torch",
        "initialization of the conv and dense layers: torch's nn.Conv2d/nn.Linear defaults "
        "or Keras's (Glorot); with the seed, the same weights on every backend",
        choices=INITS,
    )
    jit_compile: bool | str = option(
        "auto", "on, off or auto (Keras decides)", kind="jit", flags=("--jit",)
    )
    data_format: str = option(
        "recommended",
        "Keras image data format of the network; 'recommended': the backend's fastest "
        "(channels_first on torch, channels_last on jax and tensorflow)",
        choices=DATA_FORMATS,
    )
    data_parallel: bool = option(
        False,
        "split each batch across local devices (jax: keras.distribution.DataParallel, "
        "tensorflow: tf.distribute.MirroredStrategy), or across the processes of a job "
        "launched with torchrun (torch), KERAS_DISTRIBUTION_* (jax) or TF_CONFIG "
        "(tensorflow: MultiWorkerMirroredStrategy); --batch-size stays "
        "the global batch",
        kind="bool",
    )
    devices: int | None = option(
        None, "with --data-parallel: how many devices (default: all)", kind="positive_int"
    )
    keep_freed_memory: bool = option(
        True,
        "on a CPU (Linux, glibc): keep freed memory for reuse instead of returning it "
        "to the OS (alexnet_k3.backend.keep_freed_memory, about 1.1x faster steps; the "
        "process keeps its peak memory). A process-wide setting",
        kind="bool",
    )

    @classmethod
    def from_settings(cls, settings: dict) -> TrainConfig:
        """The config of a new run from exactly the settings given, validated.

        Raises:
            TypeError: a setting that is no field of `TrainConfig`.
            ValueError: a value `validate` refuses, or a `variant` given for an
                architecture without variants (even its default).
        """
        unknown = set(settings) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"train() got unknown settings {sorted(unknown)}; "
                f"expected some of {sorted(cls.__dataclass_fields__)}."
            )
        config = cls(**settings)
        if "variant" in settings and config.model_variant is None:  # even the default, if given
            raise ValueError(
                f"`variant` must be left unset with arch={config.arch!r} (variants are "
                f"AlexNet's), received variant={config.variant!r}."
            )
        config.validate()
        return config

    def validate(self) -> None:
        """Raises ValueError naming the first setting outside what its field admits."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            choices, kind = f.metadata["choices"], f.metadata["kind"]
            if choices is not None:
                ok, expected = value in choices, f"one of {choices}"
            else:
                ok, expected = KINDS[kind].test(value), KINDS[kind].words
                if f.default is None:
                    expected += " or None"
            if not ok:
                raise ValueError(f"`{f.name}` must be {expected}, received {f.name}={value!r}.")
        if self.implementation == "torch-reference":
            self._check_reference()
        if self.arch not in ARCHS_WITH_VARIANTS and self.variant != _default("variant"):
            self._bad("variant", f"left unset with arch={self.arch!r} (variants are AlexNet's)")
        if self.freeze_epochs > self.epochs:
            self._bad("freeze_epochs", f"an integer from 0 to epochs={self.epochs}")
        if self.freeze_epochs and self.weights is None:
            self._bad(
                "freeze_epochs", "0 without pretrained `weights` (there is nothing to freeze)"
            )
        if self.devices is not None and not self.data_parallel:
            self._bad("devices", "None unless data_parallel=True")
        if self.dataset != "folder":
            for name in ("test_split", "strict"):
                if getattr(self, name) != _default(name):
                    self._bad(name, "its default unless dataset='folder' (it sets folder splits)")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            # Refused here, not by an allocator after minutes: 10000 asked for 819 GB.
            self._bad("image_size", f"at most {MAX_IMAGE_SIZE} (AlexNet is trained at 224)")

    def _check_reference(self) -> None:
        """Refuses every setting the plain PyTorch loop (`alexnet_k3.reference`) does not honour."""
        for name, honoured, expected in _REFERENCE_LIMITS:
            if not honoured(getattr(self, name)):
                self._bad(
                    name,
                    f"{expected} with implementation='torch-reference' (the plain PyTorch loop "
                    "knows no other; leave it out, or train with implementation='keras')",
                )

    def _bad(self, name: str, expected: str):
        raise ValueError(f"`{name}` must be {expected}, received {name}={getattr(self, name)!r}.")

    @property
    def peak_learning_rate(self) -> float:
        """The peak rate the run uses: the one asked for, or the network's default."""
        return self.learning_rate or default_learning_rate(self.optimizer, self.variant, self.arch)

    @property
    def model_variant(self) -> str | None:
        """The AlexNet variant, None for an architecture without variants (metrics.json)."""
        return self.variant if self.arch in ARCHS_WITH_VARIANTS else None

    @property
    def mode(self) -> str:
        return "transfer" if self.weights else "scratch"


# (setting, test of its value, what the plain PyTorch loop takes): `_check_reference`.
# data_format, jit_compile and keep_freed_memory need no entry: the loop ignores the
# first two (torch runs NCHW, eagerly) and applies the third as Keras runs do.
_REFERENCE_LIMITS = (
    ("arch", lambda v: v == "alexnet", "'alexnet'"),
    ("variant", lambda v: v in ("cifar", "torchvision"), "'cifar' or 'torchvision'"),
    ("weights", lambda v: v is None, "None (the loop trains from scratch)"),
    ("optimizer", lambda v: v == "sgd", "'sgd'"),
    ("schedule", lambda v: v == "constant", "'constant'"),
    ("warmup_epochs", lambda v: v == 0, "0"),
    ("label_smoothing", lambda v: v == 0, "0"),
    ("validation_split", lambda v: v == 0, "0 (the loop keeps the last epoch)"),
    ("precision", lambda v: v == "float32", "'float32'"),
    ("data_parallel", lambda v: v is False, "False (the loop trains on one device)"),
    ("init", lambda v: v == "torch", "'torch' (torch's own initialization)"),
)


def implementation_of(settings: dict, out=None, resume: bool = False) -> str:
    """What trains a run: the `implementation` in `settings`, else a resumed run's own
    (its `out/config.json`; runs from before the setting existed are Keras runs).

    Only a hint for choosing the trainer: the trainer reads and checks the saved
    config itself (`runs.saved_config`), so a damaged one is reported there.
    """
    if "implementation" in settings:
        return settings["implementation"]
    if resume and out is not None:
        try:
            saved = json.loads((Path(out) / "config.json").read_text())
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict):
            return saved.get("implementation", "keras")
    return _default("implementation")


def _default(name: str):
    return TrainConfig.__dataclass_fields__[name].default
