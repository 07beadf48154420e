"""`alexnet-k3`: train, evaluate, predict, convert, compare and bench from the command line.

The backend (`--backend` or KERAS_BACKEND) must be chosen before Keras is
imported, so this module parses the arguments first and imports Keras (through
the package's modules) only afterwards.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import fields
from pathlib import Path

from alexnet_k3 import commands, core, quiet
from alexnet_k3.config import KINDS, TrainConfig
from alexnet_k3.core import ARCHS, BACKENDS, DATASETS, JIT_SETTINGS
from alexnet_k3.runs import TrainingDiverged

# Read by alexnet_k3.downloads and alexnet_k3.datasets.cifar10 at download time; the
# options below set them for this process (the names are repeated here so that the
# command line imports nothing but core and config before choosing a backend).
DOWNLOAD_TIMEOUT_ENV_VAR = "ALEXNET_K3_DOWNLOAD_TIMEOUT"
CIFAR10_URL_ENV_VAR = "ALEXNET_K3_CIFAR10_URL"


def _checked(convert, accept, expected):
    """An argparse `type` converting with `convert` and keeping values `accept` admits."""

    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, KeyError):
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
        return value

    return parse


def _arg_type(kind: str):
    """The argparse `type` of a `TrainConfig` kind: the same test as `TrainConfig.validate`."""
    kind = KINDS[kind]
    return _checked(kind.parse, kind.test, kind.words)


_positive_int = _arg_type("positive_int")


def add_download_options(parser: argparse.ArgumentParser, cifar10: bool = True) -> None:
    """--download-timeout (and --cifar10-url): how the downloads of this command run."""
    parser.add_argument(
        "--download-timeout",
        type=_arg_type("positive_float"),
        metavar="SECONDS",
        help=f"give up a download after this long without data (default: "
        f"{DOWNLOAD_TIMEOUT_ENV_VAR}, else 60)",
    )
    if cifar10:
        parser.add_argument(
            "--cifar10-url",
            metavar="URL",
            help="download CIFAR-10 from this mirror (http(s):// or file://; the official "
            f"md5 is still checked; default: {CIFAR10_URL_ENV_VAR}, else the official URL)",
        )


def _apply_download_options(args) -> dict:
    """Sets the download variables from `args`; returns their previous values."""
    previous = {
        name: os.environ.get(name) for name in (DOWNLOAD_TIMEOUT_ENV_VAR, CIFAR10_URL_ENV_VAR)
    }
    if getattr(args, "download_timeout", None) is not None:
        os.environ[DOWNLOAD_TIMEOUT_ENV_VAR] = repr(args.download_timeout)
    if getattr(args, "cifar10_url", None):
        os.environ[CIFAR10_URL_ENV_VAR] = args.cifar10_url
    return previous


def _restore(environ: dict) -> None:
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per `TrainConfig` field: dest = field name, help and kind from the field.

    Defaults are left out of the parsed namespace (`argparse.SUPPRESS`), so
    `vars(args)` holds exactly the options the user typed: `train` fills in the
    rest, and `--resume` can tell an explicit value from a default.
    """
    for f in fields(TrainConfig):
        meta = f.metadata
        flags = meta["flags"] or (f"--{f.name.replace('_', '-')}",)
        options = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"]}
        if meta["kind"] == "bool":
            # --x and --no-x both exist, so a default can change without breaking scripts.
            options["action"] = argparse.BooleanOptionalAction
            options["help"] += f" (default: {'on' if f.default else 'off'})"
        else:
            if meta["kind"] == "jit":
                options["metavar"] = "{" + ",".join(JIT_SETTINGS) + "}"
            if meta["choices"] is not None:
                options["choices"] = meta["choices"]
            else:
                options["type"] = _arg_type(meta["kind"])
            if f.default is not None and "default" not in meta["help"]:
                shown = next((k for k, v in JIT_SETTINGS.items() if v is f.default), f.default)
                options["help"] += f" (default: {shown})"
        parser.add_argument(*flags, **options)


def add_tracking_option(parser: argparse.ArgumentParser) -> None:
    """--mlflow/--no-mlflow: log the finished run folder to MLflow (alexnet_k3.tracking)."""
    parser.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log the finished run to MLflow (needs `pip install 'alexnet-k3[mlflow]'`): to "
        "MLFLOW_TRACKING_URI, else a local store beside the run folder (OUT/../mlruns.db), "
        "experiment MLFLOW_EXPERIMENT_NAME, else alexnet-k3; a failure only warns "
        "(default: on when MLFLOW_TRACKING_URI is set)",
    )


