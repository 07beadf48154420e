"""What machine a benchmark ran on, read without importing any framework.

The parent gathers this once per run and every record carries it (`metadata`),
so rows of one run say the same thing about the machine; what each framework
sees of the GPU (its CUDA and cuDNN builds) is per record, in `versions`.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

from alexnet_k3.core import cpu_name

# What nvidia-smi reports per GPU, in this order (`--query-gpu` field names).
GPU_FIELDS = (
    "name",
    "memory.total",
    "driver_version",
    "pci.bus_id",
    "power.limit",
    "power.max_limit",
    "clocks.max.sm",
    "clocks.max.memory",
    "persistence_mode",
)


def detect_device() -> str:
    """ "gpu" when nvidia-smi lists a GPU, else "cpu"."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "cpu"
    listing = _run([smi, "-L"])
    return "gpu" if listing is not None and "GPU" in listing else "cpu"


def metadata(device: str) -> dict:
    """The host (CPU, cores, memory, OS, Python) and, on a GPU run, nvidia-smi's view.

    Example:
        >>> sorted(metadata("cpu"))[:3]
        ['cpu', 'cpu_count', 'gpus']
    """
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpus": gpus() if device == "gpu" else [],
    }
    return info


def gpus() -> list[dict]:
    """One dict per GPU nvidia-smi lists (`GPU_FIELDS`, and the CUDA version the driver
    supports), or [] without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    query = [smi, f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader"]
    listing = _run(query)
    if listing is None:
        return []
    header = _run([smi]) or ""
    cuda = next(
        (part.split(":", 1)[1].strip().split()[0] for part in header.split("|") if "CUDA" in part),
        None,
    )
    found = []
    for line in listing.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        found.append({**dict(zip(GPU_FIELDS, values)), "driver_cuda": cuda})
    return found


def device_slug(info: dict, device: str) -> str:
    """A file-name word for the machine: the GPU model ("nvidia-h200") or "cpu-<N>core".

    Example:
        >>> device_slug({"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}, "gpu")
        'nvidia-h100-80gb-hbm3'
    """
    if device == "gpu" and info.get("gpus"):
        name = info["gpus"][0].get("name") or "gpu"
        return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())
    return f"cpu-{info.get('cpus_usable') or info.get('cpu_count')}core"


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _run(command: list[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None
