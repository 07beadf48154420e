"""Optimizer updates written for one backend, where the generic one is measurably slower.

`torch_sgd_update` is `optimizers.TorchSGD`'s update on the torch backend. Keras
replaces its own `SGD` with a multi-tensor version on torch
(`keras/src/backend/torch/optimizers/torch_sgd.py`), but only for that exact
class: a subclass such as `TorchSGD` gets the generic per-variable
`update_step`, where every `ops.multiply`/`ops.add` allocates a full-size tensor
and every `assign` copies it back. Profiled on a 2-core CPU (AlexNet, batch 16,
224x224, one thread), that was 469 ms of a 1448 ms step against the native
`torch.optim.SGD`'s 132 ms (benchmarks/results/profile-cpu-2core-train-step.md).
The update below is `torch.optim.SGD`'s multi-tensor (foreach) algorithm, in place.

`tf_momentum_update` is its TensorFlow counterpart per variable: TF's fused
`ResourceApplyMomentum` kernel computes torch's form exactly (`accum = m * accum + g;
var -= lr * accum`, and nesterov's `var -= lr * (g + m * accum)`) in one op, where the
`keras.ops` update runs five and writes two full-size temporaries. Timed on the
2-core CPU (AlexNet, batch 16, 224x224, one thread), the per-variable update took
175 ms of a 1090 ms step against native `torch.optim.SGD`'s 94 ms.
"""

from __future__ import annotations

from alexnet_k3.backend import info


def torch_sgd_update(optimizer, grads, variables, learning_rate) -> bool:
    """Applies `optimizer`'s (a `TorchSGD`) step in place; False where it does not apply.

    Not applied (the caller runs the generic update) off the torch backend, and
    where a gradient's dtype differs from its variable's (the generic update
    casts it). Gradients are read, never changed.
    """
    if info.name() != "torch" or not variables:
        return False
    import torch

    values = [v.value for v in variables]
    if any(g is None or g.dtype != p.dtype for g, p in zip(grads, values, strict=True)):
        return False
    with torch.no_grad():
        grads = list(grads)
        decay = optimizer.coupled_weight_decay
        if decay:
            # torch's coupled decay: g + wd * w, before the momentum buffer.
            decayed = [i for i, v in enumerate(variables) if optimizer._use_weight_decay(v)]
            if decayed:
                summed = torch._foreach_add(
                    [grads[i] for i in decayed], [values[i] for i in decayed], alpha=decay
                )
                for i, g in zip(decayed, summed, strict=True):
                    grads[i] = g
        if optimizer.momentum:
            momentums = optimizer.momentums
            buffers = [momentums[optimizer._get_variable_index(v)].value for v in variables]
            torch._foreach_mul_(buffers, optimizer.momentum)
            torch._foreach_add_(buffers, grads)  # the first step leaves b = g, as torch's
            if optimizer.nesterov:
                steps = torch._foreach_add(grads, buffers, alpha=optimizer.momentum)
            else:
                steps = buffers
        else:
            steps = grads
        # A schedule's rate is a tensor; a constant one is the optimizer's Variable.
        rate = getattr(learning_rate, "value", learning_rate)
        rate = torch.as_tensor(rate, dtype=values[0].dtype, device=values[0].device)
        if rate.device.type == "cpu":
            torch._foreach_add_(values, steps, alpha=-float(rate))
        else:  # a device scalar: no host sync per step, as torch.optim with a tensor lr
            torch._foreach_add_(values, torch._foreach_mul(steps, -rate))
    return True


def tf_momentum_update(variable, buffer, gradient, learning_rate, momentum, nesterov) -> bool:
    """Applies one variable's momentum step with TF's fused kernel; False where it does not apply.

    `variable` is what Keras's TF optimizer hands `update_step` (its `tf.Variable`),
    `buffer` its momentum (a Keras variable), `gradient` already decayed and cast.
    Not applied (the caller runs the `keras.ops` update) off tensorflow and under
    a `tf.distribute` strategy, whose mirrored variables update through the strategy.
    """
    if info.name() != "tensorflow":
        return False
    import tensorflow as tf

    if tf.distribute.has_strategy():
        return False
    accum = buffer.value
    if not (hasattr(variable, "handle") and hasattr(accum, "handle")):
        return False
    tf.raw_ops.ResourceApplyMomentum(
        var=variable.handle,
        accum=accum.handle,
        lr=tf.cast(learning_rate, variable.dtype),
        grad=gradient,
        momentum=tf.constant(momentum, variable.dtype),
        use_nesterov=bool(nesterov),
    )
    return True
