"""Image files to uint8 RGB squares, with Pillow, on every core, straight into a memmap.

`decode_image` turns one file into a `(size, size, 3)` uint8 array: the shorter side
resized to `size` and the centre square kept (torchvision's `Resize` + `CenterCrop`),
after the EXIF orientation is applied and any mode is made 8-bit RGB. `decode_into`
decodes many files into the rows of a `.npy` file opened as a memmap, in worker
processes that write their rows themselves, so neither the parent nor a pipe ever
holds more than a chunk of pixels.

Processes, not threads: Pillow's decoders release the GIL, but EXIF parsing, mode
conversion and numpy's copies hold it, and processes share none of that. Measured on
the idle 2-core machine (4,000 JPEGs to 256x256): two processes 2.15x one, two
threads 1.9x (`benchmarks/decode_speed.py`, `benchmarks/results/decode-cpu-2core.md`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import sys
import time

import numpy as np

# Transparent pixels are shown on white, as image viewers and browsers show them.
ALPHA_BACKGROUND = (255, 255, 255)
# Below this many files the workers' start-up (about 0.3 s each) outweighs their help.
MIN_FILES_PER_WORKER = 32
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
    from PIL import Image, ImageOps

    image = _open_rgb(path, draft=size)
    image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_image(path) -> np.ndarray:
    """One image file at its full size as a uint8 `(H, W, 3)` RGB array.

    The formats, EXIF orientation and mode conversions of `decode_image`, without
    resizing: what torchvision's transforms receive from `PIL.Image.open(path)`
    converted to RGB. Raises what Pillow raises for a file it cannot read.
    """
    return np.asarray(_open_rgb(path), dtype=np.uint8)


def _open_rgb(path, draft: int | None = None):
    """The decoded, upright, 8-bit RGB Pillow image of the file at `path`."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        if draft is not None and image.format == "JPEG":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 when the result still covers
            # `draft`; 2-4x faster for photos much larger than the cache size.
            image.draft(image.mode, (draft, draft))
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)


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


def decode_into(npy_path, files, size: int, *, workers: int | None = None, label="") -> list:
    """Decodes `files` into rows `0..len(files)-1` of the `.npy` memmap at `npy_path`.

    The array must exist, shaped `(len(files), size, size, 3)` uint8 (e.g. made with
    `np.lib.format.open_memmap`). Rows of files that fail to decode stay zero.

    This process decodes too, from the first moment: the `workers - 1` others join
    as soon as they have started (about 0.3 s each, spent importing numpy and
    Pillow), each claiming the next chunk of files from a shared counter. A worker
    that dies leaves its chunk unreported, and this process decodes it again.

    Args:
        npy_path: the `.npy` file to write into.
        files: image paths, one per row.
        size: the side of each row's square.
        workers: processes decoding, this one included (default: every core; at most
            one per `MIN_FILES_PER_WORKER` files).
        label: what the progress bar calls the images.

    Returns:
        `(row, "Type: message")` for every file that could not be decoded.

    Example:
        >>> decode_into("x.npy", ["a.jpg", "b.png"], 32, workers=1)
        []
    """
    files = [str(f) for f in files]
    workers = workers or default_workers()
    workers = max(1, min(workers, len(files) // MIN_FILES_PER_WORKER))
    n_chunks = -(-len(files) // _CHUNK)
    progress = _Progress(len(files), label, workers)
    # spawn, not fork: the parent may run torch, jax or tensorflow threads, and a
    # forked copy of a process with threads can deadlock.
    context = multiprocessing.get_context("spawn")
    claimed, done = context.Value("q", 0), context.Value("q", 0)
    results = context.Queue()
    args = (str(npy_path), files, size, claimed, done, results)
    others = [context.Process(target=_work, args=args, daemon=True) for _ in range(workers - 1)]
    failures, reported = [], set()

    def collect(block: bool) -> None:
        with contextlib.suppress(queue.Empty):
            while len(reported) < n_chunks:
                chunk, chunk_failures = results.get(timeout=0.1) if block else results.get_nowait()
                reported.add(chunk)
                failures.extend(chunk_failures)
                block = False
        progress.show(done.value)

    try:
        for process in others:
            process.start()
        _work(*args, on_chunk=lambda: collect(False))
        while len(reported) < n_chunks and any(p.is_alive() for p in others):
            collect(True)
        collect(False)
        for chunk in sorted(set(range(n_chunks)) - reported):  # a worker died mid-chunk
            out = np.load(npy_path, mmap_mode="r+")
            failures.extend(_decode_chunk(out, files, chunk, size))
            del out
    finally:
        for process in others:
            if process.is_alive():  # only after an error: the others are done
                process.terminate()
            process.join()
    progress.show(len(files))
    progress.close()
    return sorted(failures)


def _work(npy_path, files, size, claimed, done, results, on_chunk=None) -> None:
    """Decodes chunks until none is left: the loop of every worker, this process's too."""
    n_chunks = -(-len(files) // _CHUNK)
    # Opened once per process. Never flushed: the rows are in the page cache, shared by
    # every mapping of the file, and `msync` after each chunk made each write wait for
    # the disk; the cache is fsync'ed once, before its index is written.
    out = np.load(npy_path, mmap_mode="r+")
    while True:
        with claimed.get_lock():
            chunk = claimed.value
            claimed.value += 1
        if chunk >= n_chunks:
            return
        chunk_failures = _decode_chunk(out, files, chunk, size)
        with done.get_lock():
            done.value += len(files[chunk * _CHUNK : (chunk + 1) * _CHUNK])
        results.put((chunk, chunk_failures))
        if on_chunk is not None:
            on_chunk()


def _decode_chunk(out: np.ndarray, files, chunk: int, size: int) -> list:
    """Decodes chunk number `chunk` of `files` into its rows of `out`."""
    failures = []
    for row in range(chunk * _CHUNK, min((chunk + 1) * _CHUNK, len(files))):
        try:
            out[row] = decode_image(files[row], size)
        except Exception as error:  # any file Pillow cannot read is one bad file
            failures.append((row, f"{type(error).__name__}: {error}"))
    return failures


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
