"""The benchmark runner's plumbing on tiny settings: records, ratios, OOM, failing workers.

Run once per backend process (`KERAS_BACKEND=jax pytest tests/test_bench.py`). Speed is
not asserted here; the figures live in benchmarks/results/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import textwrap
from pathlib import Path

import keras
import pytest

from alexnet_k3 import backend as kb
from alexnet_k3 import contention, core

# benchmarks/ is a folder of the repository (on sys.path through pytest's `pythonpath`).
from benchmarks import common, keras_bench, report, runner

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
BACKEND = kb.name()
IMPL = f"keras-{BACKEND}"
# Tiny: the native 32x32 variant, one measured step.
TINY = {
    "modes": ["train", "infer"],
    "batch_sizes": [2, 4],
    "image_size": 32,
    "precision": "float32",
    "jit": "recommended",
    "timings": ["pipelined", "per-step"],
    "steps": 1,
    "warmup": 1,
    "min_seconds": 0.0,
    "matmul_precision": "default",
    "equal_precision": False,
    "tune": True,
    "device": "cpu",
    "end_to_end": True,
    "dataset": "digits",
    "e2e_images": None,
    "e2e_epochs": 2,
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
    """One in-process worker run: batch 4's training steps run out of memory."""
    real_step, real_steps = keras_bench.train_step_fn, keras_bench.train_steps_fn

    def out_of_memory(*args):  # called by the worker's timing loops, like a real step
        raise backend_oom_error()

    def train_step_fn(model, x, y):
        return real_step(model, x, y) if x.shape[0] != 4 else out_of_memory

    def train_steps_fn(model, x, y):
        return real_steps(model, x, y) if x.shape[0] != 4 else out_of_memory

    data_format = keras.config.image_data_format()
    policy = keras.mixed_precision.global_policy()
    threads = _single_torch_thread()
    digits = keras_bench.load_dataset("digits")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras_bench, "train_step_fn", train_step_fn)
        patch.setattr(keras_bench, "train_steps_fn", train_steps_fn)
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
    return {common.record_key(r): r for r in records}


SYNTHETIC_KEYS = [(m, t, b) for m in ("train", "infer") for b in (2, 4) for t in common.TIMINGS]


def test_records_complete(worker_records):
    records = by_key(worker_records)
    e2e_keys = [("train-e2e", "pipelined", b) for b in (2, 4)]
    assert list(records) == SYNTHETIC_KEYS + e2e_keys  # both timings, every mode and batch
    for record in worker_records:
        assert set(common.RECORD_KEYS) <= set(record), record
        assert record["impl"] == IMPL
        assert record["image_size"] == 32 and record["precision"] == "float32"
        assert record["device"] and record["device_type"] == "cpu"
        assert record["versions"]["keras"] == keras.__version__
        assert record["head_dtype"] in (None, "float32")
    for key in [k for k in SYNTHETIC_KEYS if k[0] == "infer" or k[2] == 2] + e2e_keys[:1]:
        record = records[key]
        assert record["error"] is None, record
        assert record["images_per_sec"] > 0 and record["step_ms_mean"] > 0
        assert isinstance(record["jit"], bool) and record["head_dtype"] == "float32"
        assert record["compile_seconds"] >= 0 and record["measured_seconds"] > 0
        # The machine's state while it was measured, and the rule's verdict on it.
        assert record["cpu_cores"] >= 1 and record["load_average"]["end"] is not None
        assert record["contended"] is contention.is_contended(
            record["cpu_cores"], record["other_cpu_cores"]
        )
        if key[0] != "train-e2e":  # its figure is images over the steady epochs' time
            timed = record["batch_size"] * record["steps"] / record["measured_seconds"]
            assert record["images_per_sec"] == pytest.approx(timed)
    for (mode, timing, _), record in records.items():
        if mode == "train-e2e" or record["error"]:
            continue
        assert record["steps"] == 1 and record["warmup"] == 1
        if timing == "per-step":
            assert 0 < record["step_ms_median"] <= record["step_ms_p90"] * (1 + 1e-9)
        else:  # no step is timed alone: no percentiles
            assert record["step_ms_median"] is None and record["step_ms_p90"] is None


