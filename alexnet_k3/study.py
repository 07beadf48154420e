"""`alexnet-k3 study`: every run of a plan, each in its own process, then one report.

Each run is an ordinary run folder under the study's folder (`DIR/<name>`),
written by `alexnet-k3 train` (or `evaluate`) in a process of its own, since a
process runs one Keras backend. The study only starts those processes, reads
what they wrote and reports:

- a finished run (its `config.json` the plan's, its `metrics.json` written) is
  not run again, an interrupted one is resumed (`train --resume`), and a plan
  entry changed since its run started is refused before anything runs;
- a run that fails or diverges is a row marked failed, with its last error
  line, and the others go on; a transfer run whose ImageNet weights cannot be
  had is a row marked skipped, saying where to put a copy;
- `DIR/study.json` holds one record per run, `DIR/study.md` and
  `DIR/study.html` the report (`alexnet_k3.study_report`).

Keras-free: the backends run in the child processes only.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from alexnet_k3 import downloads, runs
from alexnet_k3.config import TrainConfig
from alexnet_k3.core import (
    IMAGENET_CHECKPOINTS,
    JIT_SETTINGS,
    atomic_write_json,
    cpu_name,
    read_json,
)
from alexnet_k3.study_plan import Plan, PlanError, PlannedRun, load_plan, saved_difference

STUDY_FILE = "study.json"
# The figures a run's metrics.json gives its study record.
_RECORD_METRICS = (
    "test_accuracy",
    "test_top5_accuracy",
    "test_loss",
    "class_names",
    "per_class_accuracy",
    "confusion_matrix",
    "train_seconds",
    "images_per_second",
    "initial_weights_sha256",
    "device",
)
_PACKAGES = ("alexnet-k3", "keras", "numpy", "torch", "torchvision", "jax", "jaxlib", "tensorflow")
_ERROR_LINE = re.compile(r"^alexnet-k3 \w+: error: ")


def study(
    plan,
    out,
    *,
    weights_dir=None,
    restart=(),
    dry_run: bool = False,
    mlflow: bool | None = None,
) -> dict:
    """Runs every run of `plan` in `out`, each in its own process, and writes the report.

    Args:
        plan: a preset ("demo": the digits offline; "course": CIFAR-10, the course
            study), the path of a TOML plan, or a dict of the TOML's shape
            (`alexnet_k3.study_plan`).
        out: the study's folder; each run is the folder `out/<name>`.
        weights_dir: a folder holding copies of torchvision's ImageNet checkpoints
            (`alexnet-owt-7be5be79.pth`, `vgg16-397923af.pth`), looked in before
            torch hub's cache (`$TORCH_HOME/hub/checkpoints`) and a download.
        restart: names of runs to delete and run again.
        dry_run: only return the plan (`{"plan": ...}`); nothing runs.
        mlflow: log every run to MLflow (default: when `MLFLOW_TRACKING_URI` is set).

    Returns:
        The study record also written to `out/study.json`: `plan`, `environment`,
        timings and `runs`, one record per run (`status` "ok", "failed" or "skipped";
        a failed run does not stop the others).

    Raises:
        PlanError: the plan cannot run, or changed since its runs started (nothing ran).

    Example:
        >>> record = study("demo", "runs/study")  # doctest: +SKIP
        >>> [r["status"] for r in record["runs"]]  # doctest: +SKIP
        ['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok']
    """
    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    if dry_run:
        return {"plan": plan.describe()}
    out = Path(out)
    unknown = [name for name in restart if name not in {r.name for r in plan.runs}]
    if unknown:
        raise PlanError(
            f"--restart {unknown[0]}: the plan has no run of that name; its runs are "
            f"{', '.join(r.name for r in plan.runs)}."
        )
    with runs.lock(out, "study"):
        for name in restart:
            _remove_run(out / name)
        _check_started_runs(plan, out)
        return _Study(plan, out, weights_dir, _tracking_wanted(mlflow)).run_all()


def _tracking_wanted(mlflow: bool | None) -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) if mlflow is None else mlflow


def _remove_run(folder: Path) -> None:
    """Deletes a run folder for --restart; refuses anything that is not a run's."""
    if not folder.exists():
        return
    if not (folder / "config.json").exists() and not (folder / "metrics.json").exists():
        raise PlanError(
            f"--restart: {folder} holds no run (no config.json or metrics.json), so it is "
            "left alone: move it away yourself if it should go."
        )
    shutil.rmtree(folder)


