"""How fast image folders decode: 1 worker vs all, threads vs processes, and a cached start.

Writes `--images` JPEGs of 500x375 (random crops of scikit-learn's two sample photos,
`china.jpg` and `flower.jpg`, mirrored at random, quality 90) into two class folders
of a temporary folder, then times, each `--rounds` times in turn (median kept):

- decode, threads: `alexnet_k3.datasets.decode.decode_into` with 1 worker and with
  every core (what `load_folder` runs), into a memmap at `--size` (256: a 224 model's);
- decode, processes: the same files on a pool of spawned processes (their start-up
  included), each writing its rows into the memmap: the comparison that chose threads;
- cached start: `load_folder` on the same folder a second time (scan, index check,
  memmap open), after a first call that decoded it.

Usage:
    python benchmarks/decode_speed.py [--images 1000] [--size 256] [--rounds 3]
        [--out benchmarks/results/decode-cpu-2core] [--note "what else ran"]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from alexnet_k3.core import cpu_name
from alexnet_k3.datasets import decode, load_folder


def write_photos(root: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` 500x375 JPEGs cropped from the sample photos, in `root/<photo>/`."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        which = i % 2
        photo = sample.images[which]
        top = rng.integers(0, photo.shape[0] - 375 + 1)
        left = rng.integers(0, photo.shape[1] - 500 + 1)
        crop = photo[top : top + 375, left : left + 500]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        folder = root / ("china", "flower")[which]
        folder.mkdir(parents=True, exist_ok=True)
        files.append(folder / f"{i:05d}.jpg")
        Image.fromarray(np.ascontiguousarray(crop)).save(files[-1], quality=90)
    return files


# Files per task of the process pool: enough to amortize a task, few to share out evenly.
_ROWS = 32


def _decode_rows(npy: str, paths: list[str], size: int, rows) -> list:
    """Decodes `paths[row]` into row `row` of the memmap `npy`, in a pool's process."""
    out = np.load(npy, mmap_mode="r+")
    return [failure for row in rows if (failure := decode._decode_row(out, paths, row, size)[0])]


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (user + system)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _time_decode(files, size: int, workers: int, threads: bool, scratch: Path):
    """Images per second decoding `files` into a fresh memmap, and CPU ms per image.

    The CPU time tells a slow row on a busy machine (other jobs took the cores) from
    a slow decoder: it counts only what this process and its workers ran.
    """
    npy = scratch / "images.npy"
    np.lib.format.open_memmap(npy, "w+", np.uint8, (len(files), size, size, 3)).flush()
    cpu = _cpu_seconds()
    start = time.perf_counter()
    if threads:
        failures = decode.decode_into(npy, files, size, workers=workers)
    else:
        paths = [str(f) for f in files]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = [range(i, min(i + _ROWS, len(paths))) for i in range(0, len(paths), _ROWS)]
            jobs = [pool.submit(_decode_rows, str(npy), paths, size, part) for part in parts]
            failures = [f for job in jobs for f in job.result()]
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    assert not failures, failures
    npy.unlink()
    return len(files) / seconds, 1000 * cpu / len(files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="JPEGs to decode (default 1000)")
    parser.add_argument("--size", type=int, default=256, help="cache side (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--note", help="a sentence for the record (e.g. what else ran)")
    args = parser.parse_args(argv)
    cores = decode.default_workers()
    # Each worker gets at least one share of the files, so every row starts all it asks for.
    assert args.images >= cores * _ROWS, f"--images {cores * _ROWS} at least"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_photos(tmp / "photos", args.images)
        rows = [("threads", 1), ("threads", cores), ("processes", 1), ("processes", cores)]
        rates = {row: [] for row in rows}
        cpu_ms = {row: [] for row in rows}
        for _ in range(args.rounds):
            for kind, workers in rows:
                rate, ms = _time_decode(files, args.size, workers, kind == "threads", tmp)
                rates[(kind, workers)].append(rate)
                cpu_ms[(kind, workers)].append(ms)
        cache = tmp / "cache"
        start = time.perf_counter()
        load_folder(tmp / "photos", args.size, cache_dir=cache)
        first = time.perf_counter() - start
        cached = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            load_folder(tmp / "photos", args.size, cache_dir=cache)
            cached.append(time.perf_counter() - start)
    median = {row: statistics.median(r) for row, r in rates.items()}
    record = {
        "images": args.images,
        "image_size": "500x375 JPEG, quality 90",
        "cache_size": args.size,
        "rounds": args.rounds,
        "cores": cores,
        "cpu": cpu_name(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "pillow": __import__("PIL").__version__,
        "numpy": np.__version__,
        "rows": [
            {
                "kind": kind,
                "workers": workers,
                "images_per_sec": round(median[(kind, workers)], 1),
                "speedup_vs_1": round(median[(kind, workers)] / median[(kind, 1)], 2),
                "images_per_sec_rounds": [round(r, 1) for r in rates[(kind, workers)]],
                "cpu_ms_per_image": round(statistics.median(cpu_ms[(kind, workers)]), 2),
            }
            for kind, workers in rows
        ],
        "first_load_seconds": round(first, 3),
        "cached_start_seconds": round(statistics.median(cached), 4),
        "cached_start_seconds_rounds": [round(c, 4) for c in cached],
    }
    if args.note:
        record["note"] = args.note
    table = _markdown(record)
    print(table)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(record, indent=1) + "\n")
        Path(f"{args.out}.md").write_text(table)
    return 0


def _markdown(r: dict) -> str:
    lines = [
        f"# Folder decoding: {r['images']} JPEGs ({r['image_size']}) to {r['cache_size']}x"
        f"{r['cache_size']}",
        "",
        f"{r['cpu']}, {r['cores']} cores; Python {r['python']}, Pillow {r['pillow']}, "
        f"numpy {r['numpy']}; median of {r['rounds']} rounds taken in turn; load average "
        f"(1/5/15 min) {r['load_average_before']} before, {r['load_average_after']} after.",
        "",
        "| decoding in | workers | images/s | x 1 worker | CPU ms per image |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['kind']} | {row['workers']} | {row['images_per_sec']} | "
            f"{row['speedup_vs_1']} | {row['cpu_ms_per_image']} |"
        )
    lines += [
        "",
        f"`load_folder` first call (scan, decode on every core, cache write): "
        f"{r['first_load_seconds']} s; second call, from the cache: "
        f"{r['cached_start_seconds']} s.",
        "",
    ]
    if r.get("note"):
        lines += [f"Note: {r['note']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
