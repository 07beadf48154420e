"""The study's paragraph: what its numbers say, in a few sentences, and nothing else."""

from __future__ import annotations

from alexnet_k3 import contention
from alexnet_k3.studies.report.records import num, pct, train_runs


def _points(difference: float) -> str:
    return f"{100 * abs(difference):.2f} points"


def _names(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def paragraph(study: dict) -> str:
    """A few sentences that state what the study's numbers say, and nothing else.

    Which train run was best and by how much over the next; how far apart the Keras
    runs from the same initial weights ended; the plain PyTorch reference against the
    Keras runs of its variant; how much of the best from-scratch accuracy the best
    transfer run reached, in what share of its training time; how many runs failed or
    were skipped. A comparison without data is left out.

    Example:
        >>> paragraph({"runs": []})
        'The study has no runs.'
    """
    records = study.get("runs") or []
    if not records:
        return "The study has no runs."
    sentences = []
    trained = train_runs(study)  # plan order, which the sentences keep
    ranked = sorted(trained, key=lambda r: -num(r["test_accuracy"]))
    if ranked:
        best = ranked[0]
        best_acc = num(best["test_accuracy"])
        if len(trained) == 1:
            sentences.append(
                f"{best['name']} reached {pct(best_acc)} test accuracy, "
                "the only train run with a result."
            )
        else:
            runner = ranked[1]
            margin = best_acc - num(runner["test_accuracy"])
            sentences.append(
                f"Of {len(trained)} train runs, {best['name']} reached the highest test accuracy, "
                f"{pct(best_acc)}, {_points(margin)} above the next, {runner['name']} "
                f"({pct(num(runner['test_accuracy']))})."
            )
    sentences += _same_start_sentences(trained)
    sentences += _cross_backend_sentences(trained)
    sentences += _reference_sentences(trained)
    sentences += _transfer_sentences(trained)
    sentences += _contention_sentences(records)
    sentences.append(_unfinished_sentence(records))
    return " ".join(sentences)


def _same_start_sentences(trained: list[dict]) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for record in trained:
        sha = record.get("initial_weights_sha256")
        if record.get("kind") == "keras" and isinstance(sha, str) and sha:
            groups.setdefault(sha, []).append(record)
    sentences = []
    for sha, group in groups.items():
        if len({r.get("backend") for r in group}) < 2:
            continue
        accuracies = [num(r["test_accuracy"]) for r in group]
        low, high = min(accuracies), max(accuracies)
        backends = _names([str(r.get("backend")) for r in group])
        sentences.append(
            f"From the same initial weights (sha256 {sha[:12]}), the Keras runs on {backends} "
            f"ended {_points(high - low)} apart ({pct(low)} to {pct(high)})."
        )
    return sentences


def _cross_backend_sentences(trained: list[dict]) -> list[str]:
    changes = []
    for record in trained:
        cross = record.get("cross_backend")
        if record.get("kind") != "keras" or not isinstance(cross, dict):
            continue
        own = num(record["test_accuracy"])
        changes += [abs(a - own) for a in map(num, cross.values()) if a is not None]
    if not changes:
        return []
    evaluations = "evaluation" if len(changes) == 1 else "evaluations"
    return [
        f"The Keras runs' saved models, evaluated under another backend ({len(changes)} "
        f"{evaluations}), differed from their own test accuracy by at most "
        f"{_points(max(changes))}."
    ]


def _reference_sentences(trained: list[dict]) -> list[str]:
    sentences = []
    for reference in (r for r in trained if r.get("kind") == "torch-reference"):
        same = ("arch", "variant", "mode", "dataset")
        keras_runs = [
            r
            for r in trained
            if r.get("kind") == "keras" and all(r.get(k) == reference.get(k) for k in same)
        ]
        if not keras_runs:
            continue
        accuracy = num(reference["test_accuracy"])
        mean = sum(num(r["test_accuracy"]) for r in keras_runs) / len(keras_runs)
        low = min(num(r["test_accuracy"]) for r in keras_runs)
        high = max(num(r["test_accuracy"]) for r in keras_runs)
        side = "above" if accuracy > mean else "below" if accuracy < mean else "equal to"
        difference = "" if side == "equal to" else f"{_points(accuracy - mean)} "
        spread = f"; they range from {pct(low)} to {pct(high)}" if len(keras_runs) > 1 else ""
        what = f"the mean of the {len(keras_runs)} Keras runs" if len(keras_runs) > 1 else ""
        what = what or f"the Keras run {keras_runs[0]['name']}"
        sentences.append(
            f"The plain PyTorch reference ({reference['name']}) reached {pct(accuracy)}, "
            f"{difference}{side} {what} of the same model ({pct(mean)}){spread}."
        )
    return sentences


def _transfer_sentences(trained: list[dict]) -> list[str]:
    sentences = []
    for dataset in dict.fromkeys(r.get("dataset") for r in trained):
        runs = [r for r in trained if r.get("dataset") == dataset]
        transfer = [r for r in runs if r.get("mode") == "transfer"]
        scratch = [r for r in runs if r.get("mode") == "scratch"]
        if not transfer or not scratch:
            continue
        best_t = max(transfer, key=lambda r: num(r["test_accuracy"]))
        best_s = max(scratch, key=lambda r: num(r["test_accuracy"]))
        acc_t, acc_s = num(best_t["test_accuracy"]), num(best_s["test_accuracy"])
        share = f"{100 * acc_t / acc_s:.0f}%" if acc_s > 0 else None
        sentence = (
            f"The best transfer run, {best_t['name']}, reached {pct(acc_t)}"
            + (f", {share} of" if share else " against")
            + f" the best from-scratch accuracy ({best_s['name']}, {pct(acc_s)})"
        )
        time_t, time_s = num(best_t.get("train_seconds")), num(best_s.get("train_seconds"))
        # A time measured while other processes used the cores compares nothing.
        busy = contention.contended(best_t) or contention.contended(best_s)
        if time_t is not None and time_s and not busy:
            sentence += (
                f", in {100 * time_t / time_s:.0f}% of its training time "
                f"({time_t:.1f} s against {time_s:.1f} s)"
            )
        sentences.append(sentence + ".")
    return sentences


def _contention_sentences(records: list[dict]) -> list[str]:
    busy = [r.get("name", "?") for r in records if contention.contended(r)]
    if not busy:
        return []
    return [
        f"The train time and images/s of {_names(busy)} ({contention.MARK}) were "
        "measured while other processes competed for the CPU cores: they are not comparable."
    ]


def _unfinished_sentence(records: list[dict]) -> str:
    failed = [r["name"] for r in records if r.get("status") == "failed"]
    skipped = [r["name"] for r in records if r.get("status") == "skipped"]
    if not failed and not skipped:
        return f"All {len(records)} runs finished." if len(records) > 1 else "The run finished."
    parts = []
    if failed:
        parts.append(f"{len(failed)} failed ({_names(failed)})")
    if skipped:
        parts.append(
            f"{len(skipped)} {'was' if len(skipped) == 1 else 'were'} skipped ({_names(skipped)})"
        )
    return f"Of {len(records)} runs, " + " and ".join(parts) + "."
