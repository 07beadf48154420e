"""A study's plan: the runs of `alexnet-k3 study`, from a named preset or a TOML file (Keras-free).

A plan is a list of runs, each an ordinary run folder under the study's folder:

- `keras` runs: `alexnet-k3 train` with a set of train options on one backend;
- `torch-reference` runs: the same command with `implementation = "torch-reference"`,
  the plain PyTorch loop of the same variant, data, recipe and seed;
- `evaluate` runs: a Keras run's saved model tested under another backend.

A TOML plan holds study-wide train options, optional options for the runs
from scratch and for the transfer runs, and a list of runs:

    preset = "course"          # optional: start from a preset's runs and options
    cross_backend = true       # test each Keras run's model under the next backend

    [defaults]                 # every run
    dataset = "cifar10"
    batch_size = 64

    [scratch]                  # runs without `weights`
    epochs = 30

    [transfer]                 # runs with `weights`
    epochs = 10
    freeze_epochs = 2

    [[runs]]
    name = "scratch-cifar-torch"   # optional; made from the run's options when left out
    backend = "torch"              # one backend, or "all": one run per installed backend
    variant = "cifar"

A run's options are its own keys over its mode's table over `[defaults]`; with a
preset, the file's tables override the preset's and a run named as one of the
preset's runs changes that run. The whole plan is checked before anything runs:
every error names the plan, the run and the key.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alexnet_k3.config import TrainConfig
from alexnet_k3.core import ARCHS_WITH_VARIANTS, BACKENDS
from alexnet_k3.studies.presets import PRESETS

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

KINDS = ("keras", "torch-reference", "evaluate")
MODE_TABLES = ("scratch", "transfer")
TOP_LEVEL_KEYS = {"preset", "cross_backend", "defaults", *MODE_TABLES, "runs"}
# Keys of a run that are not train options.
RUN_KEYS = {"name", "backend"}
# Train options a plan may not set: the study chooses each run's folder and resumes it.
NOT_IN_PLANS = {"data_parallel", "devices"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
# Files the study itself writes in its folder, never a run's name.
RESERVED_NAMES = {"study.json", "study.md", "study.html", "mlruns.db", "mlruns-artifacts"}
TRAIN_OPTIONS = tuple(f for f in TrainConfig.__dataclass_fields__ if f not in NOT_IN_PLANS)


class PlanError(ValueError):
    """A plan that cannot run: the message names the plan, the run and the key."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study.

    Attributes:
        name: its folder under the study's folder.
        kind: "keras", "torch-reference" or "evaluate".
        backend: the Keras backend it runs on ("torch" for the torch reference).
        settings: the train options it was given (for an evaluate run: those of
            the run it evaluates); `config()` fills in the rest.
        source: an evaluate run's source run (its name).
    """

    name: str
    kind: str
    backend: str
    settings: dict = field(default_factory=dict)
    source: str | None = None

    def config(self) -> TrainConfig:
        """The full config `train` saves for this run (its `config.json`)."""
        return TrainConfig(**self.settings)

    @property
    def trains(self) -> bool:
        return self.kind != "evaluate"

    def describe(self) -> dict:
        """What the plan says of this run, for study.json and `--dry-run`."""
        config = self.config()
        return {
            "name": self.name,
            "kind": self.kind,
            "backend": self.backend,
            "source": self.source,
            "arch": config.arch,
            "variant": config.model_variant,
            "mode": config.mode,
            "dataset": config.dataset,
            "epochs": config.epochs,
            "settings": dict(self.settings),
        }


@dataclass(frozen=True)
class Plan:
    """A checked plan: its name (the preset's, or the TOML file's path) and its runs."""

    name: str
    runs: tuple[PlannedRun, ...]
    notes: str = ""

    def run(self, name: str) -> PlannedRun:
        return next(r for r in self.runs if r.name == name)

    def describe(self) -> dict:
        return {"name": self.name, "notes": self.notes, "runs": [r.describe() for r in self.runs]}

    def table(self) -> str:
        """The plan as a text table (`alexnet-k3 study --dry-run`)."""
        columns = ("name", "kind", "backend", "arch", "variant", "mode", "dataset", "epochs")
        rows = [
            [str(d[c]) if d[c] is not None else "-" for c in columns]
            for d in (r.describe() for r in self.runs)
        ]
        for row, run in zip(rows, self.runs):
            if run.source:
                row[0] += f" (model of {run.source})"
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(columns, widths)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
        return "\n".join(line.rstrip() for line in lines) + "\n"


def installed_backends() -> list[str]:
    """The Keras backends whose framework is installed, in `core.BACKENDS` order."""
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


# --- Reading and checking -------------------------------------------------------------


def load_plan(plan: str | Path | dict, *, backends: list[str] | None = None) -> Plan:
    """A checked `Plan` from a preset name, a TOML file's path or a dict of the TOML's shape.

    Args:
        plan: "demo", "course", a path to a `.toml` file, or a dict.
        backends: the installed backends (default: `installed_backends()`).

    Raises:
        PlanError: the plan cannot run; the message names the plan, run and key.
    """
    backends = installed_backends() if backends is None else list(backends)
    if isinstance(plan, dict):
        label, data = "the plan", plan
    elif str(plan) in PRESETS:
        label, data = f"plan {plan!r}", PRESETS[str(plan)]()
    else:
        label, data = str(plan), _read_toml(Path(plan))
    data = _with_preset(label, data)
    name = data.get("_name") or (str(plan) if not isinstance(plan, dict) else "plan")
    runs = _expand(label, data, backends)
    if not runs:
        raise PlanError(f"{label} has no runs: add [[runs]] tables, or name a preset.")
    return Plan(name=name, runs=tuple(runs), notes=str(data.get("notes", "")))


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise PlanError(
            f"plan {str(path)!r} is neither a preset ({', '.join(PRESETS)}) nor a TOML file: "
            "give a preset's name or the path of a plan file."
        )
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PlanError(f"{path} is not valid TOML: {error}. Fix the file.") from None


def _with_preset(label: str, data: dict) -> dict:
    """The file's plan laid over its `preset`'s (tables merged, runs merged by name)."""
    unknown = sorted(set(data) - TOP_LEVEL_KEYS - {"notes", "_name"})
    if unknown:
        raise PlanError(
            f"{label}: unknown key {unknown[0]!r} at the top level; expected some of "
            f"{', '.join(sorted(TOP_LEVEL_KEYS))}."
        )
    for table in ("defaults", *MODE_TABLES):
        if table in data and not isinstance(data[table], dict):
            raise PlanError(f"{label}: `{table}` must be a table of train options.")
    if "runs" in data and not (
        isinstance(data["runs"], list) and all(isinstance(r, dict) for r in data["runs"])
    ):
        raise PlanError(f"{label}: `runs` must be a list of tables ([[runs]]).")
    preset = data.get("preset")
    if preset is None:
        return data
    if preset not in PRESETS:
        raise PlanError(
            f"{label}: preset = {preset!r} is not a preset; expected one of {', '.join(PRESETS)}."
        )
    merged = PRESETS[preset]()
    for table in ("defaults", *MODE_TABLES):
        merged[table] = {**merged.get(table, {}), **data.get(table, {})}
    runs = list(merged["runs"])
    for run in data.get("runs", []):
        same = [i for i, r in enumerate(runs) if "name" in run and r.get("name") == run["name"]]
        if same:
            runs[same[0]] = {**runs[same[0]], **run}
        else:
            runs.append(run)
    merged["runs"] = runs
    if "cross_backend" in data:
        merged["cross_backend"] = data["cross_backend"]
    merged["_name"] = f"{preset} ({label})"
    return merged


def _expand(label: str, data: dict, backends: list[str]) -> list[PlannedRun]:
    for table in ("defaults", *MODE_TABLES):
        _check_options(label, f"[{table}]", data.get(table, {}))
    cross = data.get("cross_backend", False)
    if not isinstance(cross, bool):
        raise PlanError(f"{label}: cross_backend must be true or false, received {cross!r}.")
    runs: list[PlannedRun] = []
    for index, entry in enumerate(data.get("runs", [])):
        where = f"run {entry['name']!r}" if "name" in entry else f"run {index + 1}"
        _check_options(label, where, {k: v for k, v in entry.items() if k not in RUN_KEYS})
        runs += [
            _planned(label, where, data, entry, backend)
            for backend in _backends_of(label, where, entry, backends)
        ]
    if cross:
        runs += _cross_backend(runs, backends)
    seen = set()
    for run in runs:
        if run.name in seen:
            raise PlanError(f"{label}: two runs are named {run.name!r}; give each its own name.")
        seen.add(run.name)
    return runs


def _check_options(label: str, where: str, options: dict) -> None:
    for key in options:
        if key in NOT_IN_PLANS:
            raise PlanError(
                f"{label}: {where}: {key!r} cannot be set in a study plan (a study trains each "
                "run in one process); run `alexnet-k3 train` for that."
            )
        if key not in TRAIN_OPTIONS:
            raise PlanError(
                f"{label}: {where}: unknown key {key!r}; expected `name`, `backend` or a train "
                f"option ({', '.join(TRAIN_OPTIONS)})."
            )


def _backends_of(label: str, where: str, entry: dict, installed: list[str]) -> list[str]:
    reference = entry.get("implementation") == "torch-reference"
    asked = entry.get("backend", "torch" if reference else (installed[:1] or ["torch"])[0])
    if asked == "all":
        if reference:
            raise PlanError(
                f"{label}: {where}: backend = 'all' with implementation = 'torch-reference'; "
                "the reference is plain PyTorch: leave `backend` out."
            )
        if not installed:
            raise PlanError(f"{label}: {where}: backend = 'all' but no backend is installed.")
        chosen = installed
    elif asked not in BACKENDS:
        raise PlanError(
            f"{label}: {where}: backend = {asked!r}; expected one of "
            f"{', '.join(BACKENDS)} or 'all'."
        )
    elif reference and asked != "torch":
        raise PlanError(
            f"{label}: {where}: backend = {asked!r} with implementation = 'torch-reference'; "
            "the reference is plain PyTorch: leave `backend` out or set it to 'torch'."
        )
    else:
        chosen = [asked]
    missing = [b for b in chosen if b not in installed]
    if missing:
        raise PlanError(
            f"{label}: {where}: backend = {missing[0]!r} is not installed (installed: "
            f"{', '.join(installed) or 'none'}). Install it (`pip install "
            f"'alexnet-k3[{missing[0]}]'`) or change the run's backend."
        )
    return chosen


def _planned(label: str, where: str, data: dict, entry: dict, backend: str) -> PlannedRun:
    own = {k: v for k, v in entry.items() if k not in RUN_KEYS}
    mode = "transfer" if own.get("weights", data.get("defaults", {}).get("weights")) else "scratch"
    settings = {**data.get("defaults", {}), **data.get(mode, {}), **own}
    if settings.get("arch", "alexnet") not in ARCHS_WITH_VARIANTS:
        if "variant" in own:
            raise PlanError(
                f"{label}: {where}: variant = {own['variant']!r} with arch = "
                f"{settings['arch']!r}; variants are AlexNet's: remove `variant` from the run."
            )
        settings.pop("variant", None)  # inherited from a study-wide table
    kind = "torch-reference" if settings.get("implementation") == "torch-reference" else "keras"
    name = str(entry.get("name") or _default_name(settings, kind, backend))
    name = name.replace("{backend}", backend)
    if not _NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise PlanError(
            f"{label}: {where}: name {name!r} cannot be a folder name here: use letters, "
            "digits, '.', '_' and '-' (80 at most, not starting with '.' or '-'), and none of "
            f"{', '.join(sorted(RESERVED_NAMES))}."
        )
    try:
        config = TrainConfig(**settings)
        config.validate()
    except (TypeError, ValueError) as error:
        raise PlanError(f"{label}: run {name!r}: {error}") from None
    return PlannedRun(name=name, kind=kind, backend=backend, settings=settings)


def _default_name(settings: dict, kind: str, backend: str) -> str:
    """`scratch-cifar-torch`, `transfer-vgg16-jax`, `scratch-cifar-torch-reference`."""
    config = TrainConfig(**settings)
    label = config.model_variant or config.arch
    return f"{config.mode}-{label}-{'torch-reference' if kind == 'torch-reference' else backend}"


def _cross_backend(runs: list[PlannedRun], backends: list[str]) -> list[PlannedRun]:
    """Each Keras run's saved model, tested under the next installed backend."""
    if len(backends) < 2:
        return []
    evaluations = []
    for run in runs:
        if run.kind != "keras":
            continue
        other = backends[(backends.index(run.backend) + 1) % len(backends)]
        evaluations.append(
            PlannedRun(
                name=f"{run.name}-on-{other}",
                kind="evaluate",
                backend=other,
                settings=run.settings,
                source=run.name,
            )
        )
    return evaluations


def saved_difference(
    run: PlannedRun, saved: dict, canonical=lambda key, value: value
) -> str | None:
    """How a run folder's saved config.json differs from the plan's run, or None.

    `canonical(key, value)` maps a saved value to the plan's terms (a weights file
    the study resolved back to 'imagenet').
    """
    planned = asdict(run.config())
    for key in sorted(planned):
        # Runs saved before `implementation` existed were Keras runs.
        value = canonical(key, saved.get(key, "keras" if key == "implementation" else None))
        if value != planned[key]:
            return f"{key} is {value!r} in the run's config.json but {planned[key]!r} in the plan"
    return None
