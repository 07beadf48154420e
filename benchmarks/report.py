"""The benchmark's results: rounds merged, ratios to the baselines, the table, the files.

Framework-free like the rest of the parent: it reads records, never a framework.
`runner.main` calls these after its workers finish, and `--from-json` calls
`report_saved` to render a saved run again.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from alexnet_k3 import contention
from alexnet_k3.core import ARCH_TITLES, ARCHS, ARCHS_WITH_VARIANTS
from benchmarks import common, machine


def merge_rounds(records: list[dict]) -> list[dict]:
    """One record per (impl, mode, batch): the round with the median images/s.

    With an even number of good rounds the slower middle one is kept. Failed
    rounds count only when every round failed. Each record lists all rounds'
    figures in `rounds_images_per_sec`.
    """
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["impl"], record.get("arch"), *common.record_key(record))
        groups.setdefault(key, []).append(record)
    merged = []
    for group in groups.values():
        good = sorted(
            (r for r in group if r.get("images_per_sec")), key=lambda r: r["images_per_sec"]
        )
        chosen = dict(good[(len(good) - 1) // 2] if good else group[0])
        chosen["rounds"] = len(group)
        chosen["rounds_images_per_sec"] = [r.get("images_per_sec") for r in group]
        merged.append(chosen)
    return merged


def add_ratios(records: list[dict]) -> None:
    """Adds `ratio_vs_<baseline>`: images/s over the baseline's at the same network, mode,
    timing and batch (end-to-end rows have no baseline counterpart: None)."""
    for baseline in common.BASELINE_IMPLS:
        reference = {
            (r.get("arch"), *common.record_key(r)): r["images_per_sec"]
            for r in records
            if r["impl"] == baseline and r.get("images_per_sec")
        }
        key = "ratio_vs_" + baseline.replace("-", "_")
        for record in records:
            base = reference.get((record.get("arch"), *common.record_key(record)))
            value = record.get("images_per_sec")
            record[key] = value / base if value and base else None


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _order(record):
    order = (*common.BASELINE_IMPLS, *common.KERAS_IMPLS)
    impl_rank = order.index(record["impl"]) if record["impl"] in order else len(order)
    modes = (*common.MODES, common.E2E_MODE)
    timing = record.get("timing")
    timing_rank = common.TIMINGS.index(timing) if timing in common.TIMINGS else len(common.TIMINGS)
    arch = record.get("arch") or "alexnet"
    arch_rank = ARCHS.index(arch) if arch in ARCHS else len(ARCHS)
    return (modes.index(record["mode"]), timing_rank, record["batch_size"], arch_rank, impl_rank)


def format_table(records: list[dict], config: dict) -> str:
    """Markdown: one row per record with its ratios; end-to-end rows in a second table."""
    synthetic = sorted((r for r in records if r["mode"] != common.E2E_MODE), key=_order)
    e2e = sorted((r for r in records if r["mode"] == common.E2E_MODE), key=_order)
    devices = sorted({r["device"] for r in records if r.get("device")})
    settings = config.get("settings") or {}
    lines = [
        f"{networks(config)} {config['image_size']}x{config['image_size']}, "
        f"{config['precision']}, jit {config['jit']}, device {config['device']}"
        f" ({'; '.join(devices) or 'unknown'}), at least {config['steps']} steps"
        + (f" and {settings['min_seconds']:g} s" if settings.get("min_seconds") else "")
        + f" after {config['warmup']} warm-up"
        + (f", median of {config['rounds']} rounds" if config.get("rounds", 1) > 1 else "")
        + (", process-wide tuning off (--no-tune)" if settings.get("tune") is False else ""),
        "",
        "| impl | network | mode | timing | batch | images/s | step ms mean | step ms median "
        "| step ms p90 | compile s | jit | x torchvision-eager | x torchvision-compile | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in synthetic:
        lines.append(
            f"| {r['impl']} | {r.get('arch') or 'alexnet'} | {r['mode']} "
            f"| {r.get('timing') or '—'} | {r['batch_size']} "
            f"| {_speed(r)} | {_fmt(r.get('step_ms_mean'), '.1f')} "
            f"| {_fmt(r['step_ms_median'], '.1f')} | {_fmt(r['step_ms_p90'], '.1f')} "
            f"| {_fmt(r['compile_seconds'], '.1f')} | {_fmt(r.get('jit'), '')} "
            f"| {_fmt(r.get('ratio_vs_torchvision_eager'), '.2f')} "
            f"| {_fmt(r.get('ratio_vs_torchvision_compile'), '.2f')} | {r.get('error') or ''} |"
        )
    if e2e:
        lines += [
            "",
            "End to end: real `fit` epochs of uint8 images through the on-device input "
            "pipeline (augmentation on), steady epochs after the first; vs the same "
            "network's pipelined synthetic steps",
            "",
            "| impl | network | batch | dataset | images | steps timed | first epoch s "
            "| epoch images/s | synthetic images/s | e2e / synthetic | note |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in e2e:
            lines.append(
                f"| {r['impl']} | {r.get('arch') or 'alexnet'} | {r['batch_size']} "
                f"| {r.get('dataset') or '—'} "
                f"| {_fmt(r.get('epoch_images'), 'd')} | {_fmt(r.get('steps'), 'd')} "
                f"| {_fmt(r.get('first_epoch_seconds'), '.1f')} "
                f"| {_speed(r)} "
                f"| {_fmt(r.get('synthetic_images_per_sec'), '.1f')} "
                f"| {_fmt(r.get('e2e_ratio'), '.0%')} | {r.get('error') or ''} |"
            )
    lines += contention.footnote(any(contention.contended(r) for r in records))
    return "\n".join(lines)


def _speed(record: dict) -> str:
    """images/s, marked when other processes competed for the cores while it was measured."""
    return contention.marked(_fmt(record["images_per_sec"], ".1f"), record)


def networks(config: dict) -> str:
    """The networks a run measured, e.g. "AlexNet (torchvision) and VGG16"."""
    names = [
        f"{ARCH_TITLES[a]} ({config['variant']})" if a in ARCHS_WITH_VARIANTS else ARCH_TITLES[a]
        for a in config.get("archs") or ["alexnet"]
    ]
    return " and ".join(names)


def _titles(records: list[dict]) -> str:
    """The networks of `records` by name, e.g. "AlexNet and VGG16"."""
    archs = dict.fromkeys(r.get("arch") or "alexnet" for r in records)
    return " and ".join(ARCH_TITLES.get(a, a) for a in archs)


def settings_lines(records: list[dict]) -> list[str]:
    """The run's settings and machine blocks (one each: every record holds the same),
    and each implementation's process-wide settings as applied and probed."""
    first = next((r for r in records if r.get("settings")), {})
    lines = []
    for title, block in (("Settings", first.get("settings")), ("Machine", first.get("metadata"))):
        if block:
            lines += [f"{title}: " + ", ".join(f"{k} {v}" for k, v in block.items()), ""]
    applied = {}
    for r in records:
        if r["impl"] not in applied and not r.get("error"):
            applied[r["impl"]] = ", ".join(
                f"{k} {r.get(k)}" for k in PROCESS_KEYS if r.get(k) is not None
            )
    lines += [f"- {impl} ran with: {text}" for impl, text in applied.items()]
    return lines + [""] if applied else lines


