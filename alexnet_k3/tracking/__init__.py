"""Experiment tracking: a finished run folder logged to MLflow after it was written.

Logging reads the folder that `train`, `evaluate --out` or any other run kind
wrote (`config.json`, `history.json`, `metrics.json`, the report, the plots, the
model) and copies it into an MLflow run, so it never touches training and works
the same for every kind of run. It is optional twice over: `mlflow` is imported
only here and only when a run is logged (the `[mlflow]` extra), and a logging
failure of any kind (mlflow missing, server down, bad URI, upload error) is one
warning line, never an exception: the run itself is already complete on disk.

Where runs go: the `tracking_uri` argument, else `MLFLOW_TRACKING_URI`, else a
local store beside the run folder, `default_store(run_dir.parent)`. Keras-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from pathlib import Path

from alexnet_k3.runs import warn
from alexnet_k3.tracking.folder import METRICS_SHA_TAG, RUN_DIR_TAG, metric_key, read_run

__all__ = ["default_store", "enabled", "log_if_enabled", "log_run", "metric_key"]

TRACKING_URI_ENV_VAR = "MLFLOW_TRACKING_URI"
# MLflow's own variable for the experiment of a run started without one.
EXPERIMENT_ENV_VAR = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "alexnet-k3"
# The default local store: MLflow 3 deprecates its plain-folder store (./mlruns) and
# defaults to a SQLite file, so the store is one SQLite file, its artifacts in a
# folder beside it (not MLflow's ./mlruns under the working directory).
STORE_FILE = "mlruns.db"
ARTIFACTS_FOLDER = "mlruns-artifacts"
# A dead server must cost seconds, not MLflow's default of 7 retries of 120 s: set
# for the duration of one log_run where the user has set nothing else.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# MLflow's limits per log_batch call.
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}


def enabled(flag: bool | None) -> bool:
    """Whether a run is logged: `flag` if given, else whether MLFLOW_TRACKING_URI is set."""
    return bool(os.environ.get(TRACKING_URI_ENV_VAR)) if flag is None else bool(flag)


def default_store(folder) -> str:
    """The tracking URI of the local store in `folder`: the SQLite file `folder/mlruns.db`.

    Example:
        >>> default_store("/tmp/runs")
        'sqlite:////tmp/runs/mlruns.db'
    """
    return f"sqlite:///{Path(folder).resolve() / STORE_FILE}"


def resolve_tracking_uri(run_dir, tracking_uri: str | None = None) -> str:
    """Where `log_run` logs `run_dir`: `tracking_uri`, else MLFLOW_TRACKING_URI, else
    the local store beside the run folder (`default_store(run_dir's parent)`)."""
    return (
        tracking_uri
        or os.environ.get(TRACKING_URI_ENV_VAR)
        or default_store(Path(run_dir).resolve().parent)
    )


def default_experiment() -> str:
    """MLFLOW_EXPERIMENT_NAME if set, else "alexnet-k3"."""
    return os.environ.get(EXPERIMENT_ENV_VAR) or DEFAULT_EXPERIMENT


def log_if_enabled(run_dir, flag: bool | None = None) -> str | None:
    """What `train --mlflow` and `evaluate --out --mlflow` do once their folder is written.

    Logs `run_dir` when `enabled(flag)`, to `default_experiment()` at
    `resolve_tracking_uri(run_dir)`, and prints where (one line); failures warn.

    Returns:
        The MLflow run id; None when not enabled or after a failure.
    """
    if not enabled(flag):
        return None
    experiment = default_experiment()
    run_id = log_run(run_dir, experiment=experiment)
    if run_id is not None:
        uri = resolve_tracking_uri(run_dir)
        print(f"mlflow: logged {run_dir} as run {run_id} of experiment {experiment!r} at {uri}")
    return run_id


def log_run(
    run_dir,
    *,
    experiment: str,
    tracking_uri: str | None = None,
    tags: dict | None = None,
    run_name: str | None = None,
) -> str | None:
    """Logs one finished run folder to MLflow; warns (never raises) when that fails.

    Logged: every `config.json` setting as a parameter (an evaluation folder has
    none: then what it evaluated, where: backend, dataset, model, ...); each
    number of each `history.json` epoch as a metric with step = epoch; the final
    figures of `metrics.json` (`FINAL_METRICS`) and the per-class accuracy as
    `class_accuracy/<class>`; tags backend, arch, variant, mode, dataset and
    kind ("train", "evaluation", or the run's own `kind`), then `tags`; and the
    files in `ARTIFACTS` (report, plots, history, metrics, config, model). A
    folder already logged to the experiment with the same `metrics.json` is not
    logged again: its MLflow run id is returned.

    Args:
        run_dir: a folder `train` (or `evaluate --out`, or another run kind) wrote;
            its `metrics.json` must exist.
        experiment: the MLflow experiment (created if missing).
        tracking_uri: where to log (see `resolve_tracking_uri`).
        tags: more tags, overriding those above.
        run_name: the MLflow run's name (default: the folder's name).

    Returns:
        The MLflow run id, or None after a failure (warned on stderr, one line).

    Example:
        >>> log_run("runs/digits", experiment="alexnet-k3")  # doctest: +SKIP
        '5f2c...'
    """
    run_dir = Path(run_dir)
    uri = resolve_tracking_uri(run_dir, tracking_uri)
    stage = "reading the run folder"
    client = run_id = None
    try:
        record = read_run(run_dir)
        stage = "importing mlflow"
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError(
                "mlflow is not installed; install it with `pip install 'alexnet-k3[mlflow]'`"
            ) from None
        with _quiet_mlflow(), _http_settings():
            stage = f"opening the tracking store {uri}"
            local = _local_store_folder(uri)
            if local is not None:
                local.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(tracking_uri=uri)
            stage = f"finding experiment {experiment!r} at {uri}"
            experiment_id = _experiment_id(client, experiment, uri)
            stage = f"searching experiment {experiment!r} at {uri}"
            existing = _logged_before(client, experiment_id, record)
            if existing is not None:
                return existing
            stage = f"creating a run in experiment {experiment!r} at {uri}"
            all_tags = {**record["tags"], **{str(k): str(v) for k, v in (tags or {}).items()}}
            run = client.create_run(experiment_id, run_name=run_name or run_dir.resolve().name)
            run_id = run.info.run_id
            stage = f"logging run {run_id}'s parameters, metrics and tags to {uri}"
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v, step in record["metrics"]]
            params = [Param(k, v) for k, v in record["params"].items()]
            run_tags = [RunTag(k, v) for k, v in all_tags.items()]
            for kind, items in (("params", params), ("tags", run_tags), ("metrics", metrics)):
                limit = BATCH_LIMITS[kind]
                for i in range(0, len(items), limit):
                    client.log_batch(run_id, **{kind: items[i : i + limit]})
            for path in record["artifacts"]:
                stage = f"uploading {path.name} to run {run_id} at {uri}"
                client.log_artifact(run_id, str(path))
            stage = f"finishing run {run_id} at {uri}"
            client.set_terminated(run_id, "FAILED" if record["failed"] else "FINISHED")
            return run_id
    except Exception as error:  # every failure is a warning, by design
        if client is not None and run_id is not None:
            with contextlib.suppress(Exception), _quiet_mlflow(), _http_settings():
                client.set_terminated(run_id, "FAILED")
        warn(
            f"MLflow logging failed while {stage}: {_one_line(error)}. The run itself is "
            f"fine ({run_dir}): only its MLflow record is missing."
        )
        return None


def _experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment `name` at `uri`, created (with local artifacts beside a
    local SQLite store) when missing; a deleted experiment of that name is refused."""
    found = client.get_experiment_by_name(name)
    if found is None:
        local = _local_store_folder(uri)
        location = None if local is None else (local / ARTIFACTS_FOLDER).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise ValueError(
            f"experiment {name!r} is deleted at {uri}; restore it "
            f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or log "
            "to another experiment"
        )
    return found.experiment_id


