"""What a model gets wrong: confusion matrix, per-class precision/recall/F1, misclassified examples.

Plain NumPy on labels and predicted probabilities; the figures come from plots.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from fmnist_exp.data.fashion_mnist import CLASS_NAMES, NUM_CLASSES


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """counts[true, predicted] over the ten classes."""
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def per_class_report(counts: np.ndarray) -> dict:
    """Precision, recall, F1 and support per class, their macro averages, and the accuracy."""
    true_positives = np.diag(counts).astype(np.float64)
    predicted = counts.sum(axis=0)
    actual = counts.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    classes = {
        name: {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(actual[index]),
        }
        for index, name in enumerate(CLASS_NAMES)
    }
    return {
        "classes": classes,
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "accuracy": float(true_positives.sum() / max(1, counts.sum())),
    }


def metric_name(class_name: str) -> str:
    """'T-shirt/top' -> 't_shirt_top': MLflow metric names allow no '/' in a class name's place."""
    return re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_")


# MLflow 3's chart view puts metrics whose names share the part before the first '/' in a section of
# their own (as it does for system/): the 33 per-class figures stay out of the curves people compare.
PER_CLASS_PREFIX = "test_per_class/"


def report_metrics(report: dict) -> dict[str, float]:
    """The per-class test figures as metrics: test_per_class/recall_ankle_boot, .../macro_f1, ..."""
    metrics = {}
    for class_name, values in report["classes"].items():
        for key in ("precision", "recall", "f1"):
            metrics[f"{PER_CLASS_PREFIX}{key}_{metric_name(class_name)}"] = values[key]
    metrics.update({f"{PER_CLASS_PREFIX}macro_{key}": value for key, value in report["macro"].items()})
    return metrics


def report_text(report: dict) -> str:
    lines = [f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, values in report["classes"].items():
        lines.append(
            f"{name:<14}{values['precision']:>10.4f}{values['recall']:>10.4f}{values['f1']:>10.4f}{values['support']:>10}"
        )
    macro = report["macro"]
    lines.append(f"{'macro avg':<14}{macro['precision']:>10.4f}{macro['recall']:>10.4f}{macro['f1']:>10.4f}")
    lines.append(f"{'accuracy':<14}{report['accuracy']:>30.4f}")
    return "\n".join(lines) + "\n"


def write_reports(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, folder: Path) -> dict:
    """Write the four evaluation artifacts into `folder`; return the per-class metrics for MLflow."""
    from fmnist_exp.analysis import plots

    folder.mkdir(parents=True, exist_ok=True)
    predictions = probabilities.argmax(axis=1)
    counts = confusion_matrix(labels, predictions)
    report = per_class_report(counts)
    header = "true\\predicted," + ",".join(CLASS_NAMES)
    rows = [f"{name}," + ",".join(str(value) for value in row) for name, row in zip(CLASS_NAMES, counts, strict=True)]
    (folder / "confusion_matrix.csv").write_text("\n".join([header, *rows]) + "\n")
    (folder / "classification_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "classification_report.txt").write_text(report_text(report))
    plots.confusion_matrix(counts, folder / "confusion_matrix.png")
    plots.misclassified_grid(images, labels, probabilities, folder / "misclassified.png")
    return report_metrics(report)
