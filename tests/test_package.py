"""The package's shape: one-way imports, short modules, one backend module."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alexnet_k3"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict) -> set[str]:
    """Package modules `path` imports anywhere (function-level imports included)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y` inside `package`
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            # `from alexnet_k3 import backend` names a module; `from x import func` does not.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "alexnet_k3":
                found.add(name)
    return found


def _graph():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ re-exporting its own modules is not an edge back up.
    for name, edges in graph.items():
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    return graph


def test_no_import_cycle():
    graph = _graph()
    done, stack = set(), []

    def visit(node):
        if node in stack:
            cycle = stack[stack.index(node) :] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        stack.append(node)
        for edge in sorted(graph[node]):
            visit(edge)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


# Data flows one way: nothing imports a layer above its own.
LAYERS = [
    (
        "alexnet_k3.core",
        "alexnet_k3.config",
        "alexnet_k3.downloads",
        "alexnet_k3.launch",
        "alexnet_k3.contention",
        "alexnet_k3.quiet",
    ),
    ("alexnet_k3.backend", "alexnet_k3.datasets", "alexnet_k3.layers", "alexnet_k3.optimizers"),
    ("alexnet_k3.preprocessing", "alexnet_k3.weights", "alexnet_k3.builders"),
    ("alexnet_k3.model", "alexnet_k3.vgg", "alexnet_k3.torch_loop"),
    ("alexnet_k3.progress", "alexnet_k3.metrics"),
    ("alexnet_k3.convert", "alexnet_k3.callbacks", "alexnet_k3.report", "alexnet_k3.runs"),
    ("alexnet_k3.tracking",),
    ("alexnet_k3.studies.report",),
    ("alexnet_k3.studies",),
    ("alexnet_k3.evaluation", "alexnet_k3.prediction", "alexnet_k3.reference"),
    ("alexnet_k3.training",),
    ("alexnet_k3.commands",),
    ("alexnet_k3.cli",),
]


ENTRY_POINTS = ("alexnet_k3", "alexnet_k3.__main__")


def _layer(name: str) -> int:
    for index, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group):
            return index
    return -1


def test_imports_flow_one_way():
    graph = _graph()
    # The package's own __init__ (lazy, by name) and __main__ (the CLI) stand outside.
    unplaced = sorted(n for n in graph if _layer(n) < 0 and n not in ENTRY_POINTS)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"
    upward = [
        f"{name} imports {edge}"
        for name, edges in graph.items()
        for edge in edges
        if _layer(name) >= 0 and _layer(edge) > _layer(name)
    ]
    assert not upward, upward


def test_core_and_config_import_no_framework():
    for module in ("core", "config", "downloads", "launch", "contention", "quiet"):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for name in names:
                    root = name.split(".")[0]
                    assert root not in ("keras", "torch", "tensorflow", "jax", "numpy"), (
                        f"alexnet_k3/{module}.py imports {name}"
                    )
                    if root == "alexnet_k3":
                        assert name in ("alexnet_k3.core",), f"{module} imports {name}"


def test_only_the_backend_package_asks_which_backend_is_active():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("alexnet_k3.backend"):
            continue
        if "config.backend()" in path.read_text():
            offenders.append(name)
    assert not offenders, f"keras.config.backend() outside alexnet_k3.backend: {offenders}"


def test_no_module_is_too_long():
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


@pytest.mark.once
def test_the_fast_lane_leaves_out_the_slow_tests():
    # The README's `nox -s tests -- -m "not slow"`: the marker selects, it does not error.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "not slow",
            "tests/test_training.py",
        ],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    selected = [line for line in result.stdout.splitlines() if "::" in line]
    assert selected and not any("digits" in line or "killed" in line for line in selected)
    assert "deselected" in result.stdout
