"""`alexnet-k3 bench`'s options: the parser, its checks and the workers' settings.

Framework-free like the whole parent process: the vocabularies come from
`alexnet_k3.core`, the machine from `benchmarks.machine`. `worker_config`
turns the parsed options into the JSON every worker reads, with the run's
`settings` block (what was asked for) and `metadata` block (the machine),
which every record repeats unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alexnet_k3.core import (
    ARCHS,
    BACKENDS,
    DATA_FORMATS,
    DATASETS,
    JIT_SETTINGS,
    MATMUL_PRECISIONS,
    PRECISIONS,
    VARIANTS,
)
from benchmarks import common, machine

# Defaults per device: batch size, measured steps, warm-up steps, the least
# measured seconds, end-to-end images and epochs. CPU: a quick look; GPU: timm's
# 50 steps after enough warm-up for autotuning, at least 3 s each measurement,
# a CIFAR-10-sized end-to-end set.
DEVICE_DEFAULTS = {
    "cpu": {"batch": 16, "steps": 10, "warmup": 2, "min_seconds": 0.0, "e2e_epochs": 2},
    "gpu": {"batch": 256, "steps": 50, "warmup": 10, "min_seconds": 3.0, "e2e_epochs": 3},
}
GPU_E2E_IMAGES = 50_000
# On a CPU the synthetic end-to-end set holds this many steps of the largest batch.
CPU_E2E_STEPS = 20
# The end-to-end epochs' data: "auto" is CIFAR-10 where it is on disk, else synthetic.
# (Not "folder": the end-to-end epochs have no --data-dir.)
E2E_DATASETS = ("auto", "synthetic", *(d for d in DATASETS if d != "folder"))


def build_parser() -> argparse.ArgumentParser:
    """The `alexnet-k3 bench` options; choices come from `alexnet_k3.core`."""
    parser = argparse.ArgumentParser(
        prog="alexnet-k3 bench",
        description="Throughput of AlexNet on each Keras backend next to torchvision's "
        "AlexNet in plain PyTorch. Each implementation runs in its own process.",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated Keras backends to measure ({', '.join(BACKENDS)}) or 'none'",
    )
    parser.add_argument(
        "--baselines",
        default="torchvision-eager,torchvision-compile",
        help="comma-separated baselines (torchvision-eager, torchvision-compile) or 'none'",
    )
    parser.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    parser.add_argument(
        "--timing",
        default=",".join(common.TIMINGS),
        help="comma-separated timing modes: pipelined (n steps back to back, one sync at the "
        "end, as fit runs) and per-step (a sync after every step, for percentiles)",
    )
    parser.add_argument(
        "--batch-size",
        nargs="+",
        default=None,
        metavar="N",
        help="one or several batch sizes (space or comma separated); default 16 on CPU, 256 on GPU",
    )
    parser.add_argument("--image-size", type=int, default=224, help="square input side")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument(
        "--jit",
        choices=("recommended", *JIT_SETTINGS),
        default="recommended",
        help="Keras jit_compile: 'recommended' = alexnet_k3.backend.recommended_compile_kwargs() "
        "(the package's default), 'auto' = Keras's own default. The baselines' jit is their "
        "name (torchvision-compile).",
    )
    parser.add_argument("--steps", type=int, default=None, help="measured steps (CPU 10, GPU 50)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up steps before measuring, compilation included (CPU 2, GPU 10)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        help="measure each figure for at least this long as well (CPU 0, GPU 3)",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        default=None,
        help="float32 matmuls/convolutions on a GPU: 'default' (each framework's own: TF32 "
        "on jax and tensorflow, TF32 for convolutions only on torch), 'highest' (full float32 "
        "everywhere) or 'high' (TF32 everywhere)",
    )
    parser.add_argument(
        "--equal-precision",
        action="store_true",
        help="the same numerics on both sides: --matmul-precision highest unless given, and "
        "under mixed precision the baseline's last Linear in float32 like Keras's logits",
    )
    parser.add_argument(
        "--tune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the package's process-wide speed settings in every worker (glibc keeping freed "
        "memory on a CPU, cuDNN autotuning on a GPU); --no-tune runs every row without them",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="'auto': gpu when nvidia-smi lists one, else cpu",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="FILE.json; FILE.md and FILE.png go beside it; '{device}' in the name becomes the "
        "machine's (e.g. nvidia-h200, cpu-2core)",
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="also time a real fit epoch (input pipeline included) for the Keras backends",
    )
    parser.add_argument(
        "--dataset",
        choices=E2E_DATASETS,
        default="auto",
        help="data of the --end-to-end epochs: 'auto' = cifar10 where it is on disk (never "
        "downloaded), else 'synthetic' (uint8 images shaped like CIFAR-10, fixed seed)",
    )
    parser.add_argument(
        "--e2e-images",
        type=int,
        default=None,
        help=f"images of the end-to-end set (synthetic: GPU {GPU_E2E_IMAGES}, CPU "
        f"{CPU_E2E_STEPS} steps of the largest batch; a real set: all of its training split)",
    )
    parser.add_argument(
        "--e2e-epochs",
        type=int,
        default=None,
        help="end-to-end epochs: the first (start-up) is reported apart (CPU 2, GPU 3)",
    )
    parser.add_argument(
        "--arch",
        default="alexnet",
        help=f"comma-separated networks, each measured by every implementation: "
        f"{', '.join(ARCHS)} (torchvision.models.<arch> for the baselines; default: alexnet)",
    )
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="torchvision",
        help="AlexNet variant (the baselines exist for 'torchvision' only)",
    )
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--data-format",
        choices=DATA_FORMATS,
        default="recommended",
        help="Keras image_data_format of the Keras runs",
    )
    parser.add_argument(
        "--torch-memory-format",
        choices=("auto", "channels_last", "contiguous"),
        default="auto",
        help="memory format of the torchvision baselines ('auto': channels_last, measured "
        "faster on CPU, the standard choice on GPU)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every implementation this many times, in turn, and keep each one's "
        "median round: on a shared machine, load that changes over minutes then hits all alike",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds one worker process may run before it is killed",
    )
    parser.add_argument("--note", default=None, help="a line saved with the results")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="measure nothing: print the table of a saved run and rewrite its .md and .png",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        metavar="FILE.md",
        help="replace the table between this file's '<!-- bench-table: RESULTS.json -->' "
        "(the --out or --from-json file, or its name with {device}) and '<!-- /bench-table -->' "
        "markers by this run's",
    )
    parser.add_argument("--verbose", action="store_true", help="relay the workers' whole output")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    return args


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip() and part.strip() != "none"]


def _check(parser, args) -> None:
    backends, baselines, modes = _split(args.backends), _split(args.baselines), _split(args.modes)
    timings, archs = _split(args.timing), _split(args.arch)
    for values, allowed, flag in (
        (archs, ARCHS, "--arch"),
        (backends, BACKENDS, "--backends"),
        (baselines, common.BASELINE_IMPLS, "--baselines"),
        (modes, common.MODES, "--modes"),
        (timings, common.TIMINGS, "--timing"),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            parser.error(
                f"{flag}: unknown {unknown}, expected a comma-separated subset of {list(allowed)}"
            )
    if not backends and not baselines:
        parser.error("nothing to measure: --backends and --baselines are both empty")
    if not modes:
        parser.error("--modes is empty; give train, infer or both")
    if not timings:
        parser.error("--timing is empty; give pipelined, per-step or both")
    if not archs:
        parser.error(f"--arch is empty; give one or more of {list(ARCHS)}")
    args.backends, args.baselines, args.modes, args.arch = backends, baselines, modes, archs
    args.timing = [t for t in common.TIMINGS if t in timings]
    device = machine.detect_device() if args.device == "auto" else args.device
    args.device = device
    defaults = DEVICE_DEFAULTS[device]
    steps, warmup = defaults["steps"], defaults["warmup"]
    sizes = []
    for text in args.batch_size or [str(defaults["batch"])]:
        for part in _split(text):
            try:
                sizes.append(int(part))
            except ValueError:
                parser.error(f"--batch-size: {part!r} is not an integer")
    if not sizes or min(sizes) < 1:
        parser.error(f"--batch-size must be positive integers, received {args.batch_size}")
    args.batch_size = sorted(set(sizes))
    args.steps = steps if args.steps is None else args.steps
    args.warmup = warmup if args.warmup is None else args.warmup
    if args.steps < 1 or args.warmup < 1:
        parser.error(
            f"--steps and --warmup must be >= 1 (warm-up holds the compilation), "
            f"received --steps {args.steps} --warmup {args.warmup}"
        )
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, received {args.rounds}")
    args.min_seconds = defaults["min_seconds"] if args.min_seconds is None else args.min_seconds
    if not args.min_seconds >= 0:
        parser.error(f"--min-seconds must be >= 0, received {args.min_seconds}")
    if args.matmul_precision is None:
        args.matmul_precision = "highest" if args.equal_precision else "default"
    _check_end_to_end(parser, args, device, defaults)
    if args.image_size < 1 or args.num_classes < 1:
        parser.error("--image-size and --num-classes must be positive")
    if args.readme is not None and args.from_json is None and args.out is None:
        parser.error("--readme refreshes the table of a saved run: give --out or --from-json")
    if args.out is not None and args.out.suffix != ".json":
        parser.error(f"--out must name a .json file, received {str(args.out)!r}")


def _check_end_to_end(parser, args, device: str, defaults: dict) -> None:
    """Resolves --dataset auto and the end-to-end set's size and epochs."""
    if args.dataset == "auto":
        from alexnet_k3.datasets.cifar10 import cifar10_on_disk

        args.dataset = "cifar10" if cifar10_on_disk() else "synthetic"
    if args.e2e_images is None and args.dataset == "synthetic":
        cpu_images = CPU_E2E_STEPS * max(args.batch_size)
        args.e2e_images = GPU_E2E_IMAGES if device == "gpu" else cpu_images
    args.e2e_epochs = defaults["e2e_epochs"] if args.e2e_epochs is None else args.e2e_epochs
    if args.e2e_images is not None and args.e2e_images < 1:
        parser.error(f"--e2e-images must be positive, received {args.e2e_images}")
    if args.e2e_epochs < 2:
        parser.error(
            f"--e2e-epochs must be >= 2 (the first is start-up, timed apart from the steady "
            f"ones), received {args.e2e_epochs}"
        )


