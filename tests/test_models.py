"""The layer registry: shapes and parameter counts worked out in Python match what Keras builds."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import typed_config
from fmnist_exp import models
from fmnist_exp.errors import ConfigError

# The article's model: 320 + 25,632 + 18,496 + 102,464 (convolutions) + 524,800 + 5,130 (dense).
SEED_CNN_PARAMETERS = 676_842


def test_seed_cnn_builds_with_the_articles_parameter_count():
    layers = typed_config().model.layers
    model = models.build(layers, name="seed_cnn")
    assert model.output_shape == (None, 10)
    assert model.count_params() == SEED_CNN_PARAMETERS == models.count_parameters(layers)


@pytest.mark.parametrize("model_name", ["seed_cnn", "modern_cnn"])
def test_shipped_models_predict_probabilities_from_raw_pixels(model_name):
    layers = typed_config([f"model={model_name}"]).model.layers
    model = models.build(layers)
    assert model.count_params() == models.count_parameters(layers)
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28, 1)).astype("uint8")
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_shapes_follow_the_stack():
    shapes = models.check_stack(typed_config().model.layers)
    assert shapes[:7] == [(28, 28, 32), (24, 24, 32), (12, 12, 32), (12, 12, 64), (8, 8, 64), (4, 4, 64), (1024,)]


HEAD = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]


@pytest.mark.parametrize(
    "layers, message",
    [
        ([{"type": "os.system"}, *HEAD], r"model.layers\[0\].type: 'os.system' is not a known layer type"),
        ([{"type": "conv2d", "filters": 8}, *HEAD], r"model.layers\[0\]: conv2d needs kernel_size"),
        ([{"type": "conv2d", "filters": 8, "kernel_size": 3, "colour": 1}, *HEAD], r"does not take colour"),
        (
            [{"type": "max_pooling2d", "pool_size": 2}] * 5 + HEAD,
            r"model.layers\[4\].pool_size: 2 does not fit the 1x1x1",
        ),
        ([{"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "exec"}, *HEAD], r"activation: 'exec'"),
        ([{"type": "dense", "units": 10, "activation": "softmax"}], r"dense needs a flat input"),
        ([{"type": "flatten"}, {"type": "dense", "units": 10}], r"the last layer must be"),
        ([{"type": "flatten"}, {"type": "conv2d", "filters": 1, "kernel_size": 1}, *HEAD[1:]], r"already flat"),
        ([], r"empty"),
    ],
)
def test_bad_stacks_are_refused_with_the_layer_named(layers, message):
    with pytest.raises(ConfigError, match=message):
        models.check_stack(layers)