def add_arch_option(parser: argparse.ArgumentParser, what: str) -> None:
    """--arch for the commands that build a network from weights (predict, convert)."""
    parser.add_argument(
        "--arch", choices=ARCHS, default=ARCHS[0], help=f"{what} (default: {ARCHS[0]})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-k3",
        description="One Keras 3 AlexNet on torch, tensorflow or jax: train, evaluate, "
        "convert torchvision weights, compare runs, benchmark backends.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_backend(sub):
        sub.add_argument(
            "--backend",
            choices=BACKENDS,
            help="Keras backend for this run (default: KERAS_BACKEND, else Keras's default)",
        )
        return sub

    train = with_backend(commands.add_parser("train", help="train, then evaluate on the test set"))
    add_config_options(train)
    train.add_argument("--out", help="run folder (default: runs/DATASET-VARIANT-BACKEND)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out with its saved settings",
    )
    train.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="0 silent, 1 progress bar, 2 one line per epoch",
    )
    add_tracking_option(train)
    add_download_options(train)

    evaluate = with_backend(
        commands.add_parser("evaluate", help="evaluate a saved model.keras on a test set")
    )
    evaluate.add_argument("model", help="a model.keras written by `alexnet-k3 train`")
    evaluate.add_argument(
        "--arch",
        choices=ARCHS,
        help="refuse a model of another network (default: evaluate whichever it holds)",
    )
    evaluate.add_argument(
        "--dataset",
        choices=DATASETS,
        help="default: the dataset (and --data-dir) of the model's run, from config.json "
        "beside the model, else digits",
    )
    evaluate.add_argument("--data-dir", help="CIFAR-10's folder or tarball, or the image folder")
    evaluate.add_argument(
        "--test-split",
        type=_arg_type("open_fraction"),
        help="folder without train/test subfolders: share held out for testing (default: "
        "the training run's, from config.json beside the model, else 0.2)",
    )
    evaluate.add_argument(
        "--strict",
        action="store_true",
        help="folder: stop at a file that is not a readable image instead of skipping it",
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)
    evaluate.add_argument("--out", help="folder for metrics.json, report.md and plots")
    add_tracking_option(evaluate)
    add_download_options(evaluate)

    predict = with_backend(
        commands.add_parser("predict", help="top classes of images: a trained model or ImageNet's")
    )
    predict.add_argument(
        "inputs",
        nargs="+",
        metavar="MODEL_OR_IMAGE",
        help="a model.keras from `alexnet-k3 train`, then image files or folders (walked); "
        "with --weights, image files or folders only",
    )
    predict.add_argument(
        "--weights",
        help="predict with torchvision's network of --arch instead of a model.keras: "
        "'imagenet', a torchvision .pth file or a .weights.h5 from `alexnet-k3 convert`",
    )
    add_arch_option(predict, "with --weights: the network they are for")
    predict.add_argument(
        "--top", type=_positive_int, default=5, help="classes per image (default: 5)"
    )
    predict.add_argument("--out", help="also write the predictions to FILE.csv or FILE.json")
    predict.add_argument(
        "--batch-size", type=_positive_int, default=32, help="images at once (default: 32)"
    )
    add_download_options(predict, cifar10=False)

    convert = with_backend(
        commands.add_parser(
            "convert",
            help="torchvision AlexNet or VGG16 weights -> Keras .weights.h5 (no torch "
            "needed later)",
        )
    )
    add_arch_option(convert, "the network of the checkpoint")
    convert.add_argument("--weights", required=True, help="'imagenet' or a torchvision .pth file")
    convert.add_argument("--out", required=True, help="FILE.weights.h5")
    convert.add_argument(
        "--num-classes", type=_positive_int, help="the checkpoint's classes (default: read it)"
    )
    add_download_options(convert, cifar10=False)

    compare = commands.add_parser("compare", help="markdown table of several runs")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", help="also write the table to this file")

    with_backend(commands.add_parser("info", help="backend, device and versions in use"))

    study = commands.add_parser(
        "study",
        help="a plan of runs (every backend, the torch reference, transfer), one report",
        description="Runs every run of a plan, each an ordinary run folder OUT/NAME trained "
        "in its own process, then writes OUT/study.json, study.md and study.html. Started "
        "again with the same command, a study continues where it stopped.",
    )
    study.add_argument(
        "--plan",
        required=True,
        help="a preset (demo: the digits, offline; course: CIFAR-10, the course study) "
        "or a TOML plan file",
    )
    study.add_argument("--out", required=True, help="the study's folder")
    study.add_argument("--dry-run", action="store_true", help="print the plan as a table and exit")
    study.add_argument(
        "--restart",
        action="append",
        default=[],
        metavar="NAME",
        help="delete run NAME's folder and run it again (repeatable)",
    )
    study.add_argument(
        "--weights-dir",
        help="a folder with copies of torchvision's ImageNet checkpoints, looked in before "
        "torch hub's cache ($TORCH_HOME/hub/checkpoints) and a download",
    )
    study.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log every run to MLflow (default: on when MLFLOW_TRACKING_URI is set)",
    )
    add_download_options(study)

    commands.add_parser(
        "bench",
        help="throughput per backend and vs torchvision (see `alexnet-k3 bench --help`)",
        add_help=False,
    )
    for name, sub in commands.choices.items():
        if name != "bench":  # --debug after the command too; SUPPRESS keeps the global one
            sub.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
            )
    return parser


