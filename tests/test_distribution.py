"""Data-parallel training: two virtual devices in one process, and two-process jobs.

The jobs run on localhost CPUs: torch through torchrun itself, jax and tensorflow
as two processes given the KERAS_DISTRIBUTION_* variables or TF_CONFIG, as
`launch.commands` writes them.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from alexnet_k3 import launch
from alexnet_k3.training import train

BACKEND = keras.config.backend()


def test_torch_backend_without_torchrun_says_to_launch_with_it(tmp_path, monkeypatch):
    if BACKEND != "torch":
        pytest.skip("the torch backend's refusal")
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="launch the same command with torchrun"):
        train(tmp_path / "run", data_parallel=True)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_job_process_without_data_parallel_is_refused(tmp_path, monkeypatch):
    """Every process would otherwise train alone and write the same folder."""
    variables = {"torch": ("RANK", "WORLD_SIZE"), "jax": launch.JOB_VARIABLES["jax"]}
    variables["tensorflow"] = None
    if variables[BACKEND] is None:
        monkeypatch.setenv(
            "TF_CONFIG",
            json.dumps(
                {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
            ),
        )
    else:
        monkeypatch.setenv(variables[BACKEND][0], "1")
        monkeypatch.setenv(variables[BACKEND][1], "2")
    with pytest.raises(ValueError, match="every process would train alone"):
        train(tmp_path / "run", epochs=1)
    assert not (tmp_path / "run").exists()


def test_launch_wait_gives_exit_codes_and_kills_what_outlives_the_timeout():
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    start = time.monotonic()
    assert launch.wait([quick, stuck], timeout=3) == [3, None]
    assert time.monotonic() - start < 30
    assert stuck.poll() is not None  # killed, not left running


def test_job_process_reads_each_launchers_variables():
    assert launch.job_process("torch", {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert launch.job_process("torch", {"KERAS_DISTRIBUTION_PROCESS_ID": "1"}) is None
    keras_job = {"KERAS_DISTRIBUTION_PROCESS_ID": "0", "KERAS_DISTRIBUTION_NUM_PROCESSES": "3"}
    assert launch.job_process("jax", keras_job) == (0, 3)
    assert launch.job_process(environ=keras_job) == (0, 3)
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    assert launch.job_process("tensorflow", {"TF_CONFIG": tf_config}) == (2, 3)
    assert launch.job_process(environ={}) is None
    with pytest.raises(ValueError, match="RANK='2', WORLD_SIZE='2'"):
        launch.job_process("torch", {"RANK": "2", "WORLD_SIZE": "2"})
    assert launch.dist_timeout({}) == 300
    assert launch.dist_timeout({"ALEXNET_K3_DIST_TIMEOUT": "20"}) == 20
    with pytest.raises(ValueError, match="ALEXNET_K3_DIST_TIMEOUT='0'"):
        launch.dist_timeout({"ALEXNET_K3_DIST_TIMEOUT": "0"})


def test_shards_are_disjoint_cover_each_epoch_and_agree_on_the_permutation():
    from alexnet_k3.backend import shard_feed

    x = np.arange(101)
    feeds = [shard_feed(x, x, batch_size=8, rank=r, processes=2, shuffle_seed=3) for r in range(2)]
    orders = []
    for epoch in (0, 1):
        shares = []
        for feed in feeds:
            feed.epoch = epoch
            assert len(feed) == 13  # 101 padded to 102: 12 global batches of 8, one of 6
            assert [len(feed[i][0]) for i in range(len(feed))] == [4] * 12 + [3]
            shares.append(np.concatenate([feed[i][0] for i in range(len(feed))]))
        assert len(np.intersect1d(*shares)) == 1  # only the one padding image twice
        assert set(np.concatenate(shares)) == set(range(101))
        orders.append(shares[0])
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch


def test_more_devices_than_exist_is_a_clear_error(tmp_path):
    if BACKEND == "torch":
        pytest.skip("one device per process on torch")
    with pytest.raises(ValueError, match="devices=64 asked for"):
        train(tmp_path / "run", data_parallel=True, devices=64)
    with pytest.raises(ValueError, match="`devices` must be None unless data_parallel=True"):
        train(tmp_path / "run2", devices=2)


# Each backend gets two CPU devices its own way, before it initializes.
TWO_DEVICES = {
    "jax": ({"JAX_NUM_CPU_DEVICES": "2"}, ""),
    "tensorflow": (
        {},
        """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        """,
    ),
}


@pytest.mark.slow
def test_training_on_two_devices_learns_and_uses_both(tmp_path):
    if BACKEND not in TWO_DEVICES:
        pytest.skip("one process drives one device on torch: see the job tests")
    env_vars, setup = TWO_DEVICES[BACKEND]
    script = textwrap.dedent(setup) + textwrap.dedent(
        f"""
        from alexnet_k3.cli import main
        raise SystemExit(main(["train", "--dataset", "digits", "--epochs", "3",
                               "--batch-size", "64", "--data-parallel", "--devices", "2",
                               "--verbose", "0", "--out", {str(tmp_path / "run")!r}]))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": BACKEND, **env_vars}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["devices"] == 2
    # Measured on the trained model: its weights lived on both devices.
    assert metrics["replicas_holding_weights"] == 2
    assert metrics["test_accuracy"] >= 0.85  # 3 epochs: 0.95 on one device


