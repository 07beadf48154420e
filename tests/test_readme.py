"""Every command the README shows runs, here or in CI (.ci/run), and does what the README says.

CIFAR-10 and torchvision's weights cannot be downloaded here, so the CIFAR
commands run on a small CIFAR-10 written in the official layout, with fewer
epochs appended (a later `--epochs` overrides the README's), and
`--weights imagenet` is run twice: as written (offline: it must fail with the
file name and the cache folder) and with a random-weight torchvision checkpoint
in its place.
"""

import json
import re
import shlex
from pathlib import Path

import keras
import pytest
import tomllib
from cifar_files import write_cifar10

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BACKEND = keras.config.backend()


def _commands():
    blocks = re.findall(r"```console\n(.*?)```", README, flags=re.S)
    return [shlex.split(line, comments=True) for block in blocks for line in block.splitlines()]


COMMANDS = [argv for argv in _commands() if argv]


def test_readme_commands_are_all_accounted_for():
    ci = (ROOT / ".ci" / "run").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    from keras.src.distribution import distribution_lib

    keras_reads = Path(distribution_lib.__file__).read_text()
    for argv in COMMANDS:
        if argv[0] == "alexnet-k3":
            continue  # run by test_readme_cli_commands below
        if argv[:2] == ["nox", "-s"]:
            for session in argv[2:]:
                assert f" {session}" in ci.replace("nox -s", " "), f"CI does not run {argv}"
        elif argv[:2] == ["pip", "install"]:
            target = argv[2]
            if target == "nox":
                assert 'install --quiet "nox' in ci
            else:
                named = re.fullmatch(r"alexnet-k3\[(\w+)\]", target)
                assert named and named.group(1) in extras, target
        elif argv[0] == "export":
            variable = argv[1].split("=")[0]
            assert variable in keras_reads, f"keras.distribution does not read {variable}"
        else:
            pytest.fail(f"README command {argv} is neither run by a test nor by CI")


@pytest.mark.slow
def test_readme_cli_commands(tmp_path, run_cli):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    data = write_cifar10(tmp_path / "cifar", n_train=40, n_test=20, as_tarball=True)
    checkpoint = tmp_path / "random-alexnet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoint)
    env = {
        "ALEXNET_K3_DATA": str(data),
        "TORCH_HOME": str(tmp_path / "torch-home"),  # empty cache: "imagenet" must fail cleanly
        "KERAS_HOME": str(tmp_path / "keras-home"),
        "JAX_NUM_CPU_DEVICES": "2",  # for the data-parallel command
    }
    quick = ["--epochs", "1", "--verbose", "0"]

    def run(argv, expect_ok=True):  # argv[0] is "alexnet-k3"
        return run_cli(*argv[1:], cwd=tmp_path, env=env, timeout=900, expect_ok=expect_ok)

    ran = 0
    for argv in COMMANDS:
        if argv[0] != "alexnet-k3":
            continue
        ran += 1
        command = argv[1]
        if command == "train" and "--resume" in argv:
            result = run(argv)
            assert "nothing to resume" in result.stdout
        elif command == "train" and "imagenet" in argv:
            offline = run(argv, expect_ok=False)
            assert offline.returncode == 2
            assert "alexnet-owt-7be5be79.pth" in offline.stderr
            assert str(tmp_path / "torch-home") in offline.stderr
            argv = [str(checkpoint) if a == "imagenet" else a for a in argv]
            run(argv + ["--epochs", "2", "--freeze-epochs", "1", "--verbose", "0"])
            metrics = json.loads((tmp_path / _option(argv, "--out") / "metrics.json").read_text())
            assert metrics["mode"] == "transfer" and metrics["epochs"] == 2
        elif command == "train":
            run(argv + quick)
            metrics = json.loads((tmp_path / _option(argv, "--out") / "metrics.json").read_text())
            if "--data-parallel" in argv:
                assert metrics["devices"] == 2
        elif command == "convert":
            offline = run(argv, expect_ok=False)
            assert offline.returncode == 2 and "alexnet-owt-7be5be79.pth" in offline.stderr
            converted = [a if a != "imagenet" else str(checkpoint) for a in argv]
            run(converted)
            assert (tmp_path / _option(argv, "--out")).is_file()
        elif command == "info":
            assert "backend: jax" in run(argv).stdout
        elif command == "evaluate":
            run(argv)
            metrics = json.loads((tmp_path / _option(argv, "--out") / "metrics.json").read_text())
            assert metrics["backend"] == "jax" and metrics["trained_on_backend"] == BACKEND
        elif command == "compare":
            table = run(argv).stdout
            assert table == (tmp_path / _option(argv, "--out")).read_text()
            assert table.count("\n") == 2 + len(argv) - 4
        else:
            pytest.fail(f"no check for README command {argv}")
    assert ran >= 8


def _option(argv, name):
    return argv[argv.index(name) + 1]
