"""The Keras-free core and TrainConfig: what the CLI and the bench parent share, typed once."""

import subprocess
import sys
from dataclasses import fields

import pytest

from alexnet_k3 import core
from alexnet_k3.cli import build_parser
from alexnet_k3.config import TrainConfig

FRAMEWORKS = ("keras", "torch", "tensorflow", "jax")


def test_core_config_cli_and_bench_parent_import_no_framework():
    # The CLI parses arguments and the bench parent starts workers before any backend
    # is chosen: importing them must not import Keras or a framework.
    code = (
        "import sys, alexnet_k3.core, alexnet_k3.config, alexnet_k3.cli, benchmarks.runner\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


def _choices(parser, dest):
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for command, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.dest == dest and action.choices is not None:
                yield command, tuple(action.choices)


@pytest.mark.parametrize(
    "dest, vocabulary",
    [
        ("backend", core.BACKENDS),
        ("dataset", core.DATASETS),
        ("variant", core.VARIANTS),
        ("optimizer", core.OPTIMIZERS),
        ("schedule", core.SCHEDULES),
        ("init", core.INITS),
        ("precision", core.PRECISIONS),
        ("data_format", core.DATA_FORMATS),
    ],
)
def test_cli_choices_are_the_core_vocabularies(dest, vocabulary):
    found = list(_choices(build_parser(), dest))
    assert found, f"no command takes --{dest}"
    for command, choices in found:
        assert choices == vocabulary, f"`{command} --{dest}` offers {choices}"


def test_bench_choices_are_the_core_vocabularies():
    from benchmarks import runner

    vocabularies = {
        "precision": core.PRECISIONS,
        "variant": core.VARIANTS,
        "data_format": core.DATA_FORMATS,
        "matmul_precision": core.MATMUL_PRECISIONS,
    }
    choices = {a.dest: tuple(a.choices) for a in runner.build_parser()._actions if a.choices}
    for dest, vocabulary in vocabularies.items():
        assert choices[dest] == vocabulary, dest
    # The end-to-end epochs' data: the core's in-memory datasets, plus a synthetic set
    # and "auto" (CIFAR-10 when on disk); an image folder needs a --data-dir bench lacks.
    in_memory = tuple(d for d in core.DATASETS if d != "folder")
    assert choices["dataset"] == ("auto", "synthetic", *in_memory)
    assert runner.parse_args(["--device", "cpu"]).backends == list(core.BACKENDS)


def test_vocabularies_name_what_the_package_has():
    from alexnet_k3 import datasets
    from alexnet_k3.model import VARIANTS

    assert tuple(VARIANTS) == core.VARIANTS
    for name in core.DATASETS:
        # cifar10 and folder need files; their loaders are tested in test_datasets, test_folder.
        if name not in ("cifar10", "folder"):
            assert datasets.load_dataset(name).name == name


def test_every_train_setting_is_a_cli_option_with_the_field_name_as_dest():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    train = subparsers.choices["train"]
    dests = {a.dest for a in train._actions}
    assert {f.name for f in fields(TrainConfig)} <= dests
    # Only what was typed reaches train(): nothing else is in the namespace.
    args = vars(parser.parse_args(["train", "--weight-decay", "0.0005", "--jit", "off"]))
    given = {k: v for k, v in args.items() if k in TrainConfig.__dataclass_fields__}
    assert given == {"weight_decay": 0.0005, "jit_compile": False}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"seed": 1.5}, "seed"),
        ({"augment": "yes"}, "augment"),
        ({"jit_compile": 1}, "jit_compile"),
        ({"dataset": "mnist"}, r"one of \('digits', 'cifar10', 'folder'\)"),
    ],
)
def test_config_validation_names_the_setting_and_the_value(settings, message):
    with pytest.raises(ValueError, match=message) as info:
        TrainConfig(**settings).validate()
    assert repr(next(iter(settings.values()))) in str(info.value)


class OutOfMemoryError(RuntimeError):
    """Stands for torch.OutOfMemoryError: matched by class name, no framework imported."""


@pytest.mark.parametrize(
    "error, expected",
    [
        (MemoryError(), True),
        (OutOfMemoryError("CUDA"), True),
        (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"), True),
        (OSError(12, "Cannot allocate memory"), True),
        (RuntimeError("OOM when allocating tensor with shape[256,4096]"), True),
        (ValueError("expected 3 channels"), False),
    ],
    ids=["memoryerror", "oom-type", "xla", "enomem", "tensorflow", "not-oom"],
)
def test_one_out_of_memory_classifier(error, expected):
    assert core.is_out_of_memory(error) is expected


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "records.json"
    core.atomic_write_json(path, [1, 2])

    def killed(*args):  # as if the process died between writing and renaming
        raise OSError("no space left on device")

    monkeypatch.setattr(core.os, "replace", killed)
    with pytest.raises(OSError, match="no space"):
        core.atomic_write_json(path, [3, 4])
    assert path.read_text() == "[1, 2]"
    assert [p.name for p in tmp_path.iterdir()] == ["records.json"]  # no temporary left
