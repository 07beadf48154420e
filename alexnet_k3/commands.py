"""What each `alexnet-k3` command does once its arguments are parsed (`alexnet_k3.cli`).

One function per command, named after it, taking the parsed arguments and returning
the exit status. Keras and the backend are imported inside them, after the command
line has chosen the backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alexnet_k3.config import TrainConfig, implementation_of
from alexnet_k3.core import ARCH_TITLES, ARCHS_WITH_VARIANTS


def train(args) -> int:
    # Exactly the options given: train() fills in TrainConfig's defaults, and a
    # resumed run refuses any that contradicts its saved settings.
    settings = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    defaults = TrainConfig()
    dataset = settings.get("dataset", defaults.dataset)
    arch = settings.get("arch", defaults.arch)
    variant = settings.get("variant", defaults.variant) if arch in ARCHS_WITH_VARIANTS else arch
    verbose = "auto" if args.verbose is None else args.verbose
    if args.out is None:  # the default folder depends on the implementation given
        implementation = settings.get("implementation", defaults.implementation)
    else:  # a resumed run's own, unless given
        implementation = implementation_of(settings, args.out, args.resume)
    options = {"resume": args.resume, "verbose": verbose, **settings}
    if implementation == "torch-reference":
        # The plain PyTorch loop: Keras is never imported.
        if args.backend not in (None, "torch"):
            raise ValueError(
                f"--backend {args.backend} was given with --implementation torch-reference, "
                "which trains in plain PyTorch on no Keras backend: leave out --backend "
                "(or give --backend torch)."
            )
        from alexnet_k3 import reference, tracking

        args.out = args.out or f"runs/{dataset}-{variant}-torch-reference"
        metrics = reference.train(args.out, **options)
        tracking.log_if_enabled(args.out, args.mlflow)
    else:
        from alexnet_k3 import backend, training

        args.out = args.out or f"runs/{dataset}-{variant}-{backend.name()}"
        metrics = training.train(args.out, mlflow=args.mlflow, **options)
        if "rank" in metrics:  # a job's process other than 0: it has printed its checksum line
            return 0
    trainer = metrics.get("implementation", "keras")
    trainer = metrics["backend"] if trainer == "keras" else trainer
    print(
        f"{trainer}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"loss {metrics['test_loss']:.4f}, {metrics.get('images_per_second')} images/s "
        f"-> {args.out}/report.md"
    )
    return 0


def evaluate(args) -> int:
    if args.mlflow and not args.out:
        raise ValueError(
            "--mlflow logs the evaluation's folder, but no --out was given: add --out FOLDER."
        )
    from alexnet_k3.evaluation import evaluate

    metrics = evaluate(
        args.model,
        args.dataset,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        out=args.out,
        test_split=args.test_split,
        strict=args.strict,
        arch=args.arch,
    )
    trained = metrics.get("trained_on_backend")
    origin = f" (trained on {trained})" if trained else ""
    print(
        f"{metrics['backend']}{origin}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"loss {metrics['test_loss']:.4f} over {metrics['test_images']} images"
        + (f" -> {args.out}/report.md" if args.out else "")
    )
    if args.out:
        from alexnet_k3 import tracking

        tracking.log_if_enabled(args.out, args.mlflow)
    return 0


def predict(args) -> int:
    from alexnet_k3 import prediction

    inputs = list(args.inputs)
    if args.weights is None:
        if not inputs[0].endswith(".keras"):
            raise ValueError(
                f"the first argument must be a model.keras written by `alexnet-k3 train`, "
                f"received {inputs[0]!r}. To predict with torchvision's "
                f"{ARCH_TITLES[args.arch]}, pass --weights imagenet (or a .pth / .weights.h5 "
                "file) before the images."
            )
        model, inputs = inputs[0], inputs[1:]
        if not inputs:
            raise ValueError(f"no images were given after {model}: add image files or folders.")
    else:
        model = args.weights
    if args.out:
        prediction.check_output(args.out)
    rows = prediction.predict(
        model, inputs, top=args.top, batch_size=args.batch_size, arch=args.arch
    )
    print(prediction.table(rows), end="")
    failed = sum(1 for row in rows if row["error"])
    if failed:
        print(f"{failed} of {len(rows)} files could not be read (see their rows)", file=sys.stderr)
    if args.out:
        print(f"wrote {prediction.write(rows, args.out)}")
    return 1 if failed == len(rows) else 0


def convert(args) -> int:
    from alexnet_k3.convert import convert_checkpoint

    path = convert_checkpoint(args.weights, args.out, num_classes=args.num_classes, arch=args.arch)
    print(f"wrote {path}")
    return 0


def compare(args) -> int:
    from alexnet_k3.report import compare_runs

    table = compare_runs(args.runs)
    print(table, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    return 0


def info(args) -> int:
    from alexnet_k3 import backend

    print(f"backend: {backend.name()}")
    print(f"device: {backend.device_name()} ({backend.accelerator()})")
    for package, version in backend.versions().items():
        print(f"{package}: {version}")
    return 0


def study(args) -> int:
    from alexnet_k3.studies import load_plan, study

    plan = load_plan(args.plan)
    if args.dry_run:
        print(plan.table(), end="")
        return 0
    record = study(
        plan, args.out, weights_dir=args.weights_dir, restart=args.restart, mlflow=args.mlflow
    )
    statuses = [r["status"] for r in record["runs"]]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("ok", "failed", "skipped"))
    print(f"study: {len(statuses)} runs ({counts}) -> {args.out}/study.html")
    return 1 if "failed" in statuses else 0


BY_NAME = {
    "info": info,
    "train": train,
    "evaluate": evaluate,
    "predict": predict,
    "convert": convert,
    "compare": compare,
    "study": study,
}