DEBUG_HELP = (
    "on an error, show Python's full traceback instead of one line; also show the "
    f"frameworks' C++ start-up and info logging (or set {quiet.VERBOSE_ENV_VAR}=1)"
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        quiet.quiet_frameworks(verbose="--debug" in argv)
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    # Before any framework is imported: their C++ start-up logging is read then.
    undo_quiet = quiet.quiet_frameworks(verbose=args.debug)
    # Errors raised inside the package name this command's flags, not Python keywords.
    # Both settings are put back afterwards, for callers of main() in a Python process.
    named_as_flags = core.from_command_line()
    core.use_command_line_names()
    environ = _apply_download_options(args)
    try:
        if getattr(args, "backend", None):
            _select_backend(args.backend)
        _check_backend_installed(args.command)
        return commands.BY_NAME[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except TrainingDiverged as error:
        if args.debug:
            raise
        # Not a usage error: the run started and failed, and says what to change.
        print(f"alexnet-k3 {args.command}: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, ImportError) as error:
        if args.debug:
            raise
        # Errors users cause (bad files, bad settings, missing data) end in one clear line.
        parser.exit(2, f"alexnet-k3 {args.command}: error: {error}\n")
    finally:
        core.use_command_line_names(named_as_flags)
        _restore(environ)
        if undo_quiet is not None:
            undo_quiet()


def _select_backend(name: str) -> None:
    current = os.environ.get("KERAS_BACKEND")
    if "keras" in sys.modules:
        from alexnet_k3 import backend

        if backend.name() != name:
            raise ValueError(
                f"--backend {name} was asked for, but Keras is already running on "
                f"{backend.name()!r} in this process. Set KERAS_BACKEND={name} "
                "before starting Python instead."
            )
    elif current and current != name:
        print(f"--backend {name} overrides KERAS_BACKEND={current}", file=sys.stderr)
    os.environ["KERAS_BACKEND"] = name


def _check_backend_installed(command: str) -> None:
    name = os.environ.get("KERAS_BACKEND")
    if command in ("compare", "study"):  # no Keras in this process
        return
    if name and name not in BACKENDS:
        raise ValueError(
            f"KERAS_BACKEND={name} is not a backend alexnet_k3 runs on (Keras's numpy and "
            f"openvino backends cannot train); expected one of {', '.join(BACKENDS)}. "
            "Set KERAS_BACKEND to one of them, or pass --backend."
        )
    if name in BACKENDS and importlib.util.find_spec(name) is None:
        raise ImportError(
            f"the {name} backend was chosen but {name} is not installed. "
            f"Install it with `pip install alexnet-k3[{name}]`, or choose another --backend."
        )


def _bench(argv: list[str]) -> int:
    """Runs benchmarks/runner.py from the source tree (the runner is not part of the wheel)."""
    candidates = [Path(__file__).resolve().parent.parent, Path.cwd()]
    for root in candidates:
        runner = root / "benchmarks" / "runner.py"
        if runner.is_file():
            sys.path.insert(0, str(root))
            from benchmarks.runner import main as bench_main

            return bench_main(argv)
    print(
        "alexnet-k3 bench: error: the benchmark runner (benchmarks/runner.py) was not found "
        f"in {' or '.join(str(c) for c in candidates)}. Run it from a checkout of the "
        "alexnet_k3 repository.",
        file=sys.stderr,
    )
    return 2
