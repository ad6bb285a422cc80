"""The layer registry: shapes and parameter counts worked out in Python match what Keras builds."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist_exp.errors import ConfigError
from fmnist_exp.model import keras_model
from fmnist_exp.model import layers as models
from helpers import SUBSET_DIR, typed_config

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)

# The article's model: 320 + 25,632 + 18,496 + 102,464 (convolutions) + 524,800 + 5,130 (dense).
SEED_CNN_PARAMETERS = 676_842


def test_seed_cnn_builds_with_the_articles_parameter_count():
    layers = typed_config().model.layers
    model = keras_model.build(layers, name="seed_cnn")
    assert model.output_shape == (None, 10)
    assert model.count_params() == SEED_CNN_PARAMETERS == models.count_parameters(layers)


@pytest.mark.parametrize("model_name", ["seed_cnn", "modern_cnn", "resnet_small"])
def test_shipped_models_predict_probabilities_from_raw_pixels(model_name):
    layers = typed_config([f"model={model_name}"]).model.layers
    model = keras_model.build(layers)
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


# Blocks: residual (identity or projection shortcut) and repeat, nested, with full-path errors.


def conv(filters, kernel_size=3, **arguments):
    return {"type": "conv2d", "filters": filters, "kernel_size": kernel_size, "padding": "same", **arguments}


def residual(*body, **arguments):
    return {"type": "residual", "layers": list(body), **arguments}


POOLED_HEAD = [{"type": "global_average_pooling2d"}, *HEAD[1:]]
STEM = [conv(8, use_bias=False), {"type": "batch_normalization"}, {"type": "activation", "activation": "relu"}]


def test_an_identity_block_keeps_the_shape_and_adds_no_weights():
    block = residual(conv(8), {"type": "batch_normalization"}, activation="relu")
    layers = [*STEM, block, *POOLED_HEAD]
    assert models.check_stack(layers)[3] == (28, 28, 8)
    # Stem 72 + 32; body 3x3x8x8 + 8 and 32; head 8x10 + 10.
    assert models.count_parameters(layers) == 72 + 32 + 584 + 32 + 90
    model = keras_model.build(layers)
    assert model.count_params() == models.count_parameters(layers)
    assert not [layer.name for layer in model.layers if "shortcut" in layer.name]


def test_a_downsampling_block_gets_a_strided_projection_shortcut():
    block = residual(conv(16, strides=2, use_bias=False), {"type": "batch_normalization"})
    layers = [*STEM, block, *POOLED_HEAD]
    assert models.check_stack(layers)[3] == (14, 14, 16)
    body = 3 * 3 * 8 * 16 + 4 * 16
    projection = 8 * 16 + 4 * 16  # 1x1 convolution without bias, then batch normalization.
    assert models.count_parameters(layers) == 72 + 32 + body + projection + 16 * 10 + 10
    # Body 14x14x(3x3x8)x16, projection 14x14x8x16, the stem and the head.
    assert models.count_multiply_adds(layers) == 28 * 28 * 9 * 8 + 14 * 14 * 72 * 16 + 14 * 14 * 8 * 16 + 160
    model = keras_model.build(layers)
    assert model.count_params() == models.count_parameters(layers)
    shortcut = model.get_layer("residual_3_shortcut_conv2d")
    assert shortcut.strides == (2, 2) and shortcut.kernel_size == (1, 1) and not shortcut.use_bias
    assert model.get_layer("residual_3_shortcut_batch_normalization").output.shape == (None, 14, 14, 16)


def test_a_channel_change_alone_is_projected_with_stride_one():
    layers = [residual(conv(4)), *POOLED_HEAD]
    model = keras_model.build(layers)
    assert model.get_layer("residual_0_shortcut_conv2d").strides == (1, 1)
    assert model.count_params() == models.count_parameters(layers) == (9 * 4 + 4) + (4 + 4 * 4) + 50


def test_repeat_copies_a_block_with_its_own_weights_and_checks_every_copy():
    block = residual(conv(8, strides=2), activation="relu")
    layers = [*STEM, {"type": "repeat", "times": 3, "layers": [block]}, *POOLED_HEAD]
    # 28 -> 14 -> 7 -> 4: each copy halves the map again.
    assert models.check_stack(layers)[3] == (4, 4, 8)
    model = keras_model.build(layers)
    assert model.count_params() == models.count_parameters(layers)
    copies = [layer.name for layer in model.layers if layer.name.endswith("_residual_0_add")]
    assert copies == ["repeat_3_0_residual_0_add", "repeat_3_1_residual_0_add", "repeat_3_2_residual_0_add"]
    single = models.count_parameters([*STEM, block, *POOLED_HEAD])
    assert models.count_parameters(layers) - single == 2 * (9 * 8 * 8 + 8 + 8 * 8 + 32)


def test_blocks_nest():
    inner = {"type": "repeat", "times": 2, "layers": [residual(conv(8), {"type": "batch_normalization"})]}
    layers = [*STEM, residual(inner, conv(16, strides=2)), *POOLED_HEAD]
    assert models.check_stack(layers)[3] == (14, 14, 16)
    model = keras_model.build(layers)
    assert model.count_params() == models.count_parameters(layers)
    assert model.get_layer("residual_3_repeat_0_1_residual_0_conv2d_0").output.shape == (None, 28, 28, 8)


def test_resnet_small_counts_match_keras():
    layers = typed_config(["model=resnet_small"]).model.layers
    model = keras_model.build(layers, name="resnet_small")
    assert model.count_params() == models.count_parameters(layers) == 341_506
    assert models.count_multiply_adds(layers) == 29_071_680
    assert models.count_multiply_adds(typed_config(["model=wide_cnn"]).model.layers) == 16_612_992


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            [*STEM, residual(conv(8), residual(conv(8), {"type": "conv2d", "filters": 8, "kernel_size": 0})), *HEAD],
            r"^model.layers\[3\].layers\[1\].layers\[1\].kernel_size: 0 must be an integer of at least 1$",
        ),
        (
            [*STEM, residual(conv(8), {"type": "conv2d", "filters": 8, "kernel_size": 30}), *HEAD],
            r"^model.layers\[3\].layers\[1\].kernel_size: 30 does not fit the 28x28x8 feature map "
            r"left after model.layers\[3\].layers\[0\]$",
        ),
        (
            [{"type": "repeat", "times": 3, "layers": [{"type": "max_pooling2d", "pool_size": 4}]}, *HEAD],
            r"^model.layers\[0\].layers\[0\].pool_size: 4 does not fit the 1x1x1 feature map entering "
            r"model.layers\[0\] \(in repetition 3 of 3 of model.layers\[0\]\)$",
        ),
        (
            [residual({"type": "conv2d", "filters": 8, "kernel_size": 3}), *POOLED_HEAD],
            r"^model.layers\[0\]: the body takes 28x28x1 to 26x26x8, and no strided 1x1 projection",
        ),
        (
            [residual({"type": "flatten"}), *HEAD[1:]],
            r"^model.layers\[0\].layers: a residual body must end on a feature map",
        ),
        ([{"type": "flatten"}, residual(HEAD[1]), *HEAD[1:]], r"^model.layers\[1\]: residual needs a 2D feature map"),
        ([residual(), *HEAD], r"^model.layers\[0\].layers: a block's layer list is empty$"),
        ([{"type": "residual"}, *HEAD], r"^model.layers\[0\]: residual needs layers$"),
        ([residual(conv(1), skip=True), *HEAD], r"^model.layers\[0\]: residual does not take skip"),
        ([{"type": "repeat", "times": 0, "layers": [conv(1)]}, *HEAD], r"^model.layers\[0\].times: 0 must be"),
        ([{"type": "repeat", "times": 2, "layers": conv(1)}, *HEAD], r"^model.layers\[0\].layers: .* must be a list"),
        ([residual(conv(1), activation="exec"), *HEAD], r"^model.layers\[0\].activation: 'exec' is not one of"),
        (
            [residual({"type": "os.system"}), *HEAD],
            r"^model.layers\[0\].layers\[0\].type: 'os.system' is not a known layer type; allowed: .*residual, repeat",
        ),
        (
            [{"type": "random_crop", "padding": 4}, *HEAD],
            r"^model.layers\[0\].type: 'random_crop' is an augmentation type; put it in model.augmentation",
        ),
    ],
)
def test_bad_blocks_are_refused_with_the_full_path(layers, message):
    with pytest.raises(ConfigError, match=message):
        models.check_stack(layers)


def test_a_bad_block_fails_config_validation_before_anything_is_built():
    from fmnist_exp.model.validation import validate

    config = typed_config(["model=resnet_small"])
    config.model.layers[4]["layers"][3]["kernel_size"] = [3, 3, 3]
    with pytest.raises(ConfigError, match=r"^model.layers\[4\].layers\[3\].kernel_size: \[3, 3, 3\] must be one"):
        validate(config)


# Augmentation: its own list, in front of the layers, active in training only.

AUGMENTATION = [
    {"type": "random_crop", "padding": 4},
    {"type": "random_flip", "mode": "horizontal"},
    {"type": "random_translation", "height_factor": 0.1, "width_factor": 0.1, "interpolation": "nearest"},
    {"type": "random_zoom", "height_factor": 0.1, "fill_mode": "constant"},
    {"type": "random_erasing", "probability": 0.5, "scale": [0.02, 0.2], "fill_value": 0.0},
]


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"type": "conv2d", "filters": 8, "kernel_size": 3}], r"^model.augmentation\[0\].type: 'conv2d' is not an"),
        ([{"type": "residual", "layers": []}], r"^model.augmentation\[0\].type: 'residual' is not an augmentation"),
        ([{"type": "random_crop"}], r"^model.augmentation\[0\]: random_crop needs padding$"),
        ([{"type": "random_crop", "padding": 0}], r"^model.augmentation\[0\].padding: 0 must be an integer"),
        ([{"type": "random_crop", "padding": 28}], r"^model.augmentation\[0\].padding: 28 pixels must be less"),
        (
            [{"type": "random_flip"}, {"type": "random_erasing", "probability": 1.5}],
            r"^model.augmentation\[1\].probability: 1.5 must be a probability in \[0, 1\]$",
        ),
        ([{"type": "random_erasing", "scale": [0.3, 0.1]}], r"^model.augmentation\[0\].scale: \[0.3, 0.1\] must be"),
        ([{"type": "random_erasing", "fill_value": 255}], r"^model.augmentation\[0\].fill_value: 255 must be null"),
        ([{"type": "random_zoom", "height_factor": 0.1, "seed": 1}], r"random_zoom does not take seed"),
        ([{"type": "random_flip", "mode": "diagonal"}], r"^model.augmentation\[0\].mode: 'diagonal' is not one of"),
        ({"type": "random_flip"}, r"^model.augmentation: .* must be a list"),
        (["random_flip"], r"^model.augmentation\[0\]: each layer must be a mapping with a 'type' key"),
    ],
)
def test_the_augmentation_list_takes_augmentation_types_only(items, message):
    with pytest.raises(ConfigError, match=message):
        models.check_augmentation(items)
    with pytest.raises(ConfigError, match=message):
        keras_model.build([*HEAD], augmentation=items)


def test_legacy_augmentation_in_the_layers_still_builds():
    layers = typed_config(["model=wide_cnn_flip"]).model.layers
    assert keras_model.build(layers).count_params() == models.count_parameters(layers)


def test_augmentation_is_active_in_training_only():
    import keras

    layers = [conv(4), {"type": "flatten"}, HEAD[1]]
    augmented = keras_model.build(layers, augmentation=AUGMENTATION)
    plain = keras_model.build(layers)
    assert augmented.count_params() == plain.count_params() == models.count_parameters(layers)
    augmented.set_weights(plain.get_weights())
    keras.utils.set_random_seed(0)
    pixels = np.random.default_rng(0).integers(0, 256, size=(16, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(augmented.predict(pixels, verbose=0), plain.predict(pixels, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(augmented(pixels, training=False)), np.asarray(plain(pixels)), rtol=1e-6)
    assert not np.allclose(np.asarray(augmented(pixels, training=True)), np.asarray(plain(pixels, training=True)))


def test_random_crop_shifts_by_whole_pixels_up_to_its_padding():
    import keras

    keras.utils.set_random_seed(0)
    layers = [{"type": "flatten"}, HEAD[1]]
    model = keras_model.build(layers, augmentation=[{"type": "random_crop", "padding": 2}])
    crop = keras.Model(model.input, model.get_layer("augmentation_random_crop_0").output)
    pixels = np.zeros((400, 28, 28, 1), "float32")
    pixels[:, 14, 14, 0] = 255
    shifted = np.asarray(crop(pixels, training=True))
    assert set(np.unique(shifted)) == {0.0, 1.0}  # no interpolation: whole pixels moved
    rows, columns = np.nonzero(shifted[..., 0].max(axis=2))[1] - 14, np.nonzero(shifted[..., 0].max(axis=1))[1] - 14
    assert set(rows) == set(columns) == {-2, -1, 0, 1, 2}


def test_resnet_small_trains_one_epoch_on_real_images(tmp_path, monkeypatch):
    import keras

    from fmnist_exp.config.schema import DataConfig
    from fmnist_exp.data import fashion_mnist as data

    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))
    keras.utils.set_random_seed(0)
    splits = data.load(DataConfig(dir=str(SUBSET_DIR), max_train_samples=500, validation="none"), seed=0)
    images, labels = splits.train
    model = keras_model.build(typed_config(["model=resnet_small"]).model.layers, augmentation=AUGMENTATION)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images, labels, batch_size=50, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    probabilities = model.predict(splits.test[0][:100], verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Augmentation is off at prediction: the same images give the same probabilities.
    np.testing.assert_array_equal(probabilities, model.predict(splits.test[0][:100], verbose=0))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_blocks_and_augmentation_train_under_mixed_precision(policy):
    import keras

    layers = [*STEM, residual(conv(16, strides=2, use_bias=False), {"type": "batch_normalization"}), *POOLED_HEAD]
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 28, 28, 1)).astype("uint8")
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = keras_model.build(layers, augmentation=AUGMENTATION)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        loss = model.train_on_batch(pixels, np.arange(32) % 10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(float(np.asarray(loss))) and model.output.dtype == "float32"
