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

from benchmarks import common


def merge_rounds(records: list[dict]) -> list[dict]:
    """One record per (impl, mode, batch): the round with the median images/s.

    With an even number of good rounds the slower middle one is kept. Failed
    rounds count only when every round failed. Each record lists all rounds'
    figures in `rounds_images_per_sec`.
    """
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["impl"], record["mode"], record["batch_size"]), []).append(record)
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
    """Adds `ratio_vs_<baseline>`: images/s over the baseline's at the same mode and batch."""
    for baseline in common.BASELINE_IMPLS:
        reference = {
            (r["mode"], r["batch_size"]): r["images_per_sec"]
            for r in records
            if r["impl"] == baseline and r.get("images_per_sec")
        }
        key = "ratio_vs_" + baseline.replace("-", "_")
        for record in records:
            base = reference.get((record["mode"], record["batch_size"]))
            value = record.get("images_per_sec")
            record[key] = value / base if value and base else None


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _order(record):
    order = (*common.BASELINE_IMPLS, *common.KERAS_IMPLS)
    impl_rank = order.index(record["impl"]) if record["impl"] in order else len(order)
    modes = (*common.MODES, common.E2E_MODE)
    return (modes.index(record["mode"]), record["batch_size"], impl_rank)


def format_table(records: list[dict], config: dict) -> str:
    """Markdown: one row per record with its ratios; end-to-end rows in a second table."""
    synthetic = sorted((r for r in records if r["mode"] != common.E2E_MODE), key=_order)
    e2e = sorted((r for r in records if r["mode"] == common.E2E_MODE), key=_order)
    devices = sorted({r["device"] for r in records if r.get("device")})
    lines = [
        f"AlexNet ({config['variant']}) {config['image_size']}x{config['image_size']}, "
        f"{config['precision']}, jit {config['jit']}, device {config['device']}"
        f" ({'; '.join(devices) or 'unknown'}), {config['steps']} steps after "
        f"{config['warmup']} warm-up"
        + (f", median of {config['rounds']} rounds" if config.get("rounds", 1) > 1 else ""),
        "",
        "| impl | mode | batch | images/s | step ms median | step ms p90 | compile s | jit "
        "| x torchvision-eager | x torchvision-compile | note |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in synthetic:
        lines.append(
            f"| {r['impl']} | {r['mode']} | {r['batch_size']} | {_fmt(r['images_per_sec'], '.1f')} "
            f"| {_fmt(r['step_ms_median'], '.1f')} | {_fmt(r['step_ms_p90'], '.1f')} "
            f"| {_fmt(r['compile_seconds'], '.1f')} | {_fmt(r.get('jit'), '')} "
            f"| {_fmt(r.get('ratio_vs_torchvision_eager'), '.2f')} "
            f"| {_fmt(r.get('ratio_vs_torchvision_compile'), '.2f')} | {r.get('error') or ''} |"
        )
    if e2e:
        lines += [
            "",
            "End to end: one real `fit` epoch, uint8 images through the on-device input "
            "pipeline, vs synthetic device-resident steps at the same settings",
            "",
            "| impl | batch | dataset | epoch images/s | synthetic images/s | e2e / synthetic "
            "| note |",
            "|---|---:|---|---:|---:|---:|---|",
        ]
        for r in e2e:
            lines.append(
                f"| {r['impl']} | {r['batch_size']} | {r.get('dataset') or '—'} "
                f"| {_fmt(r['images_per_sec'], '.1f')} "
                f"| {_fmt(r.get('synthetic_images_per_sec'), '.1f')} "
                f"| {_fmt(r.get('e2e_ratio'), '.0%')} | {r.get('error') or ''} |"
            )
    return "\n".join(lines)


def save(records: list[dict], table: str, out: Path) -> None:
    """Writes FILE.json (records), FILE.md (settings, versions, table) and FILE.png (chart)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2, default=str) + "\n")
    versions = {}
    for r in records:
        if r.get("versions"):
            versions[r["impl"]] = ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v)
    header = [f"# AlexNet throughput ({datetime.date.today().isoformat()})", ""]
    note = next((r.get("note") for r in records if r.get("note")), None)
    if note:
        header += [note, ""]
    header += [f"- {impl}: {text}" for impl, text in versions.items()] + [""]
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
    groups = list(dict.fromkeys((r["mode"], r["batch_size"]) for r in records))
    impls = list(dict.fromkeys(r["impl"] for r in records))
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(impls)) ** 0.5), 4.5))
    by_key = {(r["impl"], r["mode"], r["batch_size"]): r for r in records}
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
        f"AlexNet {first.get('image_size')}px {first.get('precision')} on "
        f"{first.get('device_type')} (labels: x torchvision-eager; end to end: % of synthetic)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_saved(path: Path, out: Path | None) -> int:
    """Prints the table of the run saved in `path`; rewrites its .md and .png (or `out`)."""
    records = json.loads(path.read_text())
    first = next((r for r in records if r["mode"] != common.E2E_MODE), records[0])
    config = {
        "variant": first.get("variant"),
        "image_size": first.get("image_size"),
        "precision": first.get("precision"),
        "jit": first.get("jit_requested"),
        "device": first.get("device_type"),
        "steps": first.get("steps"),
        "warmup": first.get("warmup"),
        "rounds": first.get("rounds") or 1,
    }
    add_ratios(records)
    table = format_table(records, config)
    print(table)
    save(records, table, out or path)
    return 0