def _logged_before(client, experiment_id: str, record: dict) -> str | None:
    """The id of a finished run of this experiment with this folder's metrics, if any."""
    tags = record["tags"]
    # Searched by the digest (hex, safe in a filter); the folder compared here, since a
    # path may hold any character.
    query = f"tags.`{METRICS_SHA_TAG}` = '{tags[METRICS_SHA_TAG]}'"
    for run in client.search_runs([experiment_id], filter_string=query, max_results=50):
        same_folder = run.data.tags.get(RUN_DIR_TAG) == tags[RUN_DIR_TAG]
        if same_folder and run.info.status in ("FINISHED", "FAILED"):
            return run.info.run_id
    return None


def _local_store_folder(uri: str) -> Path | None:
    """The folder of a local SQLite store's file, None for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]).parent if uri.startswith(prefix) else None


@contextlib.contextmanager
def _http_settings():
    """HTTP_SETTINGS in the environment for the block, where the user set none."""
    added = [name for name in HTTP_SETTINGS if name not in os.environ]
    os.environ.update({name: HTTP_SETTINGS[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _quiet_mlflow():
    """MLflow's, alembic's and urllib3's log lines and Python warnings hidden for the block:
    a failure is reported once by `log_run`, not as retries, tracebacks and notices."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR + 10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _one_line(error: BaseException) -> str:
    text = str(error)
    if "Max retries exceeded" in text or "Failed to establish a new connection" in text:
        # MLflow wraps urllib3's whole retry report; what a user needs is its cause.
        cause = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
        reason = cause.group(1) if cause else ("timed out" if "timed out" in text else None)
        return "the server did not answer" + (f" ({reason})" if reason else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    text = f"{type(error).__name__}: {text}" if not isinstance(error, ImportError) else text
    return text if len(text) <= 300 else text[:297] + "..."
