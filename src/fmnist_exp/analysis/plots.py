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
    """Each job's objective (validation accuracy) by epoch; one colour per config (its seeds share
    it), a pruned job dashed and ending in a cross."""
    figure, axis = pyplot.subplots(figsize=(9, 5))
    colours: dict[str, object] = {}
    palette = pyplot.get_cmap("tab10")
    labelled: set[str] = set()
    for row in rows:
        curve = curves.get(row["run_id"]) or []
        if not curve:
            continue
        group = row.get("config_group") or row["run_id"]
        colour = colours.setdefault(group, palette(len(colours) % 10))
        label = None if group in labelled else row["run_name"].split(",seed=")[0][:60]
        labelled.add(group)
        epochs = range(1, len(curve) + 1)
        pruned = row["pruned_at"] != ""
        axis.plot(epochs, curve, color=colour, linestyle="--" if pruned else "-", marker="o", markersize=3, label=label)
        if pruned:
            axis.plot(len(curve), curve[-1], marker="x", markersize=10, color=colour)
    metric = rows[0]["objective_metric"] if rows else "val_accuracy"
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.set_title(f"Every job's {metric} by epoch (dashed, x: pruned)")
    axis.grid(alpha=0.3)
    if labelled:
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


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
