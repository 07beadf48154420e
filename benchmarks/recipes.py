"""Our training recipe against a plain PyTorch loop, on the same data and seeds.

For each seed: one `alexnet-k3 train --implementation torch-reference` run (the plain
PyTorch loop, `alexnet_k3.reference`, row "torch-reference"), then, for each recipe and
each backend, one `python -m alexnet_k3 train` run with the recipe's extra options, all
with the same variant, data, image size, batch and epochs (`--variant`, default cifar;
`--data-dir` or `--digits`; `--image-size`; `--batch-size`). Every run is its own
process. The accuracies are the test set's, from each run's `metrics.json`: the
reference's last epoch, the package's last epoch by default (the best by validation
accuracy when a recipe sets `--validation-split`).

Writes `<out-dir>/<name>.json` (every run, then one summary row per recipe and backend)
and `<name>.md` (the table). Seconds are wall-clock per process, start-up included.

Usage:
    python -m benchmarks.recipes --data-dir data/digits-proxy --seeds 0 1 2 \
        --backends torch jax tensorflow --recipe default="" \
        --recipe plain="--no-augment --warmup-epochs 0" --name proxy-recipes
    python -m benchmarks.recipes --digits --variant torchvision --image-size 64 \
        --batch-size 64 --seeds 0 1 --backends torch jax tensorflow --name tv-64

`--data-dir` is a CIFAR-10-layout folder; when it holds none, the digits proxy
(`benchmarks.proxy_data`, `--proxy-seed`) is written there first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

from alexnet_k3.core import atomic_write_json, atomic_write_text, cpu_name
from benchmarks import proxy_data

RESULTS = Path(__file__).parent / "results"
REFERENCE = "torch-reference"


def _run(command: list[str], env: dict | None, timeout: float) -> tuple[float, str | None]:
    """Runs one process; returns its wall seconds and an error (None when it succeeded)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        return seconds, f"exit {done.returncode}: {lines[-1][:300]}"
    return seconds, None


def _shared_args(setup: dict) -> list[str]:
    """The options both trainers take alike: variant, batch size, image size."""
    args = ["--variant", setup.get("variant", "cifar")]
    args += ["--batch-size", str(setup.get("batch_size", 128))]
    if setup.get("image_size"):
        args += ["--image-size", str(setup["image_size"])]
    return args


def reference_run(
    data_dir: Path | None, seed: int, epochs: int, extra: str, timeout: float, setup: dict
) -> dict:
    """One plain-PyTorch run (`--implementation torch-reference`): its row, as `package_run`'s.

    `data_dir` None: the digits. `setup`: variant, batch size, image size. `extra`: more
    `alexnet-k3 train` options for it.
    """
    args = f"--implementation {REFERENCE} {extra}".strip()
    row = package_run(data_dir, REFERENCE, args, "torch", seed, epochs, timeout, setup)
    return {**row, "args": extra}


def package_run(
    data_dir: Path | None,
    recipe: str,
    args: str,
    backend: str,
    seed: int,
    epochs: int,
    timeout: float,
    setup: dict,
) -> dict:
    """One `alexnet-k3 train` run of a recipe on a backend (`data_dir` None: the digits)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "alexnet_k3", "train", "--backend", backend]
        if data_dir is None:
            command += ["--dataset", "digits"]
        else:
            command += ["--dataset", "cifar10", "--data-dir", str(data_dir)]
        command += [*_shared_args(setup), "--epochs", str(epochs), "--seed", str(seed)]
        command += ["--out", str(out), "--verbose", "0", *shlex.split(args)]
        env = {**os.environ, "KERAS_BACKEND": backend}
        seconds, error = _run(command, env, timeout)
        row = {"recipe": recipe, "backend": backend, "seed": seed, "args": args}
        if error:
            return {**row, "error": error, "seconds": round(seconds, 1)}
        metrics = json.loads((out / "metrics.json").read_text())
        history = json.loads((out / "history.json").read_text())
        return {
            **row,
            "test_accuracy": metrics["test_accuracy"],
            "learning_rate": metrics.get("learning_rate"),
            "train_loss_per_epoch": [e.get("loss") for e in history],
            "val_accuracy_per_epoch": [e.get("val_accuracy") for e in history],
            "seconds": round(seconds, 1),
            "train_seconds": metrics.get("train_seconds"),
            "versions": metrics.get("versions"),
        }


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (recipe, backend): the seeds and the mean/min/max test accuracy."""
    reference = {
        r["seed"]: r["test_accuracy"]
        for r in runs
        if r["recipe"] == REFERENCE and "test_accuracy" in r
    }
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["recipe"], run["backend"]), []).append(run)
    rows = []
    for (recipe, backend), group in groups.items():
        accuracies = [r["test_accuracy"] for r in group if "test_accuracy" in r]
        # Paired by seed: the seeds' spread is far wider than the recipes' differences.
        paired = [
            r["test_accuracy"] - reference[r["seed"]]
            for r in group
            if "test_accuracy" in r and r["seed"] in reference
        ]
        rows.append(
            {
                "recipe": recipe,
                "backend": backend,
                "args": group[0]["args"],
                "seeds": [r["seed"] for r in group],
                "failed": len(group) - len(accuracies),
                "mean": round(mean(accuracies), 4) if accuracies else None,
                "min": min(accuracies, default=None),
                "max": max(accuracies, default=None),
                "vs_reference": round(mean(paired), 4) if paired and recipe != REFERENCE else None,
                "seconds_mean": round(mean(r["seconds"] for r in group), 1),
            }
        )
    return rows