# --- Two-process jobs on localhost ----------------------------------------------------

JOB_EPOCHS = 3
TRAIN_ARGS = ["--dataset", "digits", "--epochs", str(JOB_EPOCHS), "--batch-size", "64"]
TRAIN_ARGS += ["--seed", "0", "--verbose", "0"]

# Run as each process of a job: the CLI, with an audit hook on processes other than
# 0 that records every write, rename, removal or folder creation under the run
# folder (a rename is how every file of a run lands), into WRITES_FILE.
PROCESS_SCRIPT = """
import atexit, json, os, sys
run, record, args = sys.argv[1], sys.argv[2], sys.argv[3:]
from alexnet_k3.launch import job_process
rank = str(job_process()[0])  # from RANK, KERAS_DISTRIBUTION_PROCESS_ID or TF_CONFIG
writes = []
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path):
    try:
        return os.path.abspath(os.fsdecode(path)).startswith(run)
    except TypeError:
        return False

def audit(event, event_args):
    if event == "open":
        path, mode, flags = event_args
        writing = any(c in (mode or "") for c in "wax+") or (not mode and flags & WRITING)
        if inside(path) and writing:
            writes.append([event, os.fsdecode(path)])
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
        if inside(event_args[0]) or (len(event_args) > 1 and inside(event_args[1])):
            writes.append([event, os.fsdecode(event_args[0])])

def save():
    with open(record + "-" + str(rank) + ".json", "w") as f:
        json.dump(writes, f)

if rank != "0":
    sys.addaudithook(audit)
    atexit.register(save)
from alexnet_k3.cli import main
raise SystemExit(main(args + ["--out", run]))
"""


def job_env(**extra) -> dict:
    env = {**os.environ, "KERAS_BACKEND": BACKEND, **extra}
    for name in ("JAX_NUM_CPU_DEVICES", "RANK", "WORLD_SIZE", "LOCAL_RANK", "TF_CONFIG"):
        env.pop(name, None)
    for name in launch.JOB_VARIABLES["jax"] + ("KERAS_DISTRIBUTION_JOB_ADDRESSES",):
        env.pop(name, None)
    return env


def start_job(tmp_path, argv: list[str], env: dict) -> list[subprocess.Popen]:
    """Starts a 2-process job running `argv` (a script and its arguments, or -m module)."""
    logs = []
    if BACKEND == "torch":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        command += ["--master-port", str(launch.free_ports(1)[0]), *argv]
        log = open(tmp_path / f"job-{time.monotonic_ns()}.log", "w+")
        logs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        logs[-1].log = log
        return logs
    # Each process's job variables (KERAS_DISTRIBUTION_*, TF_CONFIG) as the launcher sets them.
    for rank, (_, variables) in enumerate(launch.commands(BACKEND, 2, [])):
        log = open(tmp_path / f"process-{rank}-{time.monotonic_ns()}.log", "w+")
        process = subprocess.Popen(
            [sys.executable, *argv], env={**env, **variables}, stdout=log, stderr=subprocess.STDOUT
        )
        process.log = log
        logs.append(process)
    return logs