# Per implementation: what its process ran under (applied, and for malloc, probed).
PROCESS_KEYS = (
    "keep_freed_memory",
    "freed_memory_kept",
    "cudnn_benchmark",
    "tf32_matmul",
    "tf32_conv",
    "head_dtype",
    "data_format",
)


def save(records: list[dict], table: str, out: Path) -> None:
    """Writes FILE.json (records), FILE.md (settings, versions, table) and FILE.png (chart)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2, default=str) + "\n")
    versions = {}
    for r in records:
        if r.get("versions"):
            versions[r["impl"]] = ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v)
    header = [f"# {_titles(records)} throughput ({datetime.date.today().isoformat()})", ""]
    note = next((r.get("note") for r in records if r.get("note")), None)
    if note:
        header += [note, ""]
    header += [f"- {impl}: {text}" for impl, text in versions.items()] + [""]
    header += settings_lines(records)
    out.with_suffix(".md").write_text("\n".join(header) + "\n" + table + "\n")
    chart = plot(records, out.with_suffix(".png"))
    print(
        f"[bench] wrote {out}, {out.with_suffix('.md')}"
        + (f", {chart}" if chart else " (no chart: matplotlib missing)"),
        file=sys.stderr,
    )


def plot(records: list[dict], path: Path) -> Path | None:
    """Grouped bars of images/s per (mode, batch), one bar per implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = sorted(records, key=_order)
    # The chart shows the pipelined figures (the table has both timings).
    records = [r for r in records if r.get("timing") in (None, "pipelined")]
    groups = list(dict.fromkeys((r["mode"], r["batch_size"]) for r in records))
    several = len({r.get("arch") for r in records}) > 1
    for r in records:  # one bar per implementation, and per network when there are several
        r["_label"] = f"{r['impl']} {r.get('arch')}" if several else r["impl"]
    impls = list(dict.fromkeys(r["_label"] for r in records))
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(impls)) ** 0.5), 4.5))
    by_key = {(r.pop("_label"), r["mode"], r["batch_size"]): r for r in records}
    top = max((r["images_per_sec"] or 0 for r in records), default=0) or 1.0
    for i, impl in enumerate(impls):
        xs, heights = [], []
        for g, (mode, batch) in enumerate(groups):
            r = by_key.get((impl, mode, batch))
            if r is None:
                continue
            x = g - 0.4 + width * (i + 0.5)
            value = r.get("images_per_sec") or 0.0
            xs.append(x)
            heights.append(value)
            if r.get("error"):
                label = "oom" if r["error"] == "oom" else r["error"].split(":")[0][:12]
                ax.text(x, top * 0.02, label, rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            if r.get("e2e_ratio"):
                label = f"{r['e2e_ratio']:.0%}\nof synth."
            elif r.get("ratio_vs_torchvision_eager"):
                label = f"{r['ratio_vs_torchvision_eager']:.2f}x"
            else:
                continue
            ax.text(x, value, label, ha="center", va="bottom", fontsize=7)
        ax.bar(xs, heights, width, label=impl)
    ax.set_xticks(range(len(groups)), [f"{m}\nbatch {b}" for m, b in groups])
    ax.set_ylabel("images / s")
    first = records[0] if records else {}
    ax.set_title(
        f"{_titles(records)} {first.get('image_size')}px {first.get('precision')} on "
        f"{first.get('device_type')}, pipelined (labels: x torchvision-eager; end to end: "
        "% of synthetic)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def saved_table(path: Path) -> tuple[list[dict], str]:
    """The records of the run saved in `path`, with their ratios, and its table."""
    records = json.loads(path.read_text())
    first = next((r for r in records if r["mode"] != common.E2E_MODE), records[0])
    config = {
        "archs": list(dict.fromkeys(r.get("arch") or "alexnet" for r in records)),
        "variant": next((r["variant"] for r in records if r.get("variant")), None),
        "image_size": first.get("image_size"),
        "precision": first.get("precision"),
        "jit": first.get("jit_requested"),
        "device": first.get("device_type"),
        "steps": first.get("steps"),
        "warmup": first.get("warmup"),
        "rounds": first.get("rounds") or 1,
        "settings": first.get("settings"),
    }
    add_ratios(records)
    return records, format_table(records, config)


def report_saved(path: Path, out: Path | None) -> int:
    """Prints the table of the run saved in `path`; rewrites its .md and .png (or `out`)."""
    records, table = saved_table(path)
    print(table)
    save(records, table, out or path)
    return 0


def refresh_readme(readme: Path, results: Path) -> None:
    """Replaces the table in `readme` between the markers naming `results` by its table.

    The block starts with `<!-- bench-table: PATH -->` and ends with
    `<!-- /bench-table -->`; PATH is `results` as written there, or its template
    with `{device}` for the machine's name (`benchmarks/results/{device}-bf16.json`),
    so the README shows the latest run of that kind. One command refreshes the
    README from a saved run, never an edit by hand.
    """
    text = readme.read_text()
    records, table = saved_table(results)
    names = [results.as_posix()]
    first = next((r for r in records if r.get("metadata")), None)
    if first is not None:
        slug = machine.device_slug(first["metadata"], first.get("device_type"))
        names.append(results.as_posix().replace(slug, "{device}"))
    end = "<!-- /bench-table -->"
    start = next((f"<!-- bench-table: {n} -->" for n in names if f": {n} -->" in text), None)
    if start is None:
        raise SystemExit(
            f"alexnet-k3 bench: error: {readme} has no '<!-- bench-table: {names[-1]} -->' "
            f"marker; add it (and '{end}' after it) where the table of {results} belongs."
        )
    before, rest = text.split(start, 1)
    if end not in rest:
        raise SystemExit(f"alexnet-k3 bench: error: {readme}: '{start}' has no '{end}' after it.")
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{table}\n{end}{after}")
    print(f"[bench] refreshed the table of {results} in {readme}", file=sys.stderr)
