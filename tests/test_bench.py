"""The benchmark runner's plumbing on tiny settings: records, ratios, OOM, failing workers.

Run once per backend process (`KERAS_BACKEND=jax pytest tests/test_bench.py`). Speed is
not asserted here; the figures live in benchmarks/results/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import textwrap

import keras
import pytest

from alexnet_k3 import backend as kb
from alexnet_k3 import core

# benchmarks/ is a folder of the repository (on sys.path through pytest's `pythonpath`).
from benchmarks import common, keras_bench, report, runner

BACKEND = kb.name()
IMPL = f"keras-{BACKEND}"
# Tiny: the native 32x32 variant, one measured step.
TINY = {
    "modes": ["train", "infer"],
    "batch_sizes": [2, 4],
    "image_size": 32,
    "precision": "float32",
    "jit": "recommended",
    "steps": 1,
    "warmup": 1,
    "device": "cpu",
    "end_to_end": True,
    "dataset": "digits",
    "variant": "cifar",
    "num_classes": 10,
    "data_format": "recommended",
    "torch_memory_format": "auto",
    "rounds": 1,
    "note": None,
}
# What each backend raises when a batch does not fit on the device.
OOM_MESSAGE = "Out of memory while trying to allocate 8589934592 bytes."


def backend_oom_error() -> Exception:
    if BACKEND == "torch":
        import torch

        return torch.OutOfMemoryError(f"CUDA out of memory. {OOM_MESSAGE}")
    if BACKEND == "jax":
        import jax

        return jax.errors.JaxRuntimeError(f"RESOURCE_EXHAUSTED: {OOM_MESSAGE}")
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError(
        None,
        None,
        "OOM when allocating tensor with shape[4,64,55,55] and type float on "
        "/job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc",
    )


@pytest.fixture(scope="module")
def worker_records():
    """One in-process worker run: batch 4's training step runs out of memory."""
    real = keras_bench.train_step_fn

    def train_step_fn(model, x, y):
        step = real(model, x, y)
        if x.shape[0] != 4:
            return step

        def out_of_memory():  # called by the worker's timing loop, like a real step
            raise backend_oom_error()

        return out_of_memory

    data_format = keras.config.image_data_format()
    policy = keras.mixed_precision.global_policy()
    threads = _single_torch_thread()
    digits = keras_bench.load_dataset("digits")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras_bench, "train_step_fn", train_step_fn)
        # A 37-image slice of the digits keeps the epoch short and leaves a partial batch.
        patch.setattr(
            keras_bench, "load_dataset", lambda name: (digits[0][:37], digits[1][:37], digits[2])
        )
        try:
            yield keras_bench.run(IMPL, TINY)
        finally:
            keras.config.set_image_data_format(data_format)
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.clear_session()
            if threads is not None:
                import torch

                torch.set_num_threads(threads)


def _single_torch_thread():
    """One torch thread while the fixture runs (returns the previous count), or None.

    Plumbing, not speed, is under test: on a small shared CPU, torch's OpenMP team
    stalls whenever another process holds one of its cores, which made these tiny
    steps take 10-30x longer.
    """
    if BACKEND != "torch":
        return None
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


@pytest.fixture(autouse=True)
def _single_threaded_workers(monkeypatch):
    # Worker processes started by the runner: torch reads OMP_NUM_THREADS at import.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def by_key(records):
    return {(r["mode"], r["batch_size"]): r for r in records}


def test_records_complete(worker_records):
    records = by_key(worker_records)
    assert set(records) == {(m, b) for m in ("train", "infer", "train-e2e") for b in (2, 4)}
    for record in worker_records:
        assert set(common.RECORD_KEYS) <= set(record), record
        assert record["impl"] == IMPL
        assert record["image_size"] == 32 and record["precision"] == "float32"
        assert record["device"] and record["device_type"] == "cpu"
        assert record["versions"]["keras"] == keras.__version__
    for key in [("train", 2), ("infer", 2), ("infer", 4), ("train-e2e", 2)]:
        record = records[key]
        assert record["error"] is None, record
        assert record["images_per_sec"] > 0
        assert isinstance(record["jit"], bool)
        assert record["compile_seconds"] >= 0
    for key in [("train", 2), ("infer", 2), ("infer", 4)]:
        record = records[key]
        assert 0 < record["step_ms_median"] <= record["step_ms_p90"] * (1 + 1e-9)
        assert record["steps"] == 1 and record["warmup"] == 1


