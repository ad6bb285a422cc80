"""The figures of scripts/gpu_settle.sh: summary.md, results.json and curves.png in OUT.

Written by gpu_settle.py when its commands end, are stopped at the time limit or by a signal: each
group's runs as far as they got (their curves are in the MLflow store or the plain script's CSV files
epoch by epoch), every command's outcome, and `complete: false` when anything was cut short.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from gpu_check_summary import figure, plain_rows, run_rows

GROUPS = ("article", "default_cosine", "best_resnet48_aug", "best_resnet32_aug", "best_wide_cnn_flip")
# The runner's collapse rule: training accuracy at chance level (at most 0.2) after it passed 0.5;
# here on the validation curve, which the plain script records too.
CHANCE, LEARNED = 0.2, 0.5


def collapsed_at(curve: list[float]) -> int | None:
    """The first epoch (1-based) at chance level after the curve had passed LEARNED, else None."""
    learned = False
    for epoch, accuracy in enumerate(curve, start=1):
        learned = learned or accuracy > LEARNED
        if learned and accuracy <= CHANCE:
            return epoch
    return None


def bench_rows(scratch: Path) -> list[dict]:
    rows = []
    for path in sorted(scratch.glob("bench_*.json")):
        result = json.loads(path.read_text())
        keys = ("batch_size", "stream", "runner_images_per_second", "ratio_median", "compare_stream",
                "compare_stream_images_per_second", "compare_stream_ratio_median", "bare_images_per_second",
                "fraction_of_matmul_peak", "backend", "machine")  # fmt: skip
        rows.append({key: result.get(key) for key in keys})
    return sorted(rows, key=lambda row: row["batch_size"])


def group_rows(scratch: Path, started: list[str]) -> dict[str, list[dict]]:
    """Each started group's runs (all of them when `started` is empty), with the epoch of any collapse."""
    groups = {}
    for group in [group for group in GROUPS if group in started or not started]:
        try:
            rows = [row for row in run_rows(f"settle_{group}") if row["child"]]
        except Exception as error:  # a store cut short mid-write: say so, keep the rest
            print(f"gpu_settle_summary: {group}: runs unreadable: {error}")
            rows = []
        groups[group] = sorted(rows, key=lambda row: row["seed"] or "")
    if any(name.startswith("plain_") for name in started) or not started:
        groups["article_plain"] = plain_rows(scratch)
    for rows in groups.values():
        for row in rows:
            row["collapsed_at_epoch"] = collapsed_at(row["val_accuracy"])
    return groups


def rate(values: list[float] | None) -> str:
    return f"{statistics.median(values):,.0f}" if values else "missing"


def bench_markdown(benches: list[dict]) -> list[str]:
    lines = ["## bench: the runner against bare Keras (medians of interleaved repeats)", ""]
    if not benches:
        return [*lines, "missing: no bench finished (see its log)", ""]
    lines += [f"{benches[0]['backend']}; {benches[0]['machine']}", ""]
    lines += ["| batch | runner, device stream, images/s | runner/bare | runner, NumPy stream, images/s | runner/bare "
              "| bare Keras images/s | fraction of matmul peak |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in benches:
        lines.append(
            f"| {row['batch_size']} | {rate(row['runner_images_per_second'])} | {figure(row['ratio_median'], 3)} "
            f"| {rate(row['compare_stream_images_per_second'])} | {figure(row['compare_stream_ratio_median'], 3)} "
            f"| {rate(row['bare_images_per_second'])} | {figure(row['fraction_of_matmul_peak'], 3)} |"
        )
    return [*lines, ""]


def runs_markdown(groups: dict[str, list[dict]]) -> list[str]:
    lines = ["## runs", "", "| group | seed | status | epochs | best val accuracy (epoch) | last val accuracy "
             "| test accuracy | collapsed at epoch | seconds per epoch after the first |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for group, rows in groups.items():
        if not rows:
            lines.append(f"| {group} | - | missing | | | | | | |")
        for row in rows:
            curve = row["val_accuracy"]
            best = f"{100 * max(curve):.2f}% ({curve.index(max(curve)) + 1})" if curve else "missing"
            last = f"{100 * curve[-1]:.2f}%" if curve else "missing"
            test = f"{100 * row['test_accuracy']:.2f}%" if row["test_accuracy"] is not None else "missing"
            seed = row.get("seed") or row["run"].rsplit("seed", 1)[-1]
            lines.append(
                f"| {group} | {seed} | {row['status']} | {row['epochs']} | {best} | {last} | {test} "
                f"| {row['collapsed_at_epoch'] or '-'} | {figure(row['steady_epoch_seconds'], 2)} |"
            )
    lines += ["", "Collapsed: " + "; ".join(
        f"{group} {sum(row['collapsed_at_epoch'] is not None for row in rows)} of {len(rows)}"
        for group, rows in groups.items()), ""]  # fmt: skip
    return lines


def plot(groups: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure_, axes = pyplot.subplots(1, len(groups), figsize=(4 * len(groups), 3.5), sharey=True, squeeze=False)
    for axis, (group, rows) in zip(axes[0], groups.items(), strict=True):
        for row in rows:
            axis.plot(range(1, len(row["val_accuracy"]) + 1), row["val_accuracy"], label=row["run"])
        axis.set_title(group, fontsize=9)
        axis.set_xlabel("epoch")
        if rows:
            axis.legend(fontsize=6)
    axes[0][0].set_ylabel("validation accuracy")
    figure_.tight_layout()
    figure_.savefig(path, dpi=80)
    pyplot.close(figure_)


def write(scratch: Path, out: Path, outcome: dict[str, str], seconds: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    benches, groups = bench_rows(scratch), group_rows(scratch, list(outcome))
    complete = bool(outcome) and all(state == "finished" for state in outcome.values())
    results = {"seconds": seconds, "complete": complete, "outcome": outcome, "bench": benches, "groups": groups}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    state = "complete" if complete else "PARTIAL: some commands were stopped or failed"
    lines = [f"# The GPU settle run ({seconds:.0f} s in all; {state})", "", "| command | outcome |", "|---|---|"]
    lines += [f"| {name} | {result} |" for name, result in outcome.items()] + [""]
    text = "\n".join(lines + bench_markdown(benches) + runs_markdown(groups))
    (out / "summary.md").write_text(text)
    try:
        plot(groups, out / "curves.png")
    except Exception as error:  # the figures above matter more than the picture
        print(f"gpu_settle_summary: no curves.png: {error}")
    print(text, flush=True)
    return results
