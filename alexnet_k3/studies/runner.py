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
  `DIR/study.html` the report (`alexnet_k3.studies.report`).

Keras-free: the backends run in the child processes only.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from alexnet_k3 import runs, tracking
from alexnet_k3.core import IMAGENET_CHECKPOINTS, atomic_write_json, read_json
from alexnet_k3.studies.plan import Plan, PlanError, PlannedRun, load_plan, saved_difference
from alexnet_k3.studies.processes import find_imagenet_weights, run_process
from alexnet_k3.studies.records import (
    duration,
    environment,
    iso_time,
    read_metrics,
    run_record,
    train_options,
)

STUDY_FILE = "study.json"


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
            (`alexnet_k3.studies.plan`).
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
        return _Study(plan, out, weights_dir, tracking.enabled(mlflow)).run_all()


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
                # Kept runs too: logging a run again finds it (a study killed between
                # a run's end and its logging catches up).
                self._log_to_mlflow(run)
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
            kept = "finished earlier, kept"
            if done["status"] == "failed":
                kept = f"failed earlier, kept (--restart {run.name} runs it again)"
            self._progress(index, total, run, kept)
            return done, False
        skip = self._reason_to_skip(run)
        if skip:
            self._progress(index, total, run, skip)
            return run_record(run, status="skipped", message=skip), False
        command = self._command(run, folder)
        self._progress(index, total, run, "resuming" if "--resume" in command else "starting")
        code, error_line = run_process(command)
        metrics = read_metrics(folder)
        if code == 0 and metrics is not None and metrics.get("status") != "diverged":
            return run_record(run, metrics), True
        message = (metrics or {}).get("message") or error_line or f"exit code {code}"
        print(f"study: run {run.name} failed: {message}", file=sys.stderr, flush=True)
        return run_record(run, status="failed", message=message), True

    def _finished(self, run: PlannedRun, folder: Path) -> dict | None:
        metrics = read_metrics(folder)
        if metrics is None:
            return None
        if run.trains:
            if not (folder / "config.json").exists():
                return None
            if metrics.get("status") == "diverged":  # resuming would diverge again
                return run_record(run, status="failed", message=metrics.get("message"))
            return run_record(run, metrics)
        source_model = self.out / run.source / "model.keras"
        if not source_model.exists() or (
            source_model.stat().st_mtime > (folder / "metrics.json").stat().st_mtime
        ):
            return None  # its source was trained again since: evaluate again
        return run_record(run, metrics)

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
                "--no-mlflow",
            ]
            return command + (["--data-dir", config.data_dir] if config.data_dir else [])
        # The children never log to MLflow themselves: the study logs each run, once,
        # into its own experiment.
        if (folder / "config.json").exists():
            return [
                *program,
                "train",
                "--backend",
                run.backend,
                "--resume",
                "--out",
                str(folder),
                "--no-mlflow",
            ]
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
            "--no-mlflow",
        ]

    def _progress(self, index: int, total: int, run: PlannedRun, what: str) -> None:
        elapsed = time.time() - self.started
        left = self._estimate_left(index)
        estimate = f", about {duration(left)} left" if left is not None else ""
        where = f"{run.kind} on {run.backend}" + (f", model of {run.source}" if run.source else "")
        print(
            f"study: run {index} of {total}: {run.name} ({where}): {what} "
            f"[{duration(elapsed)} elapsed{estimate}]",
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
            "environment": environment(records),
            "weights_files": {
                arch: {"path": str(path) if path else None, "note": note}
                for arch, (path, note) in self.weights.items()
            },
            "started": iso_time(self.started),
            "finished": iso_time(time.time()),
            "wall_seconds": round(wall, 1),
            "train_seconds": round(self.executed_train_seconds, 1),
            "overhead_seconds": round(wall - self.executed_train_seconds, 1),
            "runs": records,
        }
        atomic_write_json(self.out / STUDY_FILE, study, indent=1)
        return study

    def _write_report(self, record: dict) -> None:
        from alexnet_k3.studies.report import write_report

        written = write_report(self.out, record)
        print(f"study: wrote {', '.join(str(p) for p in written)}", flush=True)

    def _log_to_mlflow(self, run: PlannedRun) -> None:
        tracking.log_run(
            self.out / run.name,
            experiment=f"study-{self.out.resolve().name}",
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_store(self.out),
            tags={"kind": run.kind, "study": str(self.out), "study_run": run.name},
            run_name=run.name,
        )