def test_oom_recorded_and_run_goes_on(worker_records):
    records = by_key(worker_records)
    oom = records[("train", 4)]
    assert oom["error"] == "oom"
    assert oom["error_detail"].startswith(type(backend_oom_error()).__name__)
    assert oom["images_per_sec"] is None
    # The end-to-end figure at batch 4 runs the same (failing) synthetic step as reference.
    assert records[("train-e2e", 4)]["error"] == "oom"
    # Later work in the same process still ran.
    assert records[("infer", 4)]["images_per_sec"] > 0


def test_end_to_end_ratio(worker_records):
    e2e = by_key(worker_records)[("train-e2e", 2)]
    assert e2e["epoch_images"] == 37 and e2e["dataset"] == "digits"
    assert e2e["synthetic_images_per_sec"] > 0
    assert e2e["synthetic_before_images_per_sec"] > 0 and e2e["synthetic_after_images_per_sec"] > 0
    assert e2e["e2e_ratio"] == pytest.approx(
        e2e["images_per_sec"] / e2e["synthetic_images_per_sec"]
    )


def test_out_of_memory_classification():
    # One classifier: the backend's is core's, which the torchvision worker uses too.
    assert kb.is_out_of_memory is core.is_out_of_memory
    assert kb.is_out_of_memory(backend_oom_error())
    assert kb.is_out_of_memory(MemoryError())
    assert not kb.is_out_of_memory(ValueError("Input 0 of layer conv1 is incompatible"))
    assert kb.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory"))


def test_worker_records_name_the_speed_settings(worker_records):
    applied = kb.tune_for_speed()
    for record in worker_records:
        assert record["cudnn_benchmark"] == applied["cudnn_benchmark"]
        assert record["keep_freed_memory"] == applied["keep_freed_memory"]


