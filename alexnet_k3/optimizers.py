"""The optimizer Keras lacks: SGD as `torch.optim.SGD` computes it (`TorchSGD`).

`train` compiles it for `optimizer="sgd"`, so the package's SGD step is the plain
PyTorch loop's to float32 rounding (benchmarks/results/
torchvision-variant-64-digits-step-compare.md). Written with `keras.ops`, so it
runs unchanged on every backend; on torch and tensorflow the same algorithm runs as
each engine's fused update (`alexnet_k3.backend.updates`), and `fused_updates = False`
takes the `keras.ops` update everywhere, the reference the tests compare them with.
A trained `model.keras` is saved with its optimizer: `alexnet_k3.evaluation.load_model`
imports this module, which registers the class for loading.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from alexnet_k3.backend import updates


@keras.saving.register_keras_serializable(package="alexnet_k3")
class TorchSGD(keras.optimizers.SGD):
    """SGD as `torch.optim.SGD` computes it: weight decay coupled into the gradient.

    torch adds `weight_decay * w` to the gradient before the momentum buffer
    (`b = momentum * b + g + wd * w`, then `w -= lr * b`); Keras's `SGD(weight_decay=)`
    instead shrinks the weights outside the momentum (`w -= lr * wd * w`), which at
    momentum 0.9 is a decay ten times weaker. The buffer also holds gradients, not
    steps, so a changing learning rate scales it the way torch's does. Variables
    excluded with `exclude_from_weight_decay` get no decay, as with Keras's optimizers.

    Args:
        learning_rate, momentum, nesterov: as `keras.optimizers.SGD`.
        coupled_weight_decay: torch's `weight_decay`, >= 0.
        **kwargs: `keras.optimizers.SGD`'s other arguments, except `weight_decay`.

    Example:
        >>> optimizer = TorchSGD(0.01, momentum=0.9, coupled_weight_decay=5e-4)
        >>> optimizer.exclude_from_weight_decay(var_names=["bias"])
    """

    # False: the generic per-variable `keras.ops` update on every backend (the reference).
    fused_updates = True

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        coupled_weight_decay=0.0,
        name="torch_sgd",
        **kwargs,
    ):
        if kwargs.get("weight_decay"):
            raise ValueError(
                "TorchSGD takes `coupled_weight_decay` (torch's form), received "
                f"weight_decay={kwargs['weight_decay']!r} (Keras's decoupled form)."
            )
        kwargs.pop("weight_decay", None)
        super().__init__(
            learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, name=name, **kwargs
        )
        wd = coupled_weight_decay
        if isinstance(wd, bool) or not isinstance(wd, int | float) or not 0 <= wd < math.inf:
            raise ValueError(
                "`coupled_weight_decay` must be a finite number >= 0, received "
                f"coupled_weight_decay={wd!r}."
            )
        self.coupled_weight_decay = float(wd)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # On torch, the multi-tensor update Keras gives its own SGD only (3.5x
        # faster there); elsewhere `update_step` per variable (on tensorflow with
        # TF's fused momentum kernel inside it).
        if not (
            self.fused_updates
            and updates.torch_sgd_update(self, grads, trainable_variables, learning_rate)
        ):
            super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            decay = ops.cast(self.coupled_weight_decay, variable.dtype)
            gradient = ops.add(gradient, ops.multiply(variable, decay))
        if self.momentum != 0:
            buffer = self.momentums[self._get_variable_index(variable)]
            if self.fused_updates and updates.tf_momentum_update(
                variable, buffer, gradient, learning_rate, self.momentum, self.nesterov
            ):
                return
            momentum = ops.cast(self.momentum, variable.dtype)
            # torch's first step sets the buffer to the gradient: momentum * 0 + g.
            self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
            if self.nesterov:
                gradient = ops.add(gradient, ops.multiply(buffer, momentum))
            else:
                gradient = buffer
        self.assign_sub(variable, ops.multiply(gradient, learning_rate))

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        return config