def _check_started_runs(plan: Plan, out: Path) -> None:
    """Refuses the study when a run folder was started with settings the plan no longer has."""
    changed = {}
    for run in plan.runs:
        config_path = out / run.name / "config.json"
        if not run.trains or not config_path.exists():
            continue
        saved = read_json(config_path, f"Run it again with --restart {run.name}.", dict)
        difference = saved_difference(run, saved, _canonical_weights)
        if difference:
            changed[run.name] = difference
    if changed:
        what = "; ".join(f"run {name!r}: {diff}" for name, diff in changed.items())
        again = " ".join(f"--restart {name}" for name in changed)
        raise PlanError(
            f"the plan changed since these runs started in {out}: {what}. Run them again "
            f"with {again}, or put the plan back as it was."
        )


def _canonical_weights(key: str, value):
    """A weights file the study resolved, named back as the plan names it ('imagenet')."""
    if key == "weights" and isinstance(value, str):
        names = {url.rsplit("/", 1)[-1] for url, _ in IMAGENET_CHECKPOINTS.values()}
        if Path(value).name in names:
            return "imagenet"
    return value


class _Study:
    """One invocation of a study: runs what is left of the plan and keeps the records."""

    def __init__(self, plan: Plan, out: Path, weights_dir, tracking: bool):
        self.plan = plan
        self.out = out
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.tracking = tracking
        self.weights: dict[str, tuple[Path | None, str]] = {}  # arch -> (file, note)
        self.records: dict[str, dict] = {}
        self.durations: dict[bool, list[float]] = {True: [], False: []}  # trains? -> seconds
        self.started = time.time()
        self.executed_train_seconds = 0.0

    def run_all(self) -> dict:
        total = len(self.plan.runs)
        for index, run in enumerate(self.plan.runs, 1):
            begin = time.perf_counter()
            record, executed = self._run_one(run, index, total)
            self.records[run.name] = record
            if executed:
                self.durations[run.trains].append(time.perf_counter() - begin)
                self.executed_train_seconds += record.get("train_seconds") or 0.0
                if self.tracking and record["status"] == "ok":
                    self._log_to_mlflow(run, record)
            self._write()
        record = self._write()
        self._write_report(record)
        return record

    # --- one run -----------------------------------------------------------------------

    def _run_one(self, run: PlannedRun, index: int, total: int) -> tuple[dict, bool]:
        """The run's record, and whether a process ran for it in this invocation."""
        folder = self.out / run.name
        done = self._finished(run, folder)
        if done is not None:
            self._progress(index, total, run, "finished earlier, kept")
            return done, False
        skip = self._reason_to_skip(run)
        if skip:
            self._progress(index, total, run, skip)
            return _record(run, status="skipped", message=skip), False
        command = self._command(run, folder)
        self._progress(index, total, run, "resuming" if "--resume" in command else "starting")
        code, error_line = _run_process(command)
        metrics = _read_metrics(folder)
        if code == 0 and metrics is not None and metrics.get("status") != "diverged":
            return _record(run, metrics), True
        message = (metrics or {}).get("message") or error_line or f"exit code {code}"
        print(f"study: run {run.name} failed: {message}", file=sys.stderr, flush=True)
        return _record(run, status="failed", message=message), True

    def _finished(self, run: PlannedRun, folder: Path) -> dict | None:
        metrics = _read_metrics(folder)
        if metrics is None:
            return None
        if run.trains:
            if not (folder / "config.json").exists():
                return None
            if metrics.get("status") == "diverged":  # resuming would diverge again
                return _record(run, status="failed", message=metrics.get("message"))
            return _record(run, metrics)
        source_model = self.out / run.source / "model.keras"
        if not source_model.exists() or (
            source_model.stat().st_mtime > (folder / "metrics.json").stat().st_mtime
        ):
            return None  # its source was trained again since: evaluate again
        return _record(run, metrics)

    def _reason_to_skip(self, run: PlannedRun) -> str | None:
        if not run.trains:
            source = self.records.get(run.source)
            if source is None or source["status"] != "ok":
                return f"skipped: its model's run {run.source} did not finish"
            return None
        if run.settings.get("weights") == "imagenet":
            path, note = self._imagenet_file(run.config().arch)
            if path is None:
                return note
        return None

    def _imagenet_file(self, arch: str) -> tuple[Path | None, str]:
        if arch not in self.weights:
            self.weights[arch] = find_imagenet_weights(arch, self.weights_dir)
            path, note = self.weights[arch]
            if path is not None and note:
                print(f"study: {note}", file=sys.stderr, flush=True)
        return self.weights[arch]

    def _command(self, run: PlannedRun, folder: Path) -> list[str]:
        program = [sys.executable, "-m", "alexnet_k3"]
        if not run.trains:
            config = run.config()
            command = [
                *program,
                "evaluate",
                str(self.out / run.source / "model.keras"),
                "--backend",
                run.backend,
                "--dataset",
                config.dataset,
                "--out",
                str(folder),
            ]
            return command + (["--data-dir", config.data_dir] if config.data_dir else [])
        if (folder / "config.json").exists():
            return [*program, "train", "--backend", run.backend, "--resume", "--out", str(folder)]
        settings = dict(run.settings)
        if settings.get("weights") == "imagenet":
            settings["weights"] = str(self._imagenet_file(run.config().arch)[0])
        return [
            *program,
            "train",
            "--backend",
            run.backend,
            *train_options(settings),
            "--out",
            str(folder),
        ]

    def _progress(self, index: int, total: int, run: PlannedRun, what: str) -> None:
        elapsed = time.time() - self.started
        left = self._estimate_left(index)
        estimate = f", about {_duration(left)} left" if left is not None else ""
        where = f"{run.kind} on {run.backend}" + (f", model of {run.source}" if run.source else "")
        print(
            f"study: run {index} of {total}: {run.name} ({where}): {what} "
            f"[{_duration(elapsed)} elapsed{estimate}]",
            flush=True,
        )

    def _estimate_left(self, index: int) -> float | None:
        """The time the runs from `index` on will take, from the runs finished so far."""
        remaining = self.plan.runs[index - 1 :]
        measured = [d for ds in self.durations.values() for d in ds]
        if not measured:
            return None
        left = 0.0
        for run in remaining:
            same = self.durations[run.trains] or measured
            left += sum(same) / len(same)
        return left

    # --- the study's record --------------------------------------------------------------

    def _write(self) -> dict:
        records = [self.records[r.name] for r in self.plan.runs if r.name in self.records]
        for record in records:
            if record["kind"] != "evaluate":
                record["cross_backend"] = {
                    other["backend"]: other["test_accuracy"]
                    for other in records
                    if other.get("source") == record["name"] and other["status"] == "ok"
                }
        wall = time.time() - self.started
        study = {
            "format": 1,
            "plan": self.plan.describe(),
            "environment": _environment(records),
            "weights_files": {
                arch: {"path": str(path) if path else None, "note": note}
                for arch, (path, note) in self.weights.items()
            },
            "started": _iso(self.started),
            "finished": _iso(time.time()),
            "wall_seconds": round(wall, 1),
            "train_seconds": round(self.executed_train_seconds, 1),
            "overhead_seconds": round(wall - self.executed_train_seconds, 1),
            "runs": records,
        }
        atomic_write_json(self.out / STUDY_FILE, study, indent=1)
        return study

    def _write_report(self, record: dict) -> None:
        from alexnet_k3.study_report import write_report

        written = write_report(self.out, record)
        print(f"study: wrote {', '.join(str(p) for p in written)}", flush=True)

    def _log_to_mlflow(self, run: PlannedRun, record: dict) -> None:
        from alexnet_k3 import tracking

        tracking.log_run(
            self.out / run.name,
            experiment=f"study-{self.out.resolve().name}",
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_store(self.out),
            tags={"kind": run.kind, "study": str(self.out), "study_run": run.name},
            run_name=run.name,
        )


