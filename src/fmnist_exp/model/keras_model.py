"""The Keras model a checked layer stack describes, built with the functional API from `keras.layers`
only (no backend-specific calls), so that the same model runs on TensorFlow, JAX and PyTorch
(tests/test_backends.py trains it on each)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fmnist_exp.data.fashion_mnist import IMAGE_SHAPE
from fmnist_exp.model.layers import Traced, trace_augmentation, trace_stack
from fmnist_exp.model.registry import AUGMENTATION_SPECS, LAYER_SPECS


def _keras_arguments(node: Traced) -> dict[str, Any]:
    """The Keras constructor's arguments for one registry layer."""
    from keras import regularizers

    converted = node.arguments
    if node.type == "random_crop":
        # See AUGMENTATION_SPECS: a whole-pixel shift drawn uniformly from -padding..padding.
        padding = converted.pop("padding")
        return {
            "height_factor": (padding + 0.5) / node.input_shape[0],
            "width_factor": (padding + 0.5) / node.input_shape[1],
            "fill_mode": "constant",
            "interpolation": "nearest",
        }
    if node.type == "random_erasing":
        probability = converted.pop("probability", 0.5)
        # Keras draws each image's probability from the factor range; a degenerate range fixes it.
        converted["factor"] = (probability, probability)
        converted["value_range"] = (0.0, 1.0)  # Augmentation sees the scaled pixels.
    for name in ("kernel_size", "pool_size", "strides", "scale"):
        if isinstance(converted.get(name), list):
            converted[name] = tuple(converted[name])
    factors = converted.get("kernel_regularizer")
    if factors is not None:
        converted["kernel_regularizer"] = regularizers.L1L2(l1=factors.get("l1", 0.0), l2=factors.get("l2", 0.0))
    return converted


def _apply(node: Traced, inputs, dtype: str | None = None):
    """Add one traced item to the functional graph and return its output tensor."""
    from keras import layers as keras_layers

    if node.type == "repeat":
        outputs = inputs
        for child in node.children:
            outputs = _apply(child, outputs)
        return outputs
    if node.type == "residual":
        body = inputs
        for child in node.children:
            body = _apply(child, body)
        shortcut = inputs
        if node.shortcut_strides is not None:
            shortcut = keras_layers.Conv2D(
                node.output_shape[2],
                kernel_size=1,
                strides=node.shortcut_strides,
                use_bias=False,
                name=f"{node.name}_shortcut_conv2d",
            )(shortcut)
            shortcut = keras_layers.BatchNormalization(name=f"{node.name}_shortcut_batch_normalization")(shortcut)
        outputs = keras_layers.Add(name=f"{node.name}_add")([body, shortcut])
        activation = node.layer.get("activation")
        if activation is not None:
            outputs = keras_layers.Activation(activation, name=f"{node.name}_activation")(outputs)
        return outputs
    spec = AUGMENTATION_SPECS.get(node.type) or LAYER_SPECS[node.type]
    keras_class = getattr(keras_layers, spec.keras_name)
    if node.type in AUGMENTATION_SPECS:
        # Augmentation has no weights and costs little, so it runs in float32 under every precision
        # policy: Keras 3.15's RandomErasing fails under mixed_float16 (a float16 range).
        dtype = "float32"
    extra = {"dtype": dtype} if dtype is not None else {}
    return keras_class(**_keras_arguments(node), name=node.name, **extra)(inputs)


def build(layers: Sequence[Mapping[str, Any]], augmentation: Sequence[Mapping[str, Any]] = (), name: str = "model"):
    """Build the keras.Model: raw pixels in (0-255, any numeric dtype), scaled to [0, 1] by its first
    layer, then `augmentation` (training only), then `layers`. Both lists are checked first.

    Scaling inside the model keeps the data pipeline uint8 and lets a logged model take raw images.
    """
    import keras
    from keras import layers as keras_layers

    traced = trace_stack(layers, "model.layers")
    augmenting = trace_augmentation(augmentation, "model.augmentation")
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    outputs = keras_layers.Rescaling(1.0 / 255, name="scale_to_unit")(inputs)
    for node in augmenting:
        outputs = _apply(node, outputs)
    for node in traced[:-1]:
        outputs = _apply(node, outputs)
    # The softmax stays float32 under mixed precision so that probabilities are well formed.
    outputs = _apply(traced[-1], outputs, dtype="float32")
    return keras.Model(inputs, outputs, name=name)


# A batch-normalisation layer's moving statistics keep momentum**steps of their starting values
# (mean 0, variance 1). At Keras's default momentum, 0.99, that share falls under 1% only after 459
# steps: a short run (a smoke test on a few thousand images, a tiny sweep) validates and tests with
# statistics that are still mostly the starting ones, and reads as chance. So a layer whose momentum
# the config leaves unset gets one that brings the share under 1% within the run's first epoch.
DEFAULT_BATCH_NORM_MOMENTUM = 0.99
SETTLED_SHARE = 0.01


def settling_momentum(steps_per_epoch: int) -> float:
    """The momentum for layers that leave it unset: Keras's 0.99, or less in a short epoch (3 decimals, down)."""
    fitted = SETTLED_SHARE ** (1 / max(steps_per_epoch, 1))
    return min(DEFAULT_BATCH_NORM_MOMENTUM, int(fitted * 1000) / 1000)


def _explicit_momentum(nodes: Sequence[Traced]) -> dict[str, float]:
    found = {}
    for node in nodes:
        if node.type == "batch_normalization" and "momentum" in node.layer:
            found[node.name] = float(node.layer["momentum"])
        found.update(_explicit_momentum(node.children))
    return found


def settle_batch_norm(model, layers: Sequence[Mapping[str, Any]], steps_per_epoch: int) -> list[str]:
    """Give each batch-normalisation layer without a configured momentum `settling_momentum`; returns
    what a person should read at the start: the change, and any configured momentum too slow to settle."""
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    explicit = _explicit_momentum(trace_stack(layers, "model.layers"))
    momentum = settling_momentum(steps_per_epoch)
    lines = []
    unset = [layer for layer in norms if layer.name not in explicit]
    if unset and momentum < DEFAULT_BATCH_NORM_MOMENTUM:
        for layer in unset:
            layer.momentum = momentum
        lines.append(
            f"batch normalization: momentum {momentum} instead of {DEFAULT_BATCH_NORM_MOMENTUM} for {len(unset)} "
            f"layer(s), so that their statistics settle within an epoch of {steps_per_epoch} steps "
            "(set momentum in a batch_normalization layer to choose it yourself)"
        )
    for name, configured in explicit.items():
        if configured**steps_per_epoch > SETTLED_SHARE:
            lines.append(
                f"batch normalization: {name}'s momentum {configured} keeps {configured**steps_per_epoch:.0%} of "
                f"its starting statistics after an epoch of {steps_per_epoch} steps: validation reads them "
                f"before they settle (at most {momentum} settles within the epoch)"
            )
    return lines
