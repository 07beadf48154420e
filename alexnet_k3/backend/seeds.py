"""Seed generators for random layers that never make a training step wait on the device."""

from __future__ import annotations

import keras

from alexnet_k3.backend import info


def seed_generator(seed: int | None = None) -> keras.random.SeedGenerator:
    """A `keras.random.SeedGenerator` whose draws cost no device-to-host wait.

    torch: one whose state lives, and advances, on the CPU. Keras's torch
    backend seeds a `torch.Generator` from each draw with
    `int(first_seed + second_seed)` (`keras/src/backend/torch/random.py`,
    `torch_seed_generator`), so a state on the GPU (the default device) is read
    back to the host every step, and the step waits for all the GPU work queued
    before it. With the state on the CPU that `int` reads host memory; the
    numbers drawn from the seed are the same, and are still drawn on the device.

    jax and tensorflow: Keras's own. Their random ops are stateless and take the
    seed as a tensor (`jax.random.*(seed)`, `tf.random.stateless_*(seed=...)`),
    so inside the compiled train step the state is a traced input that never
    leaves the device.

    Example:
        >>> self.seed_generator = seed_generator(seed)
        >>> keras.random.uniform((n,), seed=self.seed_generator)
    """
    if info.name() == "torch":
        return _HostSeedGenerator(seed)
    return keras.random.SeedGenerator(seed)


class _HostSeedGenerator(keras.random.SeedGenerator):
    """torch: the state is created and advanced under `keras.device("cpu")`.

    Creating the state on the CPU is not enough: `next` adds to the state with
    `keras.ops`, which move their inputs to the default device, and assigning
    that GPU result back into the CPU state is itself a read-back. So `next`
    runs on the CPU too; layers still draw on the default device.
    """

    def __init__(self, seed=None, name=None, **kwargs):
        with keras.device("cpu"):
            super().__init__(seed, name=name, **kwargs)

    def next(self, ordered=True):
        with keras.device("cpu"):
            return super().next(ordered=ordered)
