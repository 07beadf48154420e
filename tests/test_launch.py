"""The localhost job launcher: each engine's documented variables, one process each."""

import json

import pytest

from alexnet_k3 import launch


def test_jax_processes_get_keras_distribution_variables_of_one_job():
    jobs = launch.commands("jax", 3, ["train", "--data-parallel"])
    assert len(jobs) == 3
    addresses = {env["KERAS_DISTRIBUTION_JOB_ADDRESSES"] for _, env in jobs}
    assert len(addresses) == 1  # one coordinator for the whole job
    assert [env["KERAS_DISTRIBUTION_PROCESS_ID"] for _, env in jobs] == ["0", "1", "2"]
    assert all(env["KERAS_DISTRIBUTION_NUM_PROCESSES"] == "3" for _, env in jobs)
    assert all(command[-2:] == ["train", "--data-parallel"] for command, _ in jobs)


def test_tensorflow_workers_share_one_cluster_and_each_knows_its_index():
    jobs = launch.commands("tensorflow", 2, ["train"])
    configs = [json.loads(env["TF_CONFIG"]) for _, env in jobs]
    assert configs[0]["cluster"] == configs[1]["cluster"]
    assert len(set(configs[0]["cluster"]["worker"])) == 2  # a port each
    assert [c["task"] for c in configs] == [
        {"type": "worker", "index": 0},
        {"type": "worker", "index": 1},
    ]


def test_torch_is_started_by_torchrun_itself():
    ((command, env),) = launch.commands("torch", 4, ["train"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in command
    assert env["KERAS_BACKEND"] == "torch"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mxnet", "2", "train"], "backend must be one of"),
        (["jax", "two", "train"], "usage: python -m alexnet_k3.launch"),
        (["jax", "0", "train"], "processes must be a positive integer, received 0"),
    ],
)
def test_bad_arguments_are_one_clear_message(argv, message, capsys):
    assert launch.main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_jobs_warnings_say_which_process_wrote_them(monkeypatch, capsys):
    from alexnet_k3 import runs

    for name in ("RANK", "WORLD_SIZE", "TF_CONFIG", *launch.JOB_VARIABLES["jax"]):
        monkeypatch.delenv(name, raising=False)
    runs.warn("alone")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    runs.warn("in a job")
    assert capsys.readouterr().err.splitlines() == [
        "warning: alone",
        "warning: process 1 of 2: in a job",
    ]
