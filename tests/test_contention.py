"""Speed figures that carry their conditions: the contention rule, its monitor, its marks."""

import json
import subprocess
import sys
import time

import pytest

from alexnet_k3 import contention
from alexnet_k3.report import _report_markdown, compare_runs


@pytest.mark.parametrize(
    "cores, other, loads, own, expected",
    [
        (2, 1.0, None, None, True),  # a burner on each of 2 cores takes about half of them
        (16, 8.2, None, None, True),
        (2, 0.05, None, None, False),  # an idle machine: the odd daemon
        (2, 0.5, None, None, False),  # a quarter of the cores exactly: not yet
        (2, 0.51, None, None, True),
        # Decided by the CPU time others used, whatever the load average says: the
        # run's own threads raise the load, and it trails the minute before.
        (2, 0.1, [4.5], 1.9, False),
        # Without /proc/stat: the load above what the run used itself, against half the cores.
        (2, None, [2.3, 4.2], 1.0, True),
        (2, None, [2.3, 1.9], 1.8, False),
        (4, None, None, None, False),  # nothing measured: nothing to mark
    ],
)
def test_the_rule_on_recorded_numbers(cores, other, loads, own, expected):
    assert contention.is_contended(cores, other, loads, own) is expected


@pytest.fixture
def cpu_burner():
    """Processes spinning on every usable core for at most 3 minutes; always killed after."""
    spin = "import time\nend = time.monotonic() + 180\nwhile time.monotonic() < end: pass\n"
    burners = [
        subprocess.Popen([sys.executable, "-c", spin]) for _ in range(contention.usable_cores())
    ]
    try:
        time.sleep(0.5)  # let them start spinning
        yield burners
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait(timeout=30)


@pytest.mark.once
def test_the_monitor_sees_a_burner_on_every_core(cpu_burner):
    monitor = contention.LoadMonitor()
    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # this process competes too, as a training run would
        pass
    sample = monitor.sample()
    summary = monitor.summary()
    assert sample["other_cpu_cores"] > contention.CONTENDED_SHARE * monitor.cores, sample
    assert summary["contended"] is True and summary["cpu_cores"] == monitor.cores
    assert summary["load_average"]["start"] is not None
    assert summary["load_average"]["epochs"] == [sample["load_average"]]


def _metrics_row(table: str, run) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {run} |"))


@pytest.mark.slow
@pytest.mark.once
def test_training_beside_a_cpu_burner_is_marked_not_comparable(tmp_path, cpu_burner):
    from alexnet_k3.training import train

    out = tmp_path / "busy"
    metrics = train(out, epochs=1, batch_size=256, validation_split=0.0, verbose=0)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["contended"] is True, saved
    assert saved["cpu_cores"] == contention.usable_cores()
    assert saved["other_cpu_cores"] > contention.CONTENDED_SHARE * saved["cpu_cores"]
    assert len(saved["load_average"]["epochs"]) == 1
    report = (out / "report.md").read_text()
    assert f"| images_per_second | {metrics['images_per_second']:.1f}* |" in report
    assert f"| train_seconds | {metrics['train_seconds']:.1f}* |" in report
    assert contention.NOTE in report and "| contended | yes |" in report

    # The same run as if measured on an idle machine: no mark, no note.
    idle = tmp_path / "idle"
    idle.mkdir()
    quiet = {**saved, "other_cpu_cores": 0.02, "contended": False}
    (idle / "metrics.json").write_text(json.dumps(quiet))
    table = compare_runs([out, idle])
    busy_row, idle_row = _metrics_row(table, out), _metrics_row(table, idle)
    assert f"| {saved['images_per_second']:.1f}* |" in busy_row
    assert f"| {saved['train_seconds']:.1f}* |" in busy_row
    assert "*" not in idle_row and contention.NOTE in table
    assert contention.NOTE not in compare_runs([idle])
    unmarked = _report_markdown(quiet, None, [])
    assert "*" not in unmarked and contention.NOTE not in unmarked
    assert "| contended | no |" in unmarked