def _record(run: PlannedRun, metrics: dict | None = None, *, status="ok", message=None) -> dict:
    """The study.json record of `run`, from its metrics.json when it has one."""
    described = run.describe()
    record = {
        "name": run.name,
        "kind": run.kind,
        "backend": run.backend,
        "arch": described["arch"],
        "variant": described["variant"],
        "mode": described["mode"],
        "dataset": described["dataset"],
        "epochs": described["epochs"],
        "status": status,
        "message": message,
        "folder": run.name,
        "source": run.source,
        "cross_backend": {},
    }
    record.update({key: (metrics or {}).get(key) for key in _RECORD_METRICS})
    if run.kind == "evaluate":
        record.update(train_seconds=None, images_per_second=None)
    return record


def _read_metrics(folder: Path) -> dict | None:
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def train_options(settings: dict) -> list[str]:
    """`alexnet-k3 train`'s command-line options for these `TrainConfig` settings."""
    options = []
    for f in fields(TrainConfig):
        if f.name not in settings or settings[f.name] is None:
            continue
        value = settings[f.name]
        flag = (f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",))[0]
        if f.metadata["kind"] == "bool":
            options.append(flag if value else f"--no-{flag[2:]}")
        elif f.metadata["kind"] == "jit":
            options += [flag, next(k for k, v in JIT_SETTINGS.items() if v is value or v == value)]
        else:
            options += [flag, str(value)]
    return options


def _run_process(command: list[str]) -> tuple[int, str | None]:
    """Runs `command` with its output shown; returns its exit code and last error line.

    Its standard output is this process's (Keras draws its progress bar on a
    terminal, one line per epoch elsewhere); its standard error is passed through
    line by line and its last error line kept. It dies with this process.
    """
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    tail = collections.deque(maxlen=50)

    def relay():
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = process.wait()
    except BaseException:  # Ctrl-C: stop the run (it resumes next time), then stop
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        process.kill()
        raise
    reader.join(timeout=5)
    return code, _error_line(list(tail))


def _error_line(lines: list[str]) -> str | None:
    """The command's own error line, else the last line of a traceback or of the output."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return _ERROR_LINE.sub("", line)
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the study's process dies, however that dies, so a
    killed study leaves no run writing on; the next study resumes that run."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def find_imagenet_weights(arch: str, weights_dir: Path | None) -> tuple[Path | None, str]:
    """torchvision's ImageNet checkpoint of `arch` on this machine, downloaded if need be.

    Looks in `weights_dir`, then in torch hub's cache (`$TORCH_HOME/hub/checkpoints`),
    then downloads it there (SHA-256 checked). A copy found on disk is used as it is,
    as `--weights PATH` would be; the note then says whether it is torchvision's file.

    Returns:
        (path, note): the file and a note on it, or (None, why it is unavailable and
        where to put a copy).
    """
    url, prefix = IMAGENET_CHECKPOINTS[arch]
    name = url.rsplit("/", 1)[-1]
    hub = torch_hub_checkpoints()
    places = ([weights_dir] if weights_dir else []) + [hub]
    for folder in places:
        path = folder / name
        if path.is_file():
            digest = _sha256(path)
            if digest.startswith(prefix):
                return path, ""
            return path, (
                f"{path} is not torchvision's published {name} (its SHA-256 starts with "
                f"{digest[:8]}, not {prefix}); the runs use it as it is."
            )
    try:
        downloads.download(url, hub / name, hash_name="sha256", expected=prefix)
    except downloads.DownloadError as error:
        where = " or ".join(f"'{p}'" for p in places)
        return None, (
            f"skipped: weights unavailable: {name} is not in {where} and could not be "
            f"downloaded ({error}). Put a copy in '{hub}' ($TORCH_HOME/hub/checkpoints) or "
            "in a folder given as --weights-dir, then run the study again."
        )
    return hub / name, ""


def torch_hub_checkpoints() -> Path:
    """`torch.hub.get_dir()/checkpoints` without importing torch: $TORCH_HOME/hub/checkpoints."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _environment(records: list[dict]) -> dict:
    versions = {}
    for package in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    devices = {}
    for record in records:
        if record.get("device") and record["kind"] != "evaluate":
            devices.setdefault(record["backend"], record["device"])
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": cores,
        "packages": versions,
        "devices": devices,
    }


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds"
    )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