def markdown(summary: list[dict], settings: dict) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    def points(value):
        return "-" if value is None else f"{100 * value:+.1f}"

    size = settings.get("image_size")
    lines = [
        f"# {settings['name']}: test accuracy, {settings['epochs']} epochs, "
        f"batch {settings.get('batch_size', 128)}, variant {settings.get('variant', 'cifar')}"
        + (f", {size}x{size}" if size else ""),
        "",
        f"Data: `{settings['data_dir']}`. CPU: {settings['cpu']} ({settings['cpus']} cores, "
        f"shared: seconds are rough). Python {settings['python']}.",
        "",
        "| recipe | backend | extra args | seeds | mean | min | max | vs reference | failed "
        "| seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary:
        seeds = " ".join(str(s) for s in row["seeds"])
        args = f"`{row['args']}`" if row["args"] else ""
        lines.append(
            f"| {row['recipe']} | {row['backend']} | {args} | {seeds} | {pct(row['mean'])} | "
            f"{pct(row['min'])} | {pct(row['max'])} | {points(row.get('vs_reference'))} | "
            f"{row['failed']} | {row['seconds_mean']} |"
        )
    lines += [
        "",
        f"`{REFERENCE}`: `alexnet-k3 train --implementation {REFERENCE}` (plain SGD loop, "
        "coupled weight decay, no schedule; last epoch). Other rows: `alexnet-k3 train` "
        "(its last epoch, or with `--validation-split` the best by validation accuracy). "
        "`vs reference`: the mean over seeds of (row - reference of the same seed), in points.",
    ]
    return "\n".join(lines) + "\n"


def _recipe(text: str) -> tuple[str, str]:
    name, sep, args = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f'expected NAME="ARGS", received {text!r}')
    return name, args


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="CIFAR-10-layout folder (or --digits)")
    parser.add_argument("--digits", action="store_true", help="train on the digits instead")
    parser.add_argument("--variant", default="cifar", help="AlexNet variant of both trainers")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, help="model input side (default: variant's)")
    parser.add_argument("--proxy-seed", type=int, default=0, help="seed if the proxy is written")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--backends", nargs="+", default=["torch"])
    parser.add_argument(
        "--recipe",
        type=_recipe,
        action="append",
        help='NAME="extra alexnet-k3 train args", repeated (default: default="")',
    )
    parser.add_argument(
        "--reference-args", default="", help="extra train args of the torch-reference runs"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the plain loop")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per process")
    parser.add_argument("--name", default="proxy-recipes")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="instead of running: join these result files' runs into one table (--name)",
    )
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)
    if (args.data_dir is None) == (not args.digits):
        parser.error("give --data-dir or --digits (unless --merge)")
    recipes = dict(args.recipe or [("default", "")])
    setup = {"variant": args.variant, "batch_size": args.batch_size, "image_size": args.image_size}

    data_dir = args.data_dir
    if data_dir is not None and not (
        (data_dir / proxy_data.FOLDER).is_dir() or data_dir.name == proxy_data.FOLDER
    ):
        print(f"writing the digits proxy (seed {args.proxy_seed}) to {data_dir}", flush=True)
        proxy_data.write_proxy(data_dir, args.proxy_seed)
    settings = {
        "name": args.name,
        "data_dir": str(data_dir or "digits"),
        **setup,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "backends": args.backends,
        "recipes": recipes,
        "reference_args": args.reference_args,
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    json_path = args.out_dir / f"{args.name}.json"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []

    def save():
        summary = summarize(runs)
        atomic_write_json(
            json_path, {"settings": settings, "runs": runs, "summary": summary}, indent=2
        )
        atomic_write_text(args.out_dir / f"{args.name}.md", markdown(summary, settings))

    for seed in args.seeds:
        jobs = [] if args.no_reference else [(REFERENCE, None)]
        jobs += [(name, backend) for name in recipes for backend in args.backends]
        for recipe, backend in jobs:
            if backend is None:
                run = reference_run(
                    data_dir, seed, args.epochs, args.reference_args, args.timeout, setup
                )
            else:
                run = package_run(
                    data_dir,
                    recipe,
                    recipes[recipe],
                    backend,
                    seed,
                    args.epochs,
                    args.timeout,
                    setup,
                )
            runs.append(run)
            save()  # after every run, so an interrupted comparison keeps what it measured
            result = run.get("error") or f"test accuracy {run['test_accuracy']:.4f}"
            print(
                f"seed {seed} {recipe} {run['backend']}: {result} ({run['seconds']} s)", flush=True
            )
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return {"runs": runs, "summary": summarize(runs)}


def merge(args) -> dict:
    """Joins the runs of several result files (e.g. seeds run apart) into `--name`."""
    runs, settings = [], None
    for path in args.merge:
        record = json.loads(path.read_text())
        runs += record["runs"]
        settings = settings or dict(record["settings"])
    settings.update(name=args.name, seeds=sorted({r["seed"] for r in runs}))
    summary = summarize(runs)
    json_path = args.out_dir / f"{args.name}.json"
    atomic_write_json(json_path, {"settings": settings, "runs": runs, "summary": summary}, indent=2)
    atomic_write_text(args.out_dir / f"{args.name}.md", markdown(summary, settings))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return {"runs": runs, "summary": summary}


if __name__ == "__main__":
    main()
