"""How long converting a full torchvision AlexNet checkpoint and loading it takes.

Makes a random-weight, full-size (61.1M parameters, 233 MB) torchvision AlexNet
checkpoint in a temporary folder, then times, on the active Keras backend:

- convert: `convert_checkpoint(.pth -> .weights.h5)` (`alexnet-k3 convert`),
- load:    `AlexNet(weights=FILE.weights.h5)`,
- direct:  `AlexNet(weights=FILE.pth)`, for comparison,
- build:   `AlexNet()` alone (random initialization), which the three above include.

The first round includes one-time costs (the backend's first kernels); the figure
to quote is the median over the rounds. The checkpoint was just written, so it is
read from the page cache, as a file read a second time is.

Usage:
    KERAS_BACKEND=torch python benchmarks/convert_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

# Imported before keras (and so tensorflow): torchvision imports triton, whose native
# library segfaults the process when it loads after tensorflow's.
import torch
import torchvision


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument(
        "--backend",
        choices=("torch", "jax", "tensorflow"),
        default=None,
        help="Keras backend (default: $KERAS_BACKEND)",
    )
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend

    import keras

    import alexnet_k3 as ak
    from alexnet_k3 import backend
    from alexnet_k3.convert import convert_checkpoint

    def ready(model):
        # jax computes asynchronously: without this, a step's initialization would
        # be billed to the next step.
        backend.synchronize([variable.value for variable in model.weights])

    times = {"convert": [], "load": [], "convert_plus_load": [], "direct": [], "build": []}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "alexnet_random.pth")
        torch.manual_seed(0)
        torch.save(torchvision.models.alexnet().state_dict(), checkpoint)
        size_mb = os.path.getsize(checkpoint) / 1e6
        out = os.path.join(folder, "alexnet.weights.h5")
        for _ in range(args.rounds):
            start = time.perf_counter()
            convert_checkpoint(checkpoint, out)
            converted = time.perf_counter()
            ready(ak.AlexNet(weights=out))
            loaded = time.perf_counter()
            ready(ak.AlexNet(weights=checkpoint))
            direct = time.perf_counter()
            ready(ak.AlexNet())
            built = time.perf_counter()
            times["convert"].append(converted - start)
            times["load"].append(loaded - converted)
            times["convert_plus_load"].append(loaded - start)
            times["direct"].append(direct - loaded)
            times["build"].append(built - direct)

    record = {
        "backend": backend.name(),
        "device": backend.device_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "torch": torch.__version__,
        "checkpoint_mb": round(size_mb, 1),
        "rounds": args.rounds,
        **{f"{k}_s_median": round(statistics.median(v), 3) for k, v in times.items()},
        **{f"{k}_s_first": round(v[0], 3) for k, v in times.items()},
    }
    print(
        f"{record['backend']}: convert {record['convert_s_median']:.2f} s + load "
        f"{record['load_s_median']:.2f} s = {record['convert_plus_load_s_median']:.2f} s "
        f"(median of {args.rounds}; first round {record['convert_plus_load_s_first']:.2f} s); "
        f"AlexNet(weights=.pth) {record['direct_s_median']:.2f} s; AlexNet() alone "
        f"{record['build_s_median']:.2f} s; {size_mb:.0f} MB checkpoint on {record['device']}, "
        f"{record['cpu_count']} CPUs"
    )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