def finish(processes, timeout: float) -> list[tuple[int, str]]:
    """(exit status, output) of each process, waiting at most `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    results = []
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.log.seek(0)
        results.append((process.returncode, process.log.read()))
    return results


def checksums(output: str) -> dict[str, str]:
    """Each process's final weights checksum, by rank, from the job's output."""
    return dict(re.findall(r"process (\d+) of 2: final weights ([0-9a-f]{64})", output))


@pytest.fixture(scope="module")
def one_process_accuracy(tmp_path_factory):
    """The same run (global batch, seed, epochs) in one process, on one device."""
    out = tmp_path_factory.mktemp("reference") / "run"
    argv = ["train", *TRAIN_ARGS, "--out", str(out)]
    script = f"from alexnet_k3.cli import main; raise SystemExit(main({argv!r}))"
    result = subprocess.run(
        [sys.executable, "-c", script], env=job_env(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())["test_accuracy"]


@pytest.mark.slow
def test_a_two_process_job_learns_as_one_process_does_and_only_process_0_writes(
    tmp_path, one_process_accuracy
):
    run, record = tmp_path / "run", tmp_path / "writes"
    script = tmp_path / "process.py"
    script.write_text(PROCESS_SCRIPT)
    argv = [str(script), str(run), str(record), "train", *TRAIN_ARGS, "--data-parallel"]
    results = finish(start_job(tmp_path, argv, job_env()), timeout=900)
    output = "\n".join(out for _, out in results)
    assert all(code == 0 for code, _ in results), output[-5000:]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["devices"] == 2
    assert abs(metrics["test_accuracy"] - one_process_accuracy) <= 0.05, (
        metrics["test_accuracy"],
        one_process_accuracy,
    )
    assert metrics["epochs"] == JOB_EPOCHS
    # Both processes end on the same weights: the gradients really were averaged.
    sums = checksums(output)
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], output[-3000:]
    # The saved model loads on every backend: tensorflow's job-time synchronized
    # batch normalization (tf_job.prepare) is not in its config.
    with zipfile.ZipFile(run / "model.keras") as saved:
        layers = json.dumps(json.loads(saved.read("config.json")))
    assert '"synchronized": true' not in layers
    assert BACKEND != "tensorflow" or '"synchronized": false' in layers  # BN is there
    # Process 1 wrote nothing into the run folder.
    assert json.loads((tmp_path / "writes-1.json").read_text()) == []
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [
            "class_names.json",
            "config.json",
            "history.csv",
            "history.json",
            "metrics.json",
            "model.keras",
            "report.md",
            "curves.png",
            "confusion_matrix.png",
            "per_class_accuracy.png",
            "samples.png",
        ]
    )


def rank_1_pid(processes) -> int | None:
    """The pid of the job's process 1 (torch: torchrun's child with RANK=1)."""
    if BACKEND != "torch":
        return processes[1].pid
    for pid in Path("/proc").iterdir():
        if not pid.name.isdigit():
            continue
        try:
            environ = (pid / "environ").read_bytes().split(b"\0")
            status = (pid / "status").read_text()
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid"))
        if int(parent) == processes[0].pid and b"RANK=1" in environ:
            return int(pid.name)
    return None


@pytest.mark.slow
def test_a_lost_process_stops_the_job_with_resume_advice_and_resume_finishes(tmp_path):
    run, timeout = tmp_path / "run", 20
    argv = ["-m", "alexnet_k3", "train", *TRAIN_ARGS, "--data-parallel", "--out", str(run)]
    env = job_env(ALEXNET_K3_DIST_TIMEOUT=str(timeout))
    processes = start_job(tmp_path, argv, env)
    deadline = time.monotonic() + 600
    while not (run / "history.json").exists() and time.monotonic() < deadline:
        assert processes[0].poll() is None, "the job ended before its first epoch did"
        time.sleep(0.2)
    os.kill(rank_1_pid(processes), signal.SIGKILL)
    killed = time.monotonic()
    results = finish(processes[:1], timeout=timeout + 60)
    finish(processes[1:], timeout=5)
    code, output = results[0]
    assert time.monotonic() - killed < timeout + 60
    assert code != 0, output[-3000:]
    assert "process 0 of 2" in output and "--resume" in output, output[-3000:]
    if BACKEND == "torch":  # our line, not a traceback from the command line
        assert "Traceback" not in output.split("process 0 of 2")[0].splitlines()[-1]
    assert not (run / "metrics.json").exists()
    assert not list(run.rglob(".tmp-*"))  # nothing half-written

    argv.append("--resume")
    results = finish(start_job(tmp_path, argv, env), timeout=900)
    output = "\n".join(out for _, out in results)
    assert all(c == 0 for c, _ in results), output[-5000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == JOB_EPOCHS and metrics["processes"] == 2
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history] == list(range(1, JOB_EPOCHS + 1))
    sums = checksums(output)
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], output[-3000:]


@pytest.mark.slow
def test_bench_data_parallel_times_a_one_and_a_two_process_job(tmp_path, run_cli):
    out = tmp_path / "dp.json"
    tiny = ["--variant", "cifar", "--image-size", "32", "--batch-size", "4", "--steps", "2"]
    run_cli(
        "bench", "--data-parallel", "--backends", BACKEND, *tiny, "--warmup", "1", "--out", out,
        expect_ok=True,
    )  # fmt: skip
    rows = json.loads(out.read_text())["records"]
    assert [(r["processes"], r["devices"], r["global_batch"]) for r in rows] == [
        (1, 1, 4),
        (2, 2, 8),
    ]
    for row in rows:
        assert row["images_per_sec"] == pytest.approx(8 * row["processes"] / row["seconds"], 0.01)
        per_device = row["images_per_sec"] / row["devices"]
        assert row["images_per_sec_per_device"] == pytest.approx(per_device, 0.01)
        assert row["label"].startswith("plumbing")
    assert rows[0]["scaling_efficiency"] == 1.0
    efficiency = rows[1]["images_per_sec_per_device"] / rows[0]["images_per_sec_per_device"]
    assert rows[1]["scaling_efficiency"] == pytest.approx(efficiency, abs=0.001)
    assert "not a scaling result" in out.with_suffix(".md").read_text()


def test_bench_data_parallel_refuses_an_unknown_backend(run_cli):
    result = run_cli("bench", "--data-parallel", "--backends", "torch,mxnet")
    assert result.returncode == 2
    assert "--backends torch,mxnet: expected some of torch,jax,tensorflow" in result.stderr


def test_bench_data_parallel_names_a_failed_processs_error_not_torchruns_banner():
    from benchmarks.data_parallel import error_line

    output = ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad"]
    output += ["torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "=" * 55]
    assert error_line(output[:3] + ["=" * 55]) == "ValueError: bad"
    assert error_line(output) == "ValueError: bad"  # the worker's, not torchrun's
    assert error_line(["some words", "=" * 55]) == "some words"


def test_a_torch_job_leaves_cleanly_after_two_compiles(monkeypatch):
    """Transfer learning compiles twice (frozen features, then fine-tuning): DDP each time."""
    if BACKEND != "torch":
        pytest.skip("torch's DistributedDataParallel")
    from alexnet_k3.backend import jobs

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(launch.free_ports(1)[0]))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    job = jobs.Job(0, 1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    for _ in range(2):
        model.compile(optimizer="sgd", loss="mse")
        job.prepare(model)
    job.finish()
    import torch.distributed as dist

    assert not dist.is_initialized()
    assert "train_step" not in vars(model)  # Keras's own step again
