"""Image files to uint8 RGB squares, with Pillow, on every core, straight into a memmap.

`decode_image` turns one file into a `(size, size, 3)` uint8 array: the shorter side
resized to `size` and the centre square kept (torchvision's `Resize` + `CenterCrop`),
after the EXIF orientation is applied and any mode is made 8-bit RGB. `decode_into`
decodes many files into the rows of a `.npy` file opened as a memmap, so no more than
one image per worker is ever held in memory.

Threads, not processes: Pillow releases the GIL while it decodes and resizes, so
threads keep most of the processes' speed-up (on the 2-core AMD EPYC, two threads
1.85x one and two processes 2.2x, `benchmarks/results/decode-cpu-2core-amd-epyc-
threads-vs-processes.md`; 1.9x and 2.15x in `decode-cpu-2core.md`), and they
cannot hang: spawned processes re-run the caller's `__main__`, so a script calling
`train(dataset="folder")` without an `if __name__ == "__main__":` guard waited
forever for workers that had died re-running it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings

import numpy as np

from alexnet_k3.datasets.base import DatasetError

# Transparent pixels are shown on white, as image viewers and browsers show them.
ALPHA_BACKGROUND = (255, 255, 255)
# No file has been finished for this long: a worker is stuck (a decoder that never
# returns), and the decode stops with an error naming the files in progress. Pillow's
# decompression-bomb limit keeps a sound image far below it.
STALL_SECONDS = 600.0
_CHUNK = 8  # files per claim: few enough to share out evenly, enough to amortize the claims


def decode_image(path, size: int) -> np.ndarray:
    """One image file as a uint8 `(size, size, 3)` RGB array.

    JPEG, PNG, BMP, GIF (first frame), WebP and TIFF; the EXIF orientation is applied;
    grey, palette, CMYK, 16-bit and alpha images become 8-bit RGB (alpha composited
    on `ALPHA_BACKGROUND`). Then the shorter side is resized to `size` (bilinear,
    antialiased) and the centre `size` x `size` square kept.

    Args:
        path: the image file.
        size: the side of the square returned.

    Raises:
        Whatever Pillow raises for a file it cannot read (OSError for a truncated or
        unknown file, ValueError, SyntaxError, Image.DecompressionBombError...).

    Example:
        >>> decode_image("photos/cat/1.jpg", 256).shape
        (256, 256, 3)
    """
    return _decode_image(path, size)[0]


def _decode_image(path, size: int):
    """`decode_image`'s array, and the file's `(width, height)` as stored."""
    from PIL import Image, ImageOps

    image, stored = _open_rgb(path, draft=size)
    image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8), stored


def read_image(path) -> np.ndarray:
    """One image file at its full size as a uint8 `(H, W, 3)` RGB array.

    The formats, EXIF orientation and mode conversions of `decode_image`, without
    resizing: what torchvision's transforms receive from `PIL.Image.open(path)`
    converted to RGB. Raises what Pillow raises for a file it cannot read.
    """
    return np.asarray(_open_rgb(path)[0], dtype=np.uint8)


def _open_rgb(path, draft: int | None = None):
    """The decoded, upright, 8-bit RGB Pillow image of the file at `path`, and its
    `(width, height)` as stored (before any draft scaling)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        stored = image.size
        if draft is not None and image.format == "JPEG":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 when the result still covers
            # `draft`; 2-4x faster for photos much larger than the cache size.
            image.draft(image.mode, (draft, draft))
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image), stored


def to_rgb(image):
    """A Pillow image in any mode as 8-bit RGB (see `decode_image`)."""
    from PIL import Image

    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Pillow's own convert("L") clips 16-bit values at 255 rather than scaling
        # them: a 16-bit grey image would come out almost white.
        values = np.asarray(image, dtype=np.float64)
        if mode == "F" and values.max(initial=0.0) <= 1.0:
            values = values * 255.0  # float images hold 0..1
        elif mode != "F":
            values = values / 257.0  # 0..65535 -> 0..255
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK (inverted Adobe JPEGs included: Pillow undoes that), grey, palette, YCbCr...
    return image.convert("RGB") if mode != "RGB" else image


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class DecodeError(DatasetError):
    """A decoding worker stopped or stalled: the decode produced nothing usable."""


