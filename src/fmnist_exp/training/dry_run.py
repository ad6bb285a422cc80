"""`dry_run=true`: compose, validate and describe the experiment, then exit without training.

Plain Python only (no Keras, no MLflow), so it answers in about a second.
"""

from __future__ import annotations

import logging

from fmnist_exp.config.schema import DataConfig, ExperimentConfig
from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.model import layers as models

log = logging.getLogger("fmnist_exp.dry_run")


def data_source(config: DataConfig) -> str:
    """Where a run would read the data from; nothing is downloaded by a dry run."""
    try:
        return str(data.locate(config.dir, download=False))
    except data.DataError:
        if config.dir or not config.download:
            raise
        return f"not on this machine yet; a run downloads it from {config.mirror} into {data.keras_cache()}"


def describe(config: ExperimentConfig) -> int:
    """Log the layer table and the data that would be used; returns the parameter count."""
    lines = [models.stack_table(config.model)]
    total = models.count_parameters(config.model.layers)
    folder = data_source(config.data)
    train_count = min(config.data.max_train_samples or 60000, 60000)
    test_count = min(config.data.max_test_samples or 10000, 10000)
    held = round(train_count * config.data.validation_fraction) if config.data.validation == "holdout" else 0
    validation = {"holdout": f"{held:,} held out of them", "test": "the test set", "none": "none"}[
        config.data.validation
    ]
    lines.append(
        f"data  {folder}: {train_count - held:,} training images, validation {validation}, {test_count:,} test images"
    )
    lines.append(f"train {config.epochs} epochs at batch size {config.batch_size}; nothing was trained (dry_run=true)")
    log.info("\n".join(lines))
    return total
