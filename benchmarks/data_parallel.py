"""`alexnet-k3 bench --data-parallel`: training throughput of a multi-process job.

For each backend, the same job is timed twice, with 1 process and with N
(`--processes`), each started the way `python -m alexnet_k3.launch` starts a job
(torchrun on torch, KERAS_DISTRIBUTION_* on jax, TF_CONFIG on tensorflow), so
both sizes run the same
code: `train --data-parallel`'s engine (`alexnet_k3.backend.data_parallel`), its
compile (`alexnet_k3.training.compile_model`), its feed of each process's share
(`Job.train_feed`) and `model.fit`. The batch per device is fixed (weak
scaling): a job of D devices trains global batches of D x `--batch-size`.

Each row gives images/s over the whole job and per device; `scaling_efficiency`
is the per-device figure over the 1-process figure of the same backend. On a
CPU the processes share the machine's cores (torchrun gives each one thread),
so a CPU row proves the plumbing, not scaling: its `label` says so.

Usage:
    alexnet-k3 bench --data-parallel --backends torch,jax,tensorflow --processes 2 \\
        --out benchmarks/results/cpu-2core-data-parallel-plumbing.json

A worker (`python -m benchmarks.data_parallel --worker CONFIG.json RESULT.json`,
one per process) times `--warmup` steps apart, then `--steps` steps; process 0
alone writes the result file.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from alexnet_k3 import launch  # noqa: E402
from alexnet_k3.core import VARIANTS  # noqa: E402
from benchmarks import common, machine  # noqa: E402

# The backends whose multi-process jobs train: all of them.
JOB_BACKENDS = ("torch", "jax", "tensorflow")
# Written into every CPU row: processes there share one machine's cores.
PLUMBING = "plumbing: processes share one CPU's cores; not a scaling result"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-k3 bench --data-parallel",
        description="Training images/s of a 1-process and an N-process data-parallel job.",
    )
    parser.add_argument(
        "--backends", default=",".join(JOB_BACKENDS), help="comma-separated: torch, jax, tensorflow"
    )
    parser.add_argument("--processes", type=int, default=2, help="processes of the larger job")
    parser.add_argument("--variant", choices=VARIANTS, default="torchvision")
    parser.add_argument("--image-size", type=int, default=224, help="square input side")
    parser.add_argument("--batch-size", type=int, default=16, help="images per device per step")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the timing")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per job")
    parser.add_argument("--out", type=Path, default=None, help="FILE.json (and FILE.md beside)")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in args.backends if b not in JOB_BACKENDS]
    if unknown or not args.backends:
        parser.error(
            f"--backends {','.join(args.backends) or '(none)'}: expected some of "
            f"{','.join(JOB_BACKENDS)}."
        )
    for name in ("processes", "image_size", "batch_size", "num_classes", "steps", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, received {getattr(args, name)}")
    if args.out is not None and args.out.suffix != ".json":
        parser.error(f"--out must end in .json, received {args.out}")
    if args.device == "auto":
        args.device = machine.detect_device()
    return args


def main(argv: list[str] | None = None) -> int:
    """Times every backend's jobs; 0 when every job ran, else 1 (its error in its row)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
    args = parse_args(argv)
    config = {
        k: getattr(args, k)
        for k in ("variant", "image_size", "batch_size", "num_classes", "steps", "warmup")
    }
    config.update(device=args.device, arch="alexnet", precision="float32")
    rows = []
    for backend in args.backends:
        for processes in sorted({1, args.processes}):
            print(f"[bench] {backend}: a {processes}-process job", file=sys.stderr, flush=True)
            rows.append(run_job(backend, processes, config, timeout=args.timeout))
    add_efficiency(rows)
    metadata = machine.metadata(args.device)
    table = format_table(rows, config, metadata)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        saved = {"settings": config, "metadata": metadata, "records": rows}
        args.out.write_text(json.dumps(saved, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    failed = [row for row in rows if row.get("error")]
    for row in failed:
        print(
            f"[bench] FAILED: {row['backend']} x{row['processes']}: {row['error']}", file=sys.stderr
        )
    return 1 if failed else 0


def run_job(backend: str, processes: int, config: dict, *, timeout: float) -> dict:
    """Starts a `processes`-process job of workers on localhost; its row (never raises)."""
    row = {"backend": backend, "processes": processes, "device": config["device"]}
    env = common.worker_env(config["device"])
    with tempfile.TemporaryDirectory(prefix="alexnet-k3-dp-") as tmp:
        config_path, result_path = Path(tmp, "config.json"), Path(tmp, "result.json")
        config_path.write_text(json.dumps({**config, "processes": processes}))
        jobs = launch.commands(
            backend,
            processes,
            ["--worker", str(config_path), str(result_path)],
            module="benchmarks.data_parallel",
        )
        started = []
        for index, (command, extra) in enumerate(jobs):
            extra = dict(extra)
            if backend != "torch" and config["device"] == "gpu":
                # One GPU per process (torchrun's workers pick theirs by LOCAL_RANK).
                extra["CUDA_VISIBLE_DEVICES"] = str(index)
            log = open(Path(tmp, f"process-{index}.log"), "w+")  # noqa: SIM115 - closed below
            started.append(
                (
                    subprocess.Popen(
                        command, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT
                    ),
                    log,
                )
            )
        codes = launch.wait([p for p, _ in started], timeout)
        tails = []
        for _, log in started:
            log.seek(0)
            tails.append(list(collections.deque(log.read().splitlines(), maxlen=60)))
            log.close()
        if result_path.exists() and not any(codes):
            row.update(json.loads(result_path.read_text()))
            return row
    failed = next((i for i, code in enumerate(codes) if code), 0)
    reason = "timed out" if codes[failed] is None else f"exit code {codes[failed]}"
    row["error"] = f"process {failed} failed ({reason}): {error_line(tails[failed])}"
    print(f"[bench] {backend} x{processes}, the end of process {failed}'s output:", file=sys.stderr)
    print("\n".join(tails[failed]), file=sys.stderr, flush=True)
    return row


def error_line(lines: list[str]) -> str:
    """The line of a failed process's output that names its error: the last exception line.

    Not torchrun's own ChildFailedError, which only says a worker failed: the
    worker's traceback comes before it. Else the last line with words in it
    (torchrun ends its report with a rule of "=").

    Example:
        >>> error_line(["Traceback ...", "ValueError: bad", "=====", "Root Cause"])
        'ValueError: bad'
    """
    for line in reversed(lines):
        if "ChildFailedError" in line:
            continue
        if re.match(r"\s*[\w.]+(Error|Exception|Exit|Interrupt)\b", line):
            return line.strip()
    return next((line.strip() for line in reversed(lines) if re.search(r"\w", line)), "")


def add_efficiency(rows: list[dict]) -> None:
    """Adds each row's per-device images/s over its backend's 1-process figure.

    Example:
        >>> rows = [{"backend": "jax", "processes": 1, "images_per_sec_per_device": 10.0},
        ...         {"backend": "jax", "processes": 2, "images_per_sec_per_device": 8.0}]
        >>> add_efficiency(rows); rows[1]["scaling_efficiency"]
        0.8
    """
    single = {
        r["backend"]: r["images_per_sec_per_device"]
        for r in rows
        if r["processes"] == 1 and r.get("images_per_sec_per_device")
    }
    for row in rows:
        if row.get("images_per_sec_per_device") and row["backend"] in single:
            row["scaling_efficiency"] = round(
                row["images_per_sec_per_device"] / single[row["backend"]], 3
            )


def format_table(rows: list[dict], config: dict, metadata: dict) -> str:
    """The markdown table of `rows`, under a line naming the settings and the machine."""
    where = metadata.get("cpu") or "unknown CPU"
    if metadata.get("gpus"):
        where = ", ".join(g.get("name", "GPU") for g in metadata["gpus"])
    lines = [
        f"Data-parallel training, AlexNet ({config['variant']} variant), "
        f"{config['image_size']}x{config['image_size']}, float32, {config['batch_size']} images "
        f"per device per step, {config['steps']} steps timed after {config['warmup'] + 1} "
        f"({config['device']}: {where}, {metadata.get('cpu_count')} cores).",
        "",
    ]
    if config["device"] == "cpu":
        lines += [f"**{PLUMBING}.**", ""]
    lines += [
        "| backend | processes | devices | global batch | images/s (job) "
        "| images/s per device | scaling efficiency | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["backend"],
            r["processes"],
            r.get("devices", "—"),
            r.get("global_batch", "—"),
            _fmt(r.get("images_per_sec")),
            _fmt(r.get("images_per_sec_per_device")),
            _fmt(r.get("scaling_efficiency"), "{:.2f}"),
            r.get("error", ""),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str = "{:.1f}") -> str:
    return "—" if value is None else spec.format(value)


def _worker(config: dict, result_path: Path) -> int:
    """One process of the job: trains `warmup`, then `steps` timed steps; process 0 reports."""
    from alexnet_k3 import backend

    backend.keep_tensorflow_unimported()
    import keras
    import numpy as np

    from benchmarks import keras_bench

    job = backend.data_parallel()  # joins the job (on jax before anything else runs)
    speed_settings = backend.tune_for_speed()
    if job.processes != config["processes"]:
        raise RuntimeError(f"joined a {job.processes}-process job, expected {config['processes']}")
    keras.utils.set_random_seed(0)
    global_batch = config["batch_size"] * job.num_replicas
    with job.scope():
        model, input_shape = keras_bench.build_bench_network(config)
        keras_bench.compile_for_training(model, config, "auto", steps=config["steps"])
        job.prepare(model)
        rng = np.random.default_rng(0)
        n = global_batch * config["steps"]
        x = rng.standard_normal((n, *input_shape), dtype=np.float32)
        y = np.eye(config["num_classes"], dtype=np.float32)[
            rng.integers(0, config["num_classes"], n)
        ]
        train_feed = job.train_feed(x, y, batch_size=global_batch, seed=0)
        callbacks = job.callbacks(train_feed)

        def fit(steps: int) -> float:
            start = time.perf_counter()
            model.fit(**train_feed, epochs=1, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
            keras.ops.convert_to_numpy(model.trainable_weights[0])  # the steps have run
            return time.perf_counter() - start

        fit(config["warmup"])
        # jax compiles again on the first step of a second fit (fit hands the state
        # back to the variables at its end, with another layout): one more step.
        fit(1)
        seconds = fit(config["steps"])
    job.finish()
    if job.writes:
        images = global_batch * config["steps"]
        result = {
            "devices": job.num_replicas,
            "global_batch": global_batch,
            "batch_per_device": config["batch_size"],
            "steps": config["steps"],
            "seconds": round(seconds, 4),
            "images_per_sec": round(images / seconds, 2),
            "images_per_sec_per_device": round(images / seconds / job.num_replicas, 2),
            "keras": keras.__version__,
            **speed_settings,
        }
        if config["device"] == "cpu":
            result["label"] = PLUMBING
        result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