def decode_into(npy_path, files, size: int, *, workers: int | None = None, label="") -> list:
    """Decodes `files` into rows `0..len(files)-1` of the `.npy` memmap at `npy_path`.

    The array must exist, shaped `(len(files), size, size, 3)` uint8 (e.g. made with
    `np.lib.format.open_memmap`). Rows of files that fail to decode stay zero.

    `workers` threads each claim the next chunk of files and write its rows
    themselves; this thread waits, in steps of 0.2 s, redrawing the progress bar.
    Images larger than Pillow's decompression-bomb warning limit are decoded and
    named in one warning at the end (Pillow's own warning names no file).

    Args:
        npy_path: the `.npy` file to write into.
        files: image paths, one per row.
        size: the side of each row's square.
        workers: threads decoding (default: one per core; at most one per chunk of
            8 files).
        label: what the progress bar calls the images.

    Returns:
        `(row, "Type: message")` for every file that could not be decoded.

    Raises:
        DecodeError: a worker stopped on something other than a bad file (it names
            the file it was decoding), or no file was finished for `STALL_SECONDS`.

    Example:
        >>> decode_into("x.npy", ["a.jpg", "b.png"], 32, workers=1)
        []
    """
    from PIL import Image

    files = [str(f) for f in files]
    n_chunks = -(-len(files) // _CHUNK)
    workers = max(1, min(workers or default_workers(), n_chunks))
    progress = _Progress(len(files), label, workers)
    out = np.load(npy_path, mmap_mode="r+")
    # Shared by the workers, under `lock`: the next chunk, files done, the results.
    state = {"next": 0, "done": 0, "failures": [], "large": [], "stopped": None}
    lock = threading.Lock()
    current: dict[int, str] = {}  # worker -> the file it is decoding

    def work(worker: int, out: np.ndarray) -> None:
        try:
            while True:
                with lock:
                    chunk, state["next"] = state["next"], state["next"] + 1
                if chunk >= n_chunks or state["stopped"] is not None:
                    return
                for row in range(chunk * _CHUNK, min((chunk + 1) * _CHUNK, len(files))):
                    current[worker] = files[row]
                    failure, large = _decode_row(out, files, row, size)
                    with lock:
                        state["done"] += 1
                        if failure is not None:
                            state["failures"].append(failure)
                        if large is not None:
                            state["large"].append(large)
                current.pop(worker, None)
        except BaseException as error:  # not a bad file: decoding itself broke
            with lock:
                state["stopped"] = state["stopped"] or (current.get(worker, "?"), error)

    # Daemon threads: one stuck in a decoder cannot keep the interpreter from exiting.
    threads = [threading.Thread(target=work, args=(i, out), daemon=True) for i in range(workers)]
    with warnings.catch_warnings():
        # Pillow's warning names no file; the large images are named below instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for thread in threads:
            thread.start()
        try:
            _wait(threads, state, current, lock, progress)
        finally:  # also on Ctrl-C: the workers stop at their next chunk
            with lock:
                state["stopped"] = state["stopped"] or ("", None)
            deadline = time.monotonic() + 10.0  # a worker finishes its file, or is left
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
    del out  # this thread's view; a worker still stuck keeps its own
    path, error = state["stopped"]
    if path:
        progress.close()
        if error is None:
            raise DecodeError(
                f"Decoding stalled: no image finished in {STALL_SECONDS:.0f} s, while "
                f"decoding {path}. Check that file (open it in an image viewer), remove it "
                "or move it out of the folder, and run again."
            )
        raise DecodeError(
            f"Decoding stopped at {path}: {type(error).__name__}: {error}. Nothing was "
            "cached; run again, or remove or move that file if it stops there again."
        ) from error
    progress.show(len(files))
    progress.close()
    if state["large"]:
        limit = Image.MAX_IMAGE_PIXELS
        shown = ", ".join(f"{p} ({w}x{h})" for p, (w, h) in sorted(state["large"])[:5])
        more = len(state["large"]) - 5
        print(
            f"warning: {len(state['large'])} image(s) exceed Pillow's decompression-bomb "
            f"warning limit of {limit:,} pixels (each decoded, using that much memory for "
            f"a moment): {shown}{f', and {more} more' if more > 0 else ''}.",
            file=sys.stderr,
        )
    return sorted(state["failures"])


def _wait(threads, state: dict, current: dict, lock, progress) -> None:
    """Waits for the workers in steps of 0.2 s, redrawing the progress bar; returns when
    they are done, one stopped, or none finished a file for `STALL_SECONDS`."""
    last_done, last_time = 0, time.monotonic()
    alive = threads
    while alive and state["stopped"] is None:
        alive[0].join(0.2)
        progress.show(state["done"])
        now = time.monotonic()
        if state["done"] != last_done:
            last_done, last_time = state["done"], now
        elif now - last_time > STALL_SECONDS:
            stuck = ", ".join(sorted(set(dict(current).values()))) or "?"
            with lock:
                state["stopped"] = state["stopped"] or (stuck, None)
        alive = [thread for thread in threads if thread.is_alive()]


def _decode_row(out: np.ndarray, files, row: int, size: int):
    """Decodes `files[row]` into `out[row]`: `(failure or None, (path, size) of an image
    above Pillow's bomb warning limit, or None)`."""
    try:
        out[row], pixels = _decode_image(files[row], size)
    except Exception as error:  # any file Pillow cannot read is one bad file
        return (row, f"{type(error).__name__}: {error}"), None
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    large = limit is not None and pixels[0] * pixels[1] > limit
    return None, ((files[row], pixels) if large else None)


class _Progress:
    """`decoding 1200/5000 images (410 images/s)` on stderr: redrawn on a terminal,
    else one line at the end."""

    def __init__(self, total: int, label: str, workers: int):
        self.total, self.done, self.label, self.workers = total, 0, label, workers
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def _line(self) -> str:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        return (
            f"decoding {self.label}: {self.done}/{self.total} images "
            f"({self.done / seconds:.0f} images/s, {self.workers} "
            f"worker{'s' if self.workers > 1 else ''})"
        )

    def show(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if self.tty and now - self.last > 0.2:
            self.last = now
            print("\r" + self._line(), end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(("\r" if self.tty else "") + self._line(), file=sys.stderr, flush=True)
