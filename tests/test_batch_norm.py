"""Short runs of batch-normalised models read true: moving statistics that settle within an epoch."""

from __future__ import annotations

import pytest

from fmnist_exp.model import keras_model
from helpers import SUBSET_DIR, typed_config

BN_STACK = [
    {"type": "conv2d", "filters": 8, "kernel_size": 3},
    {"type": "batch_normalization"},
    {"type": "conv2d", "filters": 8, "kernel_size": 3},
    {"type": "batch_normalization", "momentum": 0.99},
    {"type": "flatten"},
    {"type": "dense", "units": 10, "activation": "softmax"},
]


@pytest.mark.unit
def test_a_long_epoch_keeps_keras_momentum_and_a_short_one_settles_within_it():
    assert keras_model.settling_momentum(1875) == 0.99  # the full set at batch 32
    short = keras_model.settling_momentum(85)  # 2,700 training images at batch 32
    assert short < 0.99 and short**85 <= keras_model.SETTLED_SHARE
    assert (short + 0.001) ** 85 > keras_model.SETTLED_SHARE  # the largest such momentum, to 3 decimals


@pytest.mark.unit
def test_unset_momentum_is_fitted_and_a_configured_one_is_kept_but_named():
    model = keras_model.build(BN_STACK)
    lines = keras_model.settle_batch_norm(model, BN_STACK, steps_per_epoch=85)
    norms = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    assert [layer.momentum for layer in norms] == [keras_model.settling_momentum(85), 0.99]
    assert len(lines) == 2 and "momentum 0.947 instead of 0.99 for 1 layer(s)" in lines[0]
    assert "momentum 0.99 keeps 43% of its starting statistics" in lines[1]
    untouched = keras_model.build(BN_STACK)
    assert keras_model.settle_batch_norm(untouched, BN_STACK[:2] + BN_STACK[4:], steps_per_epoch=1875) == []


@pytest.mark.slow
def test_a_short_batch_normalised_run_validates_near_its_training_accuracy(tmp_path):
    """The smoke run people make before a sweep: fast_cnn, 2 epochs on 2,700 training images. With
    Keras's momentum its validation accuracy read 0.11-0.25 against a training accuracy of 0.8."""
    from fmnist_exp.training import experiment

    overrides = [
        f"data.dir={SUBSET_DIR}",
        "model=fast_cnn",
        "epochs=2",
        "data.max_train_samples=3000",
        "data.max_test_samples=1000",
        "mlflow.log_model=false",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "trainer.verbose=0",
    ]
    outcome = experiment.run(typed_config(overrides), tmp_path / "run")
    accuracy, validation = outcome.history["accuracy"][-1], outcome.history["val_accuracy"][-1]
    assert accuracy > 0.7
    assert validation > accuracy - 0.15, (accuracy, validation)
    assert outcome.test_accuracy > accuracy - 0.15
