"""scripts/article_plain.py: the article's recipe without the runner, to tell a recipe's failure from the runner's.

Its network must be seed_cnn's, weight for weight, or a comparison between the two says nothing.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SUBSET_DIR, typed_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "article_plain.py"


def load_script():
    spec = importlib.util.spec_from_file_location("article_plain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plain_network_is_seed_cnn_layer_for_layer():
    import keras

    from fmnist_exp.model import keras_model

    plain = load_script().build_model(keras)
    config = typed_config([]).model
    runner = keras_model.build(config.layers, name=config.name, augmentation=config.augmentation)
    assert plain.count_params() == runner.count_params() == 676_842

    def weighted(model):  # the runner's model adds weightless layers (its input scaling)
        return [
            (type(layer).__name__, [tuple(weight.shape) for weight in layer.weights])
            for layer in model.layers
            if layer.weights
        ]

    assert weighted(plain) == weighted(runner)
    regularised = [layer for layer in plain.layers if getattr(layer, "kernel_regularizer", None) is not None]
    assert [layer.kernel_regularizer.get_config()["l2"] for layer in regularised] == [0.01] * 4


@pytest.mark.slow
def test_a_short_plain_run_learns_and_writes_its_curve(tmp_path):
    out = tmp_path / "curve.csv"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--epochs", "2", "--max-train", "1000", "--data", str(SUBSET_DIR), "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert set(rows[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    # 1,000 images twice: far above chance (10%) on the 1,000 test images of the subset.
    assert float(rows[-1]["val_accuracy"]) > 0.6
    assert "676,842 parameters" in result.stdout