# The requested settings every record repeats as its `settings` block (equal across rows).
SETTINGS_KEYS = (
    "modes",
    "timings",
    "batch_sizes",
    "image_size",
    "precision",
    "jit",
    "steps",
    "warmup",
    "min_seconds",
    "matmul_precision",
    "equal_precision",
    "tune",
    "device",
    "end_to_end",
    "dataset",
    "e2e_images",
    "e2e_epochs",
    "archs",
    "variant",
    "num_classes",
    "data_format",
    "torch_memory_format",
    "rounds",
)


def worker_config(args) -> dict:
    """The settings every worker reads (JSON-serializable), with `settings` and `metadata`."""
    config = {
        "modes": list(args.modes),
        "timings": list(args.timing),
        "batch_sizes": list(args.batch_size),
        "image_size": args.image_size,
        "precision": args.precision,
        "jit": args.jit,
        "steps": args.steps,
        "warmup": args.warmup,
        "min_seconds": args.min_seconds,
        "matmul_precision": args.matmul_precision,
        "equal_precision": args.equal_precision,
        "tune": args.tune,
        "device": args.device,
        "end_to_end": args.end_to_end,
        "dataset": args.dataset,
        "e2e_images": args.e2e_images,
        "e2e_epochs": args.e2e_epochs,
        # Every network measured; each worker gets one of them as `arch` (runner.main).
        "archs": list(args.arch),
        "arch": args.arch[0],
        "variant": args.variant,
        "num_classes": args.num_classes,
        "data_format": args.data_format,
        "torch_memory_format": args.torch_memory_format,
        "rounds": args.rounds,
        "note": args.note,
    }
    config["settings"] = {key: config[key] for key in SETTINGS_KEYS}
    config["metadata"] = machine.metadata(args.device)
    if args.out is not None and "{device}" in str(args.out):
        slug = machine.device_slug(config["metadata"], args.device)
        args.out = Path(str(args.out).replace("{device}", slug))
    return config
