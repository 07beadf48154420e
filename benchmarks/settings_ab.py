"""Interleaved A/B of the speed settings behind `alexnet_k3.backend.recommended_*`.

On a machine whose load changes from minute to minute, separate runs compare
moments, not settings. Here every setting lives in one process and they take
turns, one training step each, for several rounds; medians are compared.

    KERAS_BACKEND=torch python -m benchmarks.settings_ab --rounds 6 [--jit]
    KERAS_BACKEND=tensorflow python -m benchmarks.settings_ab --rounds 6

torch: torchvision eager (NCHW, channels_last), Keras channels_last and
channels_first eager, and with --jit Keras `jit_compile=True` and
torchvision-compile. tensorflow: Keras with and without XLA. Training steps
(SGD momentum 0.9) on a batch generated on the device.
"""

from __future__ import annotations

import argparse
import statistics
import time


def keras_step(data_format: str, jit, batch: int, size: int):
    import keras

    import alexnet_k3

    keras.config.set_image_data_format(data_format)
    shape = (size, size, 3) if data_format == "channels_last" else (3, size, size)
    model = alexnet_k3.AlexNet(input_shape=shape)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    x = keras.random.normal((batch, *shape), seed=0)
    y = keras.random.randint((batch,), 0, 1000, seed=1)
    return lambda: model.train_on_batch(x, y)


def torchvision_step(channels_last: bool, compiled: bool, batch: int, size: int):
    import torch
    import torchvision

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = torchvision.models.alexnet().to(memory_format=memory_format)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()

    def step():
        loss = criterion(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--jit", action="store_true", help="torch: add the compiled settings")
    args = parser.parse_args(argv)
    import keras

    backend, batch, size = keras.config.backend(), args.batch_size, args.image_size
    steps = {}
    if backend == "torch":
        steps["torchvision-eager-nchw"] = torchvision_step(False, False, batch, size)
        steps["torchvision-eager-nhwc"] = torchvision_step(True, False, batch, size)
        steps["keras-torch-channels_last"] = keras_step("channels_last", False, batch, size)
        steps["keras-torch-channels_first"] = keras_step("channels_first", False, batch, size)
        if args.jit:
            steps["keras-torch-channels_first-jit"] = keras_step(
                "channels_first", True, batch, size
            )
            steps["torchvision-compile-nchw"] = torchvision_step(False, True, batch, size)
    elif backend == "tensorflow":
        steps["keras-tensorflow-xla"] = keras_step("channels_last", True, batch, size)
        steps["keras-tensorflow-no-xla"] = keras_step("channels_last", False, batch, size)
    else:
        parser.error(f"KERAS_BACKEND={backend!r}: the A/B covers torch and tensorflow (jax has "
                     "one sensible setting, XLA)")
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        step()
        print(f"{name}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    reference = statistics.median(next(iter(times.values())))
    first = next(iter(times))
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32s} median {1e3 * median:7.1f} ms  {batch / median:6.1f} images/s  "
              f"x {first} {reference / median:.2f}  rounds {[round(1e3 * t) for t in values]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
