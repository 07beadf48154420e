"""Interleaved A/B of the speed settings behind `alexnet_k3.backend.recommended_*`.

On a machine whose load changes from minute to minute, separate runs compare
moments, not settings. Here every setting lives in one process and they take
turns, one training step each, for several rounds; medians are compared.

    KERAS_BACKEND=torch python -m benchmarks.settings_ab --rounds 6 [--jit]
    KERAS_BACKEND=tensorflow python -m benchmarks.settings_ab --rounds 6
    KERAS_BACKEND=jax python -m benchmarks.settings_ab --rounds 6

torch: torchvision eager (NCHW, channels_last), Keras channels_last and
channels_first (NCHW input, or the NHWC-memory input the pipeline's `Permute`
gives), and with --jit Keras `jit_compile=True` and torchvision-compile.
tensorflow: Keras with and without XLA. jax: channels_last vs channels_first.
All of them run with `alexnet_k3.backend.keep_freed_memory()`, the package's
CPU default. Training steps on a batch generated on the device, built by the
benchmark workers' own functions: Keras compiled by `alexnet_k3.training.compile_model`
(`keras_bench.compile_for_training`: SGD momentum 0.9, loss only), torchvision by
`torchvision_baseline.make_step`.

`--malloc` compares that malloc setting itself. It cannot be interleaved in
one process (freed memory kept in the heap by one step is reused by the next,
whatever the setting), so it alternates fresh processes instead, each timing
`--steps` steps after warm-up:

    KERAS_BACKEND=torch python -m benchmarks.settings_ab --malloc --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

NUM_CLASSES = 1000


def keras_step(data_format: str, jit, batch: int, size: int, nhwc_memory: bool = True):
    """A Keras training step as the benchmark's synthetic `train` rows time it."""
    import keras

    import alexnet_k3
    from benchmarks.keras_bench import compile_for_training, synthetic_images, synthetic_labels

    keras.config.set_image_data_format(data_format)
    shape = (size, size, 3) if data_format == "channels_last" else (3, size, size)
    model = alexnet_k3.AlexNet(num_classes=NUM_CLASSES, input_shape=shape)
    config = {"num_classes": NUM_CLASSES, "precision": "float32"}
    compile_for_training(model, config, jit, steps=1000)
    if nhwc_memory:
        x = synthetic_images(batch, shape)
    else:
        x = keras.random.normal((batch, *shape), seed=0)
    y = synthetic_labels(batch, NUM_CLASSES)
    return lambda: model.train_on_batch(x, y)


def torchvision_step(channels_last: bool, compiled: bool, batch: int, size: int):
    """torchvision's eager or compiled training step on the CPU, as the baseline times it."""
    from benchmarks.torchvision_baseline import make_step

    return make_step(
        "train", batch, size, NUM_CLASSES, compiled=compiled, channels_last=channels_last
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--jit", action="store_true", help="torch: add the compiled settings")
    parser.add_argument("--malloc", action="store_true", help="A/B of keep_freed_memory()")
    parser.add_argument("--steps", type=int, default=8, help="--malloc: steps per process")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "KEPT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    if args.malloc:
        return _malloc_ab(args)
    from alexnet_k3 import backend as kb

    kb.keep_freed_memory()
    backend, batch, size = kb.name(), args.batch_size, args.image_size
    steps = {}
    if backend == "torch":
        steps["torchvision-eager-nhwc"] = torchvision_step(True, False, batch, size)
        steps["torchvision-eager-nchw"] = torchvision_step(False, False, batch, size)
        steps["keras-torch-channels_last"] = keras_step("channels_last", False, batch, size)
        steps["keras-torch-channels_first-nchw-input"] = keras_step(
            "channels_first", False, batch, size, nhwc_memory=False
        )
        steps["keras-torch-channels_first"] = keras_step("channels_first", False, batch, size)
        if args.jit:
            steps["keras-torch-channels_first-jit"] = keras_step(
                "channels_first", True, batch, size
            )
            steps["torchvision-compile-nhwc"] = torchvision_step(True, True, batch, size)
    elif backend == "tensorflow":
        steps["keras-tensorflow-xla"] = keras_step("channels_last", True, batch, size)
        steps["keras-tensorflow-no-xla"] = keras_step("channels_last", False, batch, size)
    else:
        steps["keras-jax-channels_last"] = keras_step("channels_last", True, batch, size)
        steps["keras-jax-channels_first"] = keras_step("channels_first", True, batch, size)
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
    _print_medians(times, batch)
    return 0


def _print_medians(times: dict, batch: int) -> None:
    reference = statistics.median(next(iter(times.values())))
    first = next(iter(times))
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:40s} median {1e3 * median:7.1f} ms  {batch / median:6.1f} images/s  "
            f"x {first} {reference / median:.2f}  rounds {[round(1e3 * t) for t in values]}"
        )


def _malloc_ab(args) -> int:
    """Fresh processes in turn: torchvision-eager and the package's default Keras backend
    setting, each with glibc's malloc as it is and with `keep_freed_memory()`."""
    backend = os.environ.get("KERAS_BACKEND", "torch")
    impls = (["torchvision"] if backend == "torch" else []) + [f"keras-{backend}"]
    times = {f"{impl}{'+kept' if kept else ''}": [] for impl in impls for kept in (0, 1)}
    for _ in range(args.rounds):
        for impl in impls:
            for kept in (0, 1):
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.settings_ab",
                    "--child",
                    impl,
                    str(kept),
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--image-size",
                    str(args.image_size),
                ]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                seconds = float(out.stdout.strip().splitlines()[-1])
                times[f"{impl}{'+kept' if kept else ''}"].append(seconds)
                print(f"{impl} kept={kept}: {1e3 * seconds:.1f} ms", flush=True)
    _print_medians(times, args.batch_size)
    return 0


def _child(args) -> int:
    """One setting in this fresh process; prints the median step time in seconds."""
    impl, kept = args.child
    batch, size = args.batch_size, args.image_size
    if kept == "1":
        from alexnet_k3.backend import keep_freed_memory

        keep_freed_memory()
    if impl == "torchvision":
        step = torchvision_step(True, False, batch, size)
    else:
        from alexnet_k3.backend import recommended_compile_kwargs, recommended_image_data_format

        jit = recommended_compile_kwargs()["jit_compile"]
        step = keras_step(recommended_image_data_format(), jit, batch, size)
    step()
    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(statistics.median(times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
