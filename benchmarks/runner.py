"""`alexnet-k3 bench`: training/inference throughput of every backend and the baselines.

Usage (the CLI passes its remaining arguments to `main`):

    alexnet-k3 bench --backends torch,jax,tensorflow \\
        --baselines torchvision-eager,torchvision-compile --modes train,infer \\
        --batch-size 16 --image-size 224 --precision float32 --steps 5 --warmup 2 \\
        --out benchmarks/results/cpu.json

    python -m benchmarks.runner ...   # the same, without the CLI

    alexnet-k3 bench --data-parallel ...   # a multi-process job: benchmarks/data_parallel.py

Every implementation runs in its own worker process (a process has one Keras
backend; torch.compile, XLA and thread pools stay out of each other's way). A
worker that cannot import its framework, runs out of memory at a batch size,
or dies (its results file unreadable included) is recorded with an `error`
and the run goes on; the exit status is 1 when a worker failed for any other
reason than out-of-memory or a framework that is not installed. `--out
FILE.json` gets the records, and `FILE.md` (the table) and `FILE.png` (a bar
chart) go beside it (`benchmarks/report.py`). The markdown table also goes to
standard output.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    # Loaded by path (the CLI) or run as a file: make `benchmarks` importable.
    sys.path.insert(0, str(_ROOT))

from alexnet_k3.core import ARCHS_WITH_VARIANTS  # noqa: E402
from benchmarks import common, report  # noqa: E402
from benchmarks.options import (  # noqa: E402, F401 - the options, re-exported for callers
    CPU_E2E_STEPS,
    DEVICE_DEFAULTS,
    GPU_E2E_IMAGES,
    build_parser,
    parse_args,
    worker_config,
)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns 0 when every worker ran and something was measured.

    Out-of-memory at a batch size and a framework that is not installed are
    results (recorded, exit 0 if anything else was measured); any other failure
    of a worker (a crash, a timeout, an error in its code) makes the exit status 1
    after the table is written, with each failed worker and its error on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1:])
    if "--data-parallel" in argv:  # a job's throughput: its own options (see that module)
        from benchmarks import data_parallel

        return data_parallel.main([a for a in argv if a != "--data-parallel"])
    args = parse_args(argv)
    if args.from_json is not None:
        code = report.report_saved(args.from_json, args.out)
        if args.readme is not None:
            report.refresh_readme(args.readme, args.from_json)
        return code
    config = worker_config(args)
    impls = [b for b in common.BASELINE_IMPLS if b in args.baselines]
    impls += [f"keras-{b}" for b in args.backends]
    measured = []
    for round_index in range(args.rounds):
        # Every network in each round, so a changing load on a shared machine
        # shifts the networks' figures alike.
        for arch in config["archs"]:
            for impl in impls:
                if args.rounds > 1:
                    print(f"[bench] round {round_index + 1}/{args.rounds}", file=sys.stderr)
                arch_config = {**config, "arch": arch}
                measured += run_impl(impl, arch_config, timeout=args.timeout, verbose=args.verbose)
    records = report.merge_rounds(measured)
    report.add_ratios(records)
    table = report.format_table(records, config)
    print(table)
    if args.out is not None:
        report.save(records, table, args.out)
        if args.readme is not None:
            report.refresh_readme(args.readme, args.out)
    busy = [r for r in records if r.get("contended")]
    if busy:
        print(
            f"[bench] WARNING: {len(busy)} of {len(records)} records were measured while other "
            "processes competed for the CPU cores (`contended`): their images/s are not "
            "comparable. Rerun on an idle machine.",
            file=sys.stderr,
        )
    failed = failures(measured)
    for impl, error in failed:
        print(f"[bench] FAILED: {impl}: {error}", file=sys.stderr)
    if not any(r.get("images_per_sec") for r in records):
        print("[bench] nothing was measured", file=sys.stderr)
        return 1
    return 1 if failed else 0


# Errors that are results, not failures, besides "oom" (the batch did not fit): the
# framework is not installed (see `_worker_main`), no baseline exists for the variant.
_NOT_FAILURES = ("missing: ", "no torchvision model for variant")


def failures(records: list[dict]) -> list[tuple[str, str]]:
    """(impl, error) of each worker failure among `records`, once per pair, in order.

    Example:
        >>> failures([{"impl": "keras-jax", "error": "oom"}])
        []
    """
    failed = []
    for record in records:
        error = record.get("error")
        if not error or error == "oom" or error.startswith(_NOT_FAILURES):
            continue
        detail = record.get("error_detail")
        text = error if not detail or detail == error else f"{error} ({detail})"
        if (record["impl"], text) not in failed:
            failed.append((record["impl"], text))
    return failed


def run_impl(impl: str, config: dict, *, timeout: float = 3600.0, verbose: bool = False):
    """Runs one implementation in a worker process and returns its records (never raises)."""
    with_variants = config.get("arch", "alexnet") in ARCHS_WITH_VARIANTS
    if impl in common.BASELINE_IMPLS and with_variants and config["variant"] != "torchvision":
        return common.error_records(
            impl, config, f"no torchvision model for variant {config['variant']!r}"
        )
    print(f"[bench] {impl}: starting worker", file=sys.stderr, flush=True)
    env = common.worker_env(config["device"])
    if impl in common.KERAS_IMPLS:
        env["KERAS_BACKEND"] = impl.removeprefix("keras-")
    with tempfile.TemporaryDirectory(prefix="alexnet-k3-bench-") as tmp:
        config_path, result_path = Path(tmp, "config.json"), Path(tmp, "records.json")
        config_path.write_text(json.dumps(config))
        command = [
            sys.executable,
            "-m",
            "benchmarks.runner",
            "--worker",
            impl,
            str(config_path),
            str(result_path),
        ]
        returncode, tail, timed_out = _stream(command, env, timeout, verbose)
        records, unreadable = common.read_records(result_path)
    if returncode != 0 or not records:
        reasons = []
        if timed_out:
            reasons.append(f"worker timed out after {timeout:g} s")
        elif returncode is not None and returncode < 0:
            reasons.append(f"worker killed by signal {-returncode} (out of host memory?)")
        elif returncode != 0 or unreadable is None:
            reasons.append(f"worker failed (exit code {returncode})")
        last = next((line for line in reversed(tail) if line.strip()), "")
        if unreadable is not None:
            reasons.append("the worker's results file was unreadable")
            last = f"{unreadable}; last output: {last}" if last else unreadable
        done = {common.record_key(r) for r in records}
        records += [
            r
            for r in common.error_records(impl, config, "; ".join(reasons), detail=last or None)
            if common.record_key(r) not in done
        ]
    return records


def _stream(command, env, timeout, verbose):
    """Runs `command`, relaying `[bench]` lines (all lines if verbose) to stderr."""
    tail = collections.deque(maxlen=40)
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    expired = threading.Event()

    def kill():
        expired.set()
        process.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        for line in process.stdout:
            tail.append(line.rstrip())
            if verbose or line.startswith("[bench]"):
                print(line, end="", file=sys.stderr, flush=True)
        returncode = process.wait()
    finally:
        timer.cancel()
    return returncode, list(tail), expired.is_set()


def _worker_main(argv: list[str]) -> int:
    """`runner --worker IMPL CONFIG.json RESULT.json`: measures IMPL in this process."""
    impl, config_path, result_path = argv
    config = json.loads(Path(config_path).read_text())
    common.RESULT_SINK["path"] = result_path
    failure = None
    try:
        if impl in common.KERAS_IMPLS:
            from benchmarks import keras_bench as module
        elif impl in common.BASELINE_IMPLS:
            from benchmarks import torchvision_baseline as module
        else:
            raise ValueError(f"unknown implementation {impl!r}, expected one of {common.IMPLS}")
        records = module.run(impl, config)
    except ImportError as exc:
        if _framework_missing(exc):
            failure = f"missing: {common.short_error(exc).split(': ', 1)[-1]}", exc
        else:  # a broken import in installed code is a crash, not a missing backend
            failure = common.short_error(exc), exc
    except Exception as exc:  # noqa: BLE001 - the parent reports it and goes on
        failure = common.short_error(exc), exc
    if failure is not None:
        # Keep what was measured before the failure; the rest carry its reason.
        records = list(common.RESULT_SINK["records"])
        done = {common.record_key(r) for r in records}
        rest = [
            r
            for r in common.error_records(
                impl, config, failure[0], detail=common.short_error(failure[1], limit=2000)
            )
            if common.record_key(r) not in done
        ]
        if rest:
            common.progress(rest[0], save=False)
        records += rest
    common.write_records(result_path, records)
    return 0


# What a worker may lack on a machine without that implementation installed.
_FRAMEWORKS = {"keras", "torch", "torchvision", "jax", "jaxlib", "tensorflow"}


def _framework_missing(exc: ImportError) -> bool:
    """Whether `exc` says a framework is not installed (not that installed code is broken)."""
    name = getattr(exc, "name", None)
    return isinstance(exc, ModuleNotFoundError) and (name or "").split(".")[0] in _FRAMEWORKS


if __name__ == "__main__":
    raise SystemExit(main())
