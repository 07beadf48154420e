"""Writing files so that a kill at any instant leaves the old file or the new one, never half.

Each file is written under a temporary name in the same folder, flushed, and
renamed over the target: `os.replace` is atomic on POSIX and Windows.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save(save, path: Path) -> None:
    """Calls `save(tmp_path)` then renames the result to `path`.

    The temporary name keeps the real suffix (`.keras`, `.weights.h5`), which
    Keras's savers require; if `save` fails, the partial file is removed and
    `path` keeps its previous content.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