def test_oom_recorded_and_run_goes_on(worker_records):
    records = by_key(worker_records)
    for timing in common.TIMINGS:
        oom = records[("train", timing, 4)]
        assert oom["error"] == "oom"
        assert oom["error_detail"].startswith(type(backend_oom_error()).__name__)
        assert oom["images_per_sec"] is None
    # The end-to-end figure at batch 4 runs the same (failing) synthetic steps as reference.
    assert records[("train-e2e", "pipelined", 4)]["error"] == "oom"
    # Later work in the same process still ran.
    assert records[("infer", "pipelined", 4)]["images_per_sec"] > 0


def test_end_to_end_ratio(worker_records):
    e2e = by_key(worker_records)[("train-e2e", "pipelined", 2)]
    assert e2e["epoch_images"] == 37 and e2e["dataset"] == "digits"
    # Two epochs: the first (start-up) apart, the steady one timed: 19 steps of batch 2.
    assert e2e["epochs"] == 2 and e2e["steps"] == 19
    assert e2e["first_epoch_seconds"] > 0 and e2e["epoch_seconds"] > 0
    assert e2e["synthetic_images_per_sec"] > 0
    assert e2e["synthetic_before_images_per_sec"] > 0 and e2e["synthetic_after_images_per_sec"] > 0
    assert e2e["e2e_ratio"] == pytest.approx(
        e2e["images_per_sec"] / e2e["synthetic_images_per_sec"]
    )


def test_synthetic_end_to_end_set_is_cifar10_sized_and_fixed():
    # What `--dataset synthetic` (CIFAR-10 absent) feeds the end-to-end epochs on a GPU.
    config = {"dataset": "synthetic", "e2e_images": 50_000}
    x, labels, name = keras_bench.e2e_dataset(config)
    assert name == "synthetic" and x.shape == (50_000, 32, 32, 3) and x.dtype == "uint8"
    assert labels.dtype == "int64" and set(labels[:1000].tolist()) == set(range(10))
    again, _, _ = keras_bench.e2e_dataset(config)
    assert (x[:64] == again[:64]).all()  # a fixed seed: every backend gets the same images
    assert 100 < x.mean() < 155  # uniform pixels, not a constant image


def test_cpu_end_to_end_set_times_at_least_twenty_steps():
    args = runner.parse_args(["--device", "cpu", "--batch-size", "8,16", "--end-to-end"])
    if args.dataset == "synthetic":  # CIFAR-10 is not on this machine
        assert args.e2e_images == runner.CPU_E2E_STEPS * 16 and args.e2e_epochs == 2
    config = runner.worker_config(args)
    assert config["settings"]["e2e_images"] == args.e2e_images
    with pytest.raises(SystemExit):
        runner.parse_args(["--device", "cpu", "--e2e-epochs", "1"])