def test_parent_runs_workers_and_computes_ratios(tmp_path, capsys):
    # Only looked up, not imported: torchvision (triton) loaded after tensorflow can crash.
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    out = tmp_path / "bench.json"
    code = runner.main(
        [
            "--backends",
            BACKEND,
            "--baselines",
            "torchvision-eager",
            "--modes",
            "train",
            "--image-size",
            "64",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    table = capsys.readouterr().out
    assert code == 0
    records = json.loads(out.read_text())
    assert [(r["impl"], r["mode"], r["batch_size"]) for r in records] == [
        ("torchvision-eager", "train", 2),
        (IMPL, "train", 2),
    ]
    baseline, keras_record = records
    for record in records:
        assert set(common.RECORD_KEYS) <= set(record)
        assert record["error"] is None, record
    assert baseline["ratio_vs_torchvision_eager"] == pytest.approx(1.0)
    ratio = keras_record["images_per_sec"] / baseline["images_per_sec"]
    assert keras_record["ratio_vs_torchvision_eager"] == pytest.approx(ratio)
    assert keras_record["ratio_vs_torchvision_compile"] is None
    row = next(line for line in table.splitlines() if line.startswith(f"| {IMPL} "))
    assert f"| {ratio:.2f} |" in row
    assert out.with_suffix(".md").read_text().count(f"| {IMPL} ") == 1
    assert out.with_suffix(".png").stat().st_size > 0
    # A saved run renders again without measuring.
    copy = tmp_path / "again.json"
    assert runner.main(["--from-json", str(out), "--out", str(copy), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == table
    assert json.loads(copy.read_text()) == records


def _shadow_framework(tmp_path, monkeypatch, code: str) -> None:
    """Worker processes import `code` as this backend's framework (which Keras imports first)."""
    shadow = tmp_path / "shadow" / BACKEND
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(textwrap.dedent(code))
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")])),
    )


def test_missing_backend_reported(tmp_path, monkeypatch, capsys):
    # The worker's framework import fails as on a machine without it installed.
    framework = BACKEND
    message = f"No module named {framework!r}"
    _shadow_framework(
        tmp_path, monkeypatch, f"raise ModuleNotFoundError({message!r}, name={framework!r})"
    )
    code = runner.main(
        [
            "--backends",
            BACKEND,
            "--baselines",
            "none",
            "--modes",
            "train,infer",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    table = capsys.readouterr().out
    assert code == 1  # nothing was measured
    records = json.loads((tmp_path / "m.json").read_text())
    assert len(records) == 2
    for record in records:
        assert record["error"] == f"missing: No module named {framework!r}"
        assert record["images_per_sec"] is None
    assert table.count(f"missing: No module named {framework!r}") == 2


@pytest.mark.parametrize("death", ["killed", "exits"])
def test_truncated_results_file_is_recorded_not_raised(tmp_path, monkeypatch, death):
    # A worker leaves half a results file (killed mid-write, or a plain bug) and ends:
    # the parent turns it into error records and goes on; it never raises.
    end = "os.kill(os.getpid(), signal.SIGKILL)" if death == "killed" else "os._exit(0)"
    _shadow_framework(
        tmp_path,
        monkeypatch,
        f"""
        import json, os, signal, sys
        text = json.dumps([{{"impl": {IMPL!r}, "mode": "train", "batch_size": 2}}])
        with open(sys.argv[-1], "w") as f:  # runner --worker IMPL CONFIG RESULTS
            f.write(text[: len(text) // 2])
        {end}
        """,
    )
    config = {**TINY, "modes": ["train"], "end_to_end": False}
    records = runner.run_impl(IMPL, config, timeout=600)
    assert [(r["mode"], r["batch_size"]) for r in records] == [("train", 2), ("train", 4)]
    for record in records:
        assert "results file was unreadable" in record["error"], record
        assert "JSONDecodeError" in record["error_detail"]
        assert record["images_per_sec"] is None
        assert set(common.RECORD_KEYS) <= set(record)
    if death == "killed":
        assert records[0]["error"].startswith("worker killed by signal 9")
    # The rest of a run goes on: the records make a table.
    assert "results file was unreadable" in report.format_table(records, config)


def test_worker_results_are_written_atomically(tmp_path, monkeypatch):
    # Every save replaces the whole file: a kill leaves the previous list or the new one.
    path = tmp_path / "records.json"
    writes = []
    monkeypatch.setattr(common, "atomic_write_json", lambda p, v, **k: writes.append((p, v)))
    monkeypatch.setitem(common.RESULT_SINK, "path", str(path))
    monkeypatch.setitem(common.RESULT_SINK, "records", [])
    record = common.new_record(IMPL, "train", 2, TINY, images_per_sec=1.0, step_ms_median=1.0)
    common.progress(record)
    assert writes == [(str(path), [record])] and not path.exists()


def test_worker_that_dies_is_recorded():
    # Killed by the timeout while still importing: no records of its own.
    config = {**TINY, "end_to_end": False}
    records = runner.run_impl(IMPL, config, timeout=0.5)
    assert [(r["mode"], r["batch_size"]) for r in records] == [
        ("train", 2),
        ("train", 4),
        ("infer", 2),
        ("infer", 4),
    ]
    for record in records:
        assert record["error"] == "worker timed out after 0.5 s"
        assert set(common.RECORD_KEYS) <= set(record)


def test_bad_arguments_say_what_was_received(capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(["--backends", "torch,mxnet"])
    assert "mxnet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.parse_args(["--batch-size", "0", "--device", "cpu"])
    assert "--batch-size" in capsys.readouterr().err


def test_table_from_records_without_a_run():
    config = {**TINY, "variant": "torchvision", "image_size": 224}
    records = [
        common.new_record(
            "torchvision-eager", "train", 16, config, images_per_sec=10.0, device="cpu0"
        ),
        common.new_record("torchvision-compile", "train", 16, config, error="oom"),
        common.new_record(IMPL, "train", 16, config, images_per_sec=15.0, device="cpu0"),
    ]
    report.add_ratios(records)
    table = report.format_table(records, config)
    assert records[2]["ratio_vs_torchvision_eager"] == pytest.approx(1.5)
    assert records[2]["ratio_vs_torchvision_compile"] is None
    assert "| 1.50 |" in table and "| oom |" in table


def test_rounds_keep_the_median_round():
    config = {**TINY, "variant": "torchvision"}
    rounds = [
        common.new_record(IMPL, "train", 16, config, images_per_sec=value, error=error)
        for value, error in [(30.0, None), (None, "oom"), (10.0, None), (20.0, None)]
    ]
    (merged,) = report.merge_rounds(rounds)
    assert merged["images_per_sec"] == 20.0
    assert merged["rounds"] == 4
    assert merged["rounds_images_per_sec"] == [30.0, None, 10.0, 20.0]
    (failed,) = report.merge_rounds([rounds[1]])
    assert failed["error"] == "oom" and failed["rounds"] == 1


def _record(impl, images_per_sec=None, error=None):
    return common.new_record(
        impl, "train", 2, TINY, images_per_sec=images_per_sec, error=error, error_detail=error
    )


@pytest.mark.parametrize(
    "errors, expected",
    [
        ([None, None], 0),
        ([None, "oom"], 0),  # a batch that does not fit is a result
        ([None, "missing: No module named 'jax'"], 0),  # so is a backend not installed
        ([None, "RuntimeError: a bug in the worker"], 1),  # a crash is not
        ([None, "worker timed out after 60 s"], 1),
        (["missing: No module named 'jax'", "oom"], 1),  # nothing measured
    ],
)
def test_exit_status_is_one_when_a_worker_failed(monkeypatch, capsys, errors, expected):
    # As `nox -s bench_all` in CI: torchvision measures, the Keras worker's record varies.
    def run_impl(impl, config, **kwargs):
        error = errors[0] if impl == "torchvision-eager" else errors[1]
        return [_record(impl, None if error else 10.0, error)]

    monkeypatch.setattr(runner, "run_impl", run_impl)
    argv = ["--backends", BACKEND, "--baselines", "torchvision-eager", "--device", "cpu"]
    assert runner.main(argv) == expected
    err = capsys.readouterr().err
    crashed = [e for e in errors if e and e != "oom" and not e.startswith("missing")]
    for error in crashed:
        assert f"[bench] FAILED: {IMPL}: {error}" in err, err
    assert ("FAILED" in err) == bool(crashed)


@pytest.mark.slow
def test_a_keras_worker_that_raises_fails_the_run(tmp_path, monkeypatch, capsys):
    # A real worker whose training step raises: its inference step is measured, so a
    # run counting only whether anything was measured would pass.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            from benchmarks import keras_bench
            real = keras_bench._measure

            def _measure(mode, *args, **kwargs):
                if mode == "train":
                    raise RuntimeError("planted: the worker raises")
                return real(mode, *args, **kwargs)

            keras_bench._measure = _measure
            """
        )
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    )
    small = ["--variant", "cifar", "--num-classes", "10", "--image-size", "32"]
    code = runner.main(
        ["--backends", BACKEND, "--baselines", "none", "--modes", "train,infer", *small]
        + ["--batch-size", "2", "--steps", "1", "--warmup", "1", "--device", "cpu"]
        + ["--out", str(tmp_path / "r.json")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"[bench] FAILED: {IMPL}: RuntimeError: planted: the worker raises" in err, err
    records = by_key(json.loads((tmp_path / "r.json").read_text()))
    assert records[("infer", 2)]["images_per_sec"] > 0  # written before the exit status
    assert records[("train", 2)]["error"] == "RuntimeError: planted: the worker raises"


@pytest.mark.parametrize(
    "name, missing",
    [(BACKEND, True), ("keras", True), ("alexnet_k3.gone", False), (None, False)],
)
def test_only_a_framework_that_is_not_installed_counts_as_missing(
    tmp_path, monkeypatch, name, missing
):
    # A broken import inside installed code is a crash, not a backend to skip.
    def run(impl, config):
        if name is None:
            raise ImportError("cannot import name 'x' from 'alexnet_k3.model'")
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(keras_bench, "run", run)
    monkeypatch.setitem(common.RESULT_SINK, "records", [])
    config_path, result_path = tmp_path / "config.json", tmp_path / "records.json"
    config_path.write_text(
        json.dumps({**TINY, "modes": ["train"], "batch_sizes": [2], "end_to_end": False})
    )
    assert runner._worker_main([IMPL, str(config_path), str(result_path)]) == 0
    (record,) = json.loads(result_path.read_text())
    assert record["error"].startswith("missing: ") is missing, record["error"]
    assert bool(runner.failures([record])) is not missing
