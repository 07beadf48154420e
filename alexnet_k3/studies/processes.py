"""What a study does outside Python: its runs' processes and the ImageNet checkpoints' files.

Keras-free: the parent of a study never imports a backend.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from alexnet_k3 import downloads
from alexnet_k3.core import IMAGENET_CHECKPOINTS

_ERROR_LINE = re.compile(r"^alexnet-k3 \w+: error: ")


def run_process(command: list[str]) -> tuple[int, str | None]:
    """Runs `command` with its output shown; returns its exit code and last error line.

    Its standard output is this process's (Keras draws its progress bar on a
    terminal, one line per epoch elsewhere); its standard error is passed through
    line by line and its last error line kept. It dies with this process.
    """
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    tail = collections.deque(maxlen=50)

    def relay():
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = process.wait()
    except BaseException:  # Ctrl-C: stop the run (it resumes next time), then stop
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        process.kill()
        raise
    reader.join(timeout=5)
    return code, _error_line(list(tail))


def _error_line(lines: list[str]) -> str | None:
    """The command's own error line, else the last line of a traceback or of the output."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return _ERROR_LINE.sub("", line)
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the study's process dies, however that dies, so a
    killed study leaves no run writing on; the next study resumes that run."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def find_imagenet_weights(arch: str, weights_dir: Path | None) -> tuple[Path | None, str]:
    """torchvision's ImageNet checkpoint of `arch` on this machine, downloaded if need be.

    Looks in `weights_dir`, then in torch hub's cache (`$TORCH_HOME/hub/checkpoints`),
    then downloads it there (SHA-256 checked). A copy found on disk is used as it is,
    as `--weights PATH` would be; the note then says whether it is torchvision's file.

    Returns:
        (path, note): the file and a note on it, or (None, why it is unavailable and
        where to put a copy).
    """
    url, prefix = IMAGENET_CHECKPOINTS[arch]
    name = url.rsplit("/", 1)[-1]
    hub = torch_hub_checkpoints()
    places = ([weights_dir] if weights_dir else []) + [hub]
    for folder in places:
        path = folder / name
        if path.is_file():
            digest = _sha256(path)
            if digest.startswith(prefix):
                return path, ""
            return path, (
                f"{path} is not torchvision's published {name} (its SHA-256 starts with "
                f"{digest[:8]}, not {prefix}); the runs use it as it is."
            )
    try:
        downloads.download(url, hub / name, hash_name="sha256", expected=prefix)
    except downloads.DownloadError as error:
        where = " or ".join(f"'{p}'" for p in places)
        return None, (
            f"skipped: weights unavailable: {name} is not in {where} and could not be "
            f"downloaded ({error}). Put a copy in '{hub}' ($TORCH_HOME/hub/checkpoints) or "
            "in a folder given as --weights-dir, then run the study again."
        )
    return hub / name, ""


def torch_hub_checkpoints() -> Path:
    """`torch.hub.get_dir()/checkpoints` without importing torch: $TORCH_HOME/hub/checkpoints."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
