"""Multi-process jobs as their launchers describe them: read here, and started on localhost.

`job_process` reads this process's place in a job from the variables its
launcher set (`JOB_VARIABLES`), before any backend starts; `dist_timeout` bounds
every wait on another process; `process_label` leads a job's warnings.

On a cluster the engines' own launchers start the processes (torchrun, SLURM,
a scheduler that sets TF_CONFIG); `train --data-parallel` reads what they set.
`run` (`python -m alexnet_k3.launch`) starts the same job on localhost, N
processes, with the variables each engine documents:

- torch: `torchrun --nproc-per-node N` itself (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR, MASTER_PORT);
- jax: KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES,
  KERAS_DISTRIBUTION_PROCESS_ID, which `keras.distribution.initialize()` reads;
- tensorflow: TF_CONFIG, which `tf.distribute.MultiWorkerMirroredStrategy` reads.

Keras-free: it only starts processes.

Example:
    python -m alexnet_k3.launch jax 2 train --dataset digits --data-parallel --out runs/dp
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

from alexnet_k3.core import BACKENDS

# Each engine's launcher describes a job in its own documented variables (torchrun's,
# Keras's jax distribution's, TensorFlow's TF_CONFIG).

_KERAS_JOB = ("KERAS_DISTRIBUTION_PROCESS_ID", "KERAS_DISTRIBUTION_NUM_PROCESSES")
JOB_VARIABLES = {"torch": ("RANK", "WORLD_SIZE"), "jax": _KERAS_JOB, "tensorflow": ("TF_CONFIG",)}


def job_process(backend: str | None = None, environ=None) -> tuple[int, int] | None:
    """(rank, process count) of this process in the job its environment describes, or None.

    `backend` reads that engine's `JOB_VARIABLES` only; None, the first set present.

    Example:
        >>> job_process("torch", {"RANK": "1", "WORLD_SIZE": "2"})
        (1, 2)
    """
    environ = os.environ if environ is None else environ
    for name in (backend,) if backend else BACKENDS:
        names = JOB_VARIABLES[name]
        if not all(environ.get(n) for n in names):
            continue
        rank, count = -1, 0  # what a malformed set reads as
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            if name == "tensorflow":  # the chief (if any) is process 0, then the workers
                spec = json.loads(environ["TF_CONFIG"])
                chiefs = len(spec["cluster"].get("chief", []))
                count = chiefs + len(spec["cluster"].get("worker", []))
                index = int(spec["task"]["index"])
                rank = index if spec["task"]["type"] == "chief" else chiefs + index
            else:
                rank, count = (int(environ[n]) for n in names)
        if not 0 <= rank < count:
            raise ValueError(
                "The environment describes a multi-process job badly ("
                + ", ".join(f"{n}={environ[n]!r}" for n in names)
                + "): expected a process count >= 1 and a rank from 0 to count - 1. Launch "
                "with the engine's launcher (torchrun; KERAS_DISTRIBUTION_*) or unset them."
            )
        return rank, count
    return None


def dist_timeout(environ=None) -> float:
    """Seconds a job waits for a lost process: ALEXNET_K3_DIST_TIMEOUT, else 300."""
    text = (os.environ if environ is None else environ).get("ALEXNET_K3_DIST_TIMEOUT") or "300"
    with contextlib.suppress(ValueError):
        if 0 < float(text) < float("inf"):
            return float(text)
    raise ValueError(f"ALEXNET_K3_DIST_TIMEOUT={text!r}: expected seconds > 0 (unset: 300).")


def process_label() -> str:
    """ "process R of N: " in a job of several processes, else "": what leads its warnings."""
    with contextlib.suppress(ValueError):  # a malformed job is reported where it is joined
        job = job_process()
        if job is not None and job[1] > 1:
            return f"process {job[0]} of {job[1]}: "
    return ""


def free_ports(count: int) -> list[int]:
    """`count` TCP ports free on localhost now (the kernel picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def commands(
    backend: str, processes: int, args: list[str], *, module: str = "alexnet_k3"
) -> list[tuple[list[str], dict]]:
    """(command, extra environment) for each process of an N-process localhost job.

    Each process runs `python -m MODULE ARGS` (the package's CLI unless told;
    the data-parallel benchmark runs its own worker). torch gets one command,
    torchrun's, which starts the N workers itself.

    Example:
        >>> commands("jax", 2, ["train", "--data-parallel"])[1][1]["KERAS_DISTRIBUTION_PROCESS_ID"]
        '1'
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, received {backend!r}.")
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive integer, received {processes!r}.")
    base = {"KERAS_BACKEND": backend}
    if backend == "torch":
        (port,) = free_ports(1)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={processes}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            "-m",
            module,
            *args,
        ]
        return [(command, base)]
    command = [sys.executable, "-m", module, *args]
    if backend == "jax":
        (port,) = free_ports(1)
        return [
            (
                command,
                {
                    **base,
                    "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
                    "KERAS_DISTRIBUTION_NUM_PROCESSES": str(processes),
                    "KERAS_DISTRIBUTION_PROCESS_ID": str(rank),
                },
            )
            for rank in range(processes)
        ]
    workers = [f"127.0.0.1:{port}" for port in free_ports(processes)]
    return [
        (
            command,
            {
                **base,
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}
                ),
            },
        )
        for rank in range(processes)
    ]


def run(backend: str, processes: int, args: list[str], *, env: dict | None = None) -> int:
    """Runs the job to its end; the first non-zero exit code of a process, else 0.

    When one process fails, the others are left to notice it themselves (that
    is what the job's lost-worker handling is for), not killed here.
    """
    started = [
        subprocess.Popen(command, env={**os.environ, **(env or {}), **extra})
        for command, extra in commands(backend, processes, args)
    ]
    return next((code for code in wait(started) if code), 0)


def wait(processes: list, timeout: float | None = None) -> list[int | None]:
    """Exit codes of `processes` once all have ended; after `timeout` s the rest are killed.

    A killed process's code is None. Polls all of them, so that one ending early
    never waits behind another.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while any(p.poll() is None for p in processes):
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    codes = [p.poll() for p in processes]
    for p, code in zip(processes, codes, strict=True):
        if code is None:
            p.kill()
            p.wait()
    return codes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m alexnet_k3.launch BACKEND PROCESSES COMMAND [ARGS...]"
    if len(argv) < 3 or not argv[1].isdigit():
        print(f"{usage}\nreceived: {' '.join(argv) or '(nothing)'}", file=sys.stderr)
        return 2
    try:
        return run(argv[0], int(argv[1]), argv[2:])
    except ValueError as error:
        print(f"{usage}\nerror: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