def test_worker_warns_of_a_precision_measured_slower(monkeypatch, capsys):
    monkeypatch.setattr(kb, "precision_warning", lambda precision: f"{precision} is slow here")
    config = {**TINY, "modes": [], "end_to_end": False, "precision": "mixed_bfloat16"}
    assert keras_bench.run(IMPL, config) == []
    assert f"[bench] {IMPL}: warning: mixed_bfloat16 is slow here" in capsys.readouterr().err


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
        assert record["freed_memory_kept"] is (True if GLIBC else None)
        assert record["tf32_matmul"] is None and record["tf32_conv"] is None  # a CPU
    assert applied["keep_freed_memory"] is GLIBC  # on a CPU, every backend


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
    assert [(r["impl"], *common.record_key(r)) for r in records] == [
        ("torchvision-eager", "train", "pipelined", 2),
        ("torchvision-eager", "train", "per-step", 2),
        (IMPL, "train", "pipelined", 2),
        (IMPL, "train", "per-step", 2),
    ]
    baseline, keras_record = records[::2]
    for record in records:
        assert set(common.RECORD_KEYS) <= set(record)
        assert record["error"] is None, record
        # One settings block and one machine block, the same in every row.
        assert record["settings"] == records[0]["settings"]
        assert record["metadata"] == records[0]["metadata"]
        # The same process-wide settings, applied and probed in each worker's process.
        assert record["keep_freed_memory"] is record["freed_memory_kept"] is GLIBC
    assert records[0]["settings"]["timings"] == ["pipelined", "per-step"]
    assert records[0]["metadata"]["cpu"] == core.cpu_name()
    assert baseline["ratio_vs_torchvision_eager"] == pytest.approx(1.0)
    ratio = keras_record["images_per_sec"] / baseline["images_per_sec"]
    assert keras_record["ratio_vs_torchvision_eager"] == pytest.approx(ratio)
    assert keras_record["ratio_vs_torchvision_compile"] is None
    row = next(line for line in table.splitlines() if line.startswith(f"| {IMPL} "))
    assert f"| {ratio:.2f} |" in row
    markdown = out.with_suffix(".md").read_text()
    assert markdown.count(f"| {IMPL} ") == 2 and "Machine: cpu " in markdown
    assert out.with_suffix(".png").stat().st_size > 0
    # A saved run renders again without measuring.
    copy = tmp_path / "again.json"
    assert runner.main(["--from-json", str(out), "--out", str(copy), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == table
    assert json.loads(copy.read_text()) == records


def test_no_tune_runs_the_baseline_without_the_process_settings(tmp_path):
    # `--no-tune`: glibc's malloc as it is, and the worker's own probe agrees.
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    out = tmp_path / "plain.json"
    argv = ["--backends", "none", "--baselines", "torchvision-eager", "--modes", "infer"]
    argv += ["--timing", "pipelined", "--image-size", "64", "--batch-size", "2", "--steps", "1"]
    assert (
        runner.main([*argv, "--warmup", "1", "--device", "cpu", "--no-tune", "--out", str(out)])
        == 0
    )
    (record,) = json.loads(out.read_text())
    assert record["settings"]["tune"] is False
    assert record["keep_freed_memory"] is False
    assert record["freed_memory_kept"] is (False if GLIBC else None)


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
    assert len(records) == 4  # 2 modes x 2 timings
    for record in records:
        assert record["error"] == f"missing: No module named {framework!r}"
        assert record["images_per_sec"] is None
    assert table.count(f"missing: No module named {framework!r}") == 4


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
        record = {{"impl": {IMPL!r}, "mode": "train", "timing": "pipelined", "batch_size": 2}}
        text = json.dumps([record])
        with open(sys.argv[-1], "w") as f:  # runner --worker IMPL CONFIG RESULTS
            f.write(text[: len(text) // 2])
        {end}
        """,
    )
    config = {**TINY, "modes": ["train"], "timings": ["pipelined"], "end_to_end": False}
    records = runner.run_impl(IMPL, config, timeout=600)
    assert [common.record_key(r) for r in records] == [
        ("train", "pipelined", 2),
        ("train", "pipelined", 4),
    ]
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
    record = common.new_record(
        IMPL, "train", "per-step", 2, TINY, images_per_sec=1.0, step_ms_median=1.0
    )
    common.progress(record)
    assert writes == [(str(path), [record])] and not path.exists()


def test_worker_that_dies_is_recorded():
    # Killed by the timeout while still importing: no records of its own.
    config = {**TINY, "end_to_end": False}
    records = runner.run_impl(IMPL, config, timeout=0.5)
    assert [common.record_key(r) for r in records] == SYNTHETIC_KEYS
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
            "torchvision-eager", "train", "pipelined", 16, config, images_per_sec=10.0
        ),
        common.new_record("torchvision-compile", "train", "pipelined", 16, config, error="oom"),
        common.new_record(IMPL, "train", "pipelined", 16, config, images_per_sec=15.0),
        # Another timing mode: compared with its own baseline row only (there is none).
        common.new_record(IMPL, "train", "per-step", 16, config, images_per_sec=12.0),
    ]
    report.add_ratios(records)
    table = report.format_table(records, config)
    assert records[2]["ratio_vs_torchvision_eager"] == pytest.approx(1.5)
    assert records[2]["ratio_vs_torchvision_compile"] is None
    assert records[3]["ratio_vs_torchvision_eager"] is None
    assert "| 1.50 |" in table and "| oom |" in table
    assert contention.NOTE not in table  # nothing measured under contention
    records[3]["contended"] = True
    table = report.format_table(records, config)
    assert "| 12.0* |" in table and "| 15.0 |" in table and contention.NOTE in table


def test_readme_table_is_refreshed_from_a_saved_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {**TINY, "variant": "torchvision", "image_size": 224}
    records = [
        common.new_record(
            "torchvision-eager", "train", "pipelined", 256, config, images_per_sec=900.0
        ),
        common.new_record(IMPL, "train", "pipelined", 256, config, images_per_sec=1200.0),
    ]
    results = Path("results/gpu.json")
    report.save(records, "table", results)
    readme = Path("README.md")
    marker = "<!-- bench-table: results/gpu.json -->"
    readme.write_text(f"# Title\n\nBefore.\n{marker}\nold table\n<!-- /bench-table -->\nAfter.\n")
    assert runner.main(["--from-json", str(results), "--readme", "README.md"]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title\n\nBefore.\n")
    assert text.endswith("<!-- /bench-table -->\nAfter.\n")
    row = next(line for line in text.splitlines() if line.startswith(f"| {IMPL} "))
    assert "| 1200.0 |" in row and "| 1.33 |" in row
    # A marker naming the machine as {device}: the README shows the latest run of that kind.
    config["metadata"] = {"cpu_count": 2, "cpus_usable": 2, "gpus": []}
    records = [common.new_record(IMPL, "infer", "pipelined", 8, config, images_per_sec=3.5)]
    results = Path("results/cpu-2core-fp32.json")
    report.save(records, "table", results)
    readme.write_text("<!-- bench-table: results/{device}-fp32.json -->\n<!-- /bench-table -->\n")
    assert runner.main(["--from-json", str(results), "--readme", "README.md"]) == 0
    assert "| 3.5 |" in readme.read_text()
    # A file without the marker is an error that says what to add, not a silent no-op.
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="bench-table: results/"):
        runner.main(["--from-json", str(results), "--readme", "README.md"])


def test_gpu_session_settings_and_readme_markers():
    # `nox -s bench_gpu` cannot run here: its settings are checked, and the README
    # holds the blocks it refreshes.
    root = Path(runner.__file__).resolve().parents[1]
    readme, noxfile = (root / "README.md").read_text(), (root / "noxfile.py").read_text()
    assert '"benchmarks/results/{{device}}-{tag}.json"' in noxfile
    for tag in ("bf16", "fp32"):
        assert f'"{tag}"' in noxfile
        out = f"benchmarks/results/{{device}}-{tag}.json"
        assert f"<!-- bench-table: {out} -->" in readme
        args = runner.parse_args(["--device", "gpu", "--end-to-end", "--out", out])
        assert args.batch_size == [256] and args.min_seconds == 3.0
        config = runner.worker_config(args)
        if args.dataset == "synthetic":
            assert config["e2e_images"] == runner.GPU_E2E_IMAGES == 50_000
        assert config["e2e_epochs"] == 3 and config["timings"] == ["pipelined", "per-step"]
        assert "{device}" not in str(args.out)  # named after the machine


def test_rounds_keep_the_median_round():
    config = {**TINY, "variant": "torchvision"}
    rounds = [
        common.new_record(IMPL, "train", "pipelined", 16, config, images_per_sec=value, error=error)
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
        impl,
        "train",
        "pipelined",
        2,
        TINY,
        images_per_sec=images_per_sec,
        error=error,
        error_detail=error,
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
            real = keras_bench._prepare

            def _prepare(mode, *args, **kwargs):
                if mode == "train":
                    raise RuntimeError("planted: the worker raises")
                return real(mode, *args, **kwargs)

            keras_bench._prepare = _prepare
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
    assert records[("infer", "pipelined", 2)]["images_per_sec"] > 0  # written before the exit
    assert records[("train", "per-step", 2)]["error"] == "RuntimeError: planted: the worker raises"


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
        json.dumps(
            {**TINY, "modes": ["train"], "timings": ["pipelined"], "batch_sizes": [2]}
            | {"end_to_end": False}
        )
    )
    assert runner._worker_main([IMPL, str(config_path), str(result_path)]) == 0
    (record,) = json.loads(result_path.read_text())
    assert record["error"].startswith("missing: ") is missing, record["error"]
    assert bool(runner.failures([record])) is not missing


@pytest.mark.once
def test_baseline_equal_precision_computes_its_head_in_float32():
    # `--equal-precision` under mixed precision: torchvision's last Linear as the
    # Keras model's float32 logits layer, autocast's bfloat16 otherwise.
    torch = pytest.importorskip("torch")
    from benchmarks import torchvision_baseline

    def logits(**options):
        return torchvision_baseline.make_step(
            "infer", 2, 64, num_classes=10, precision="mixed_bfloat16", **options
        )()

    assert logits(float32_head=True).dtype == torch.float32
    assert logits().dtype == torch.bfloat16
    train = torchvision_baseline.make_step(
        "train", 2, 64, num_classes=10, precision="mixed_bfloat16", float32_head=True
    )
    assert torch.isfinite(train())
