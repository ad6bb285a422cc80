"""Figures written as PNG files; matplotlib's Agg backend, so no display is needed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402 (the backend must be chosen first)


def learning_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch, training against validation when there is one."""
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history.get("loss", [])) + 1)
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, history.get(metric, []), marker="o", label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def confusion_matrix(counts, path: Path) -> Path:
    """The 10x10 counts with class names; the diagonal is what the model gets right."""
    from fmnist_exp.data.fashion_mnist import CLASS_NAMES

    figure, axis = pyplot.subplots(figsize=(8, 7))
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    axis.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = counts.max() / 2 if counts.size else 0
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            colour = "white" if counts[row, column] > threshold else "black"
            axis.text(column, row, str(int(counts[row, column])), ha="center", va="center", color=colour, fontsize=8)
    axis.set_title("Confusion matrix (test set)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def misclassified_grid(images, labels, probabilities, path: Path, count: int = 25) -> Path:
    """Up to `count` wrongly classified test images, most confident mistakes first."""
    import numpy as np

    from fmnist_exp.data.fashion_mnist import CLASS_NAMES

    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]])][:count]
    columns = 5
    rows = max(1, -(-len(wrong) // columns))
    figure, axes = pyplot.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, wrong, strict=False):
        axis.imshow(images[index].squeeze(), cmap="gray")
        axis.set_title(
            f"true: {CLASS_NAMES[labels[index]]}\npred: {CLASS_NAMES[predictions[index]]} "
            f"({probabilities[index, predictions[index]]:.2f})",
            fontsize=8,
        )
    if not len(wrong):
        axes.flat[0].set_title("no misclassified images")
    figure.suptitle("Misclassified test images (true / predicted, probability)")
    # Fixed margins: tight_layout over 25 small axes took about 1.5 s of every run's evaluation.
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.85 / (2.5 * rows), hspace=0.55, wspace=0.15)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def sweep_comparison(rows: list[dict], path: Path) -> Path:
    """Validation and test accuracy of each job of a sweep, best first."""
    import numpy as np

    rows = rows[:40]
    names = [row["run_name"] for row in rows]
    positions = np.arange(len(rows))
    figure, axis = pyplot.subplots(figsize=(9, 1.5 + 0.45 * max(1, len(rows))))
    axis.barh(positions - 0.2, [row["objective"] for row in rows], height=0.4, label="objective (validation accuracy)")
    axis.barh(positions + 0.2, [row["test_accuracy"] for row in rows], height=0.4, label="test")
    axis.set_yticks(positions, names, fontsize=8)
    axis.invert_yaxis()
    finite = [value for row in rows for value in (row["objective"], row["test_accuracy"]) if np.isfinite(value)]
    if finite:
        axis.set_xlim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.02))
    axis.set_xlabel("accuracy")
    axis.set_title("Sweep: jobs by objective (training accuracy where there is no validation set)")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def sweep_curves(rows: list[dict], curves: dict[str, list[float]], path: Path) -> Path:
    """The sweep's objective by epoch (sweep_curves_figure) as a PNG file."""
    figure = sweep_curves_figure(rows, curves)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def sweep_curves_figure(rows: list[dict], curves: dict[str, list[float]]):
    """Each config's objective (validation accuracy) by epoch, one colour per config: the mean over
    its fully trained runs as a line, a band of +- one sd over its seeds where it has two or more,
    and each of its runs faint behind; a pruned run dashed and ending in a cross. The mean covers
    the epochs all those runs reached (early stopping can end seeds at different epochs). The legend
    lists the configs as the verdict ranks them, best mean objective first."""
    import math
    import statistics

    from matplotlib.ticker import MaxNLocator

    groups: dict[str, list[dict]] = {}
    for row in rows:
        if curves.get(row["run_id"]):
            groups.setdefault(row.get("config_group") or row["run_id"], []).append(row)

    def mean_objective(members: list[dict]) -> float:  # the verdict's ranking: best mean first
        scored = [row["objective"] for row in members if row["status"] == "FINISHED" and row["pruned_at"] == ""]
        return -statistics.fmean(scored) if scored and not any(map(math.isnan, scored)) else math.inf

    groups = dict(sorted(groups.items(), key=lambda item: mean_objective(item[1])))
    figure, axis = pyplot.subplots(figsize=(9, 5))
    palette = pyplot.get_cmap("tab10")
    for index, (group, members) in enumerate(groups.items()):
        colour = palette(index % 10)
        label = (group.rsplit(" [", 1)[0] if members[0].get("config_group") else members[0]["run_name"])[:60]
        full = [curves[row["run_id"]] for row in members if row["status"] == "FINISHED" and row["pruned_at"] == ""]
        pruned = [row for row in members if row["pruned_at"] != ""]
        for row in members:
            if row["pruned_at"] == "":
                curve = curves[row["run_id"]]
                axis.plot(range(1, len(curve) + 1), curve, color=colour, alpha=0.25, linewidth=1)
        for number, row in enumerate(pruned):
            curve = curves[row["run_id"]]
            named = not full and number == 0  # a config with no fully trained run: named by its first pruned one
            axis.plot(
                range(1, len(curve) + 1), curve, color=colour, linestyle="--", alpha=0.7, label=label if named else None
            )
            axis.plot(len(curve), curve[-1], marker="x", markersize=10, color=colour)
        if not full:
            continue
        epochs = range(1, min(len(run) for run in full) + 1)
        means = [statistics.fmean(run[epoch - 1] for run in full) for epoch in epochs]
        if len(full) >= 2:
            spreads = [statistics.stdev(run[epoch - 1] for run in full) for epoch in epochs]
            lows = [mean - spread for mean, spread in zip(means, spreads, strict=True)]
            highs = [mean + spread for mean, spread in zip(means, spreads, strict=True)]
            axis.fill_between(epochs, lows, highs, color=colour, alpha=0.2, linewidth=0)
            label = f"{label} ({len(full)} seeds)"
        axis.plot(epochs, means, color=colour, linewidth=2, marker="o", markersize=4, label=label)
    metric = rows[0]["objective_metric"] if rows else "val_accuracy"
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} by epoch: each config's mean, +- 1 sd over its seeds, its runs faint (x: pruned)")
    axis.grid(alpha=0.3)
    if groups:
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def params_against_objective(rows: list[dict], keys: list[str], path: Path) -> Path:
    """One panel per swept param: each finished job's objective against the param's value (a log
    axis for a positive numeric param spanning more than a factor of 10)."""
    import math

    finished = [row for row in rows if row["status"] == "FINISHED" and not math.isnan(row["objective"])]
    figure, axes = pyplot.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        values = [row["swept"].get(key, "") for row in finished]
        objectives = [row["objective"] for row in finished]
        numbers = [_number(value) for value in values]
        if values and all(number is not None for number in numbers):
            axis.scatter(numbers, objectives, alpha=0.7)
            if min(numbers) > 0 and max(numbers) / min(numbers) > 10:  # type: ignore[type-var,operator]  # no None: above
                axis.set_xscale("log")
        else:
            categories = sorted(set(values), key=str)
            axis.scatter([categories.index(value) for value in values], objectives, alpha=0.7)
            axis.set_xticks(range(len(categories)), [str(category)[:20] for category in categories], rotation=30)
        axis.set_xlabel(key)
        axis.set_ylabel("objective")
        axis.grid(alpha=0.3)
    figure.suptitle("Each swept param against the objective (finished jobs)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
