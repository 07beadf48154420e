"""Whether other processes competed for this run's CPU cores (Keras-free).

A speed figure measured while other processes used the same cores says more
about the machine's load than about the backend: torch's thread pool, for one,
slows down far more than the others when its cores are oversubscribed. Each
run therefore records the conditions it was timed under, and the reports mark
its images/s and train time when they were contended.

The rule. The 1-minute load average is recorded (start, end, each epoch) for
people to read, but it cannot decide alone: the run itself keeps up to every
core busy, and the average trails the last minute (a run started right after
another carries that one's load for a while). What decides is the CPU time
that *other* processes took on the run's cores while it trained: the busy time
of those cores (from /proc/stat, steal time included) minus this process's own
CPU time, divided by the wall time. A run is **contended** when others used
more than a quarter of its cores on average (`CONTENDED_SHARE`): a CPU burner
on every core takes about half of them, an idle machine next to nothing.
Where /proc/stat is missing (not Linux), the load average above what the run
itself used stands in: contended when it exceeds half the cores.
"""

from __future__ import annotations

import os
import time

CONTENDED_SHARE = 0.25
_LOAD_SHARE_FALLBACK = 0.5
MARK = "*"
NOTE = (
    "measured while other processes competed for the CPU cores "
    "(`contended` in metrics.json): not comparable with other runs"
)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _busy_seconds(cpus: set[int] | None) -> float | None:
    """Seconds the cores in `cpus` (all if None) spent busy since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal: all but idle and iowait
        numbers = [int(v) for v in values[:8]]
        busy += sum(numbers) - numbers[3] - numbers[4]
    return busy / tick


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


def is_contended(
    cores: int,
    other_cpu_cores: float | None = None,
    load_averages: list[float] | None = None,
    own_cpu_cores: float | None = None,
) -> bool:
    """The rule (see the module's docstring) on recorded numbers.

    Args:
        cores: the run's usable cores.
        other_cpu_cores: the cores other processes kept busy on average while
            the run trained; decides when known.
        load_averages: 1-minute load averages sampled during the run (the
            fallback, with `own_cpu_cores`, the cores the run kept busy itself).

    Example:
        >>> is_contended(2, other_cpu_cores=1.1)
        True
        >>> is_contended(2, other_cpu_cores=0.1)
        False
    """
    if other_cpu_cores is not None:
        return other_cpu_cores > CONTENDED_SHARE * cores
    if load_averages:
        return max(load_averages) - (own_cpu_cores or 0.0) > _LOAD_SHARE_FALLBACK * cores
    return False


class LoadMonitor:
    """Watches the machine while a run trains; `summary()` is what metrics.json records.

    Example:
        >>> monitor = LoadMonitor()
        >>> ...  # train, calling monitor.sample() after each epoch
        >>> metrics.update(monitor.summary())
    """

    def __init__(self):
        self.cores = usable_cores()
        self._cpus = _cpus()
        self._start = self._snapshot()
        self._last = self._start
        self.load_start = _load1()
        self.samples: list[dict] = []

    def _snapshot(self):
        return time.monotonic(), _own_seconds(), _busy_seconds(self._cpus)

    @staticmethod
    def _usage(first, last):
        seconds = last[0] - first[0]
        if seconds <= 0:
            return None, None
        own = (last[1] - first[1]) / seconds
        if first[2] is None or last[2] is None:
            return round(own, 2), None
        # Busy time is counted in clock ticks: never below zero from rounding.
        other = max((last[2] - first[2]) / seconds - own, 0.0)
        return round(own, 2), round(other, 2)

    def sample(self) -> dict:
        """Records the load average and the cores used since the last sample; returns it."""
        now = self._snapshot()
        own, other = self._usage(self._last, now)
        self._last = now
        record = {"load_average": _load1(), "own_cpu_cores": own, "other_cpu_cores": other}
        self.samples.append(record)
        return record

    def summary(self) -> dict:
        """`cpu_cores`, `load_average` (start, end, per epoch), the cores used, `contended`."""
        own, other = self._usage(self._start, self._last)
        loads = [s["load_average"] for s in self.samples if s["load_average"] is not None]
        return {
            "cpu_cores": self.cores,
            "load_average": {
                "start": self.load_start,
                "end": _load1(),
                "epochs": [s["load_average"] for s in self.samples],
            },
            "own_cpu_cores": own,
            "other_cpu_cores": other,
            "contended": is_contended(self.cores, other, loads, own),
        }


def contended(metrics: dict) -> bool:
    """Whether a run's metrics say its speed was measured under contention."""
    return metrics.get("contended") is True


def marked(text: str, metrics: dict) -> str:
    """`text` (a speed figure) with `MARK` when `metrics` were measured under contention."""
    return f"{text}{MARK}" if contended(metrics) and text != "-" else text


def footnote(any_contended: bool) -> list[str]:
    """The markdown footnote lines for a table holding a marked figure (or none)."""
    # Escaped: a line that starts with "* " is a list item in markdown.
    return ["", f"\\{MARK} {NOTE}."] if any_contended else []
