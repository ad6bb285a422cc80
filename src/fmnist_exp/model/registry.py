"""The layer types a config may name, their arguments and their shape rules: the registry, as data.

A config names layers by registry key only; nothing from YAML is imported or evaluated, so a config
file cannot run code. model/layers.py checks a stack against this registry; model/keras_model.py
builds it.

The grammar of `model.layers`, a list whose items are mappings with a `type`:

- `{type: <layer>, ...arguments}`: one layer from `LAYER_SPECS` (conv2d, dense, batch_normalization,
  ...), its arguments checked by name and range.
- `{type: residual, layers: [...], activation: relu}`: a residual block. `layers` is the body; the
  block's output is `activation(body(x) + shortcut(x))`. The shortcut is the identity when the body
  keeps the shape, else a projection: a 1x1 conv2d (no bias, strides worked out from the two shapes)
  followed by batch normalization. `activation` is optional (none by default). The body must start
  and end on a feature map, and only `padding: same`-style downsampling can be projected (28x28 to
  14x14 by stride 2, not 28x28 to 26x26).
- `{type: repeat, times: N, layers: [...]}`: the `layers` sequence N times in a row, each copy with
  its own weights. Shapes are checked for every copy (a body that downsamples does so each time); an
  error in a later copy says which repetition it is.

Blocks nest: a body may hold residual and repeat items. The last item of the stack must be
`{type: dense, units: 10, activation: softmax}`.

Augmentation is a separate list, `model.augmentation`, applied in order to the scaled input before
the first layer, in training only (the identity at evaluation and prediction). It accepts only the
types in `AUGMENTATION_SPECS`: random_flip, random_translation, random_crop (a zero-padded random
crop, `padding` in pixels), random_zoom and random_erasing. random_flip and random_translation stay
allowed in `model.layers` too, where older model files put them; the other augmentation types are
refused there with a pointer to `model.augmentation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ACTIVATIONS = ("relu", "elu", "gelu", "selu", "silu", "swish", "sigmoid", "tanh", "softmax", "leaky_relu", "linear")
PADDINGS = ("valid", "same")
REGULARIZERS = ("l1", "l2")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
FILL_MODES = ("constant", "reflect", "wrap", "nearest")
INTERPOLATIONS = ("bilinear", "nearest")

Shape = tuple[int, ...]  # (height, width, channels) for feature maps, (units,) once flat.


@dataclass(frozen=True)
class LayerSpec:
    """What a layer type accepts: required and optional arguments, and its output shape rule."""

    keras_name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    needs: str  # "map": a (h, w, c) feature map; "flat": a vector; "any".
    output_shape: Callable[[Shape, dict[str, Any]], Shape]
    parameters: Callable[[Shape, dict[str, Any]], int] = lambda shape, args: 0


def pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _window_output(shape: Shape, window: Any, strides: Any, padding: str) -> tuple[int, int]:
    (kh, kw), (sh, sw) = pair(window), pair(strides)
    height, width = shape[0], shape[1]
    if padding == "same":
        return -(-height // sh), -(-width // sw)
    return (height - kh) // sh + 1, (width - kw) // sw + 1


def _conv_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    height, width = _window_output(shape, args["kernel_size"], args.get("strides", 1), args.get("padding", "valid"))
    return (height, width, args["filters"])


def _conv_parameters(shape: Shape, args: dict[str, Any]) -> int:
    kh, kw = pair(args["kernel_size"])
    bias = args["filters"] if args.get("use_bias", True) else 0
    return kh * kw * shape[2] * args["filters"] + bias


def _pool_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    window = args.get("pool_size", 2)
    strides = args.get("strides") or window
    height, width = _window_output(shape, window, strides, args.get("padding", "valid"))
    return (height, width, shape[2])


def _same_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    return shape


# batch_normalization's weights: gamma, beta, moving mean and moving variance per channel.
BATCH_NORMALIZATION_WEIGHTS_PER_CHANNEL = 4

LAYER_SPECS: dict[str, LayerSpec] = {
    "conv2d": LayerSpec(
        "Conv2D",
        required=("filters", "kernel_size"),
        optional=("strides", "padding", "activation", "use_bias", "kernel_regularizer"),
        needs="map",
        output_shape=_conv_shape,
        parameters=_conv_parameters,
    ),
    "max_pooling2d": LayerSpec("MaxPooling2D", (), ("pool_size", "strides", "padding"), "map", _pool_shape),
    "average_pooling2d": LayerSpec("AveragePooling2D", (), ("pool_size", "strides", "padding"), "map", _pool_shape),
    "dense": LayerSpec(
        "Dense",
        required=("units",),
        optional=("activation", "use_bias", "kernel_regularizer"),
        needs="flat",
        output_shape=lambda shape, args: (args["units"],),
        parameters=lambda shape, args: shape[0] * args["units"] + (args["units"] if args.get("use_bias", True) else 0),
    ),
    "dropout": LayerSpec("Dropout", ("rate",), (), "any", _same_shape),
    "flatten": LayerSpec("Flatten", (), (), "map", lambda shape, args: (shape[0] * shape[1] * shape[2],)),
    "activation": LayerSpec("Activation", ("activation",), (), "any", _same_shape),
    "batch_normalization": LayerSpec(
        "BatchNormalization",
        required=(),
        optional=("momentum", "epsilon"),
        needs="any",
        output_shape=_same_shape,
        parameters=lambda shape, args: BATCH_NORMALIZATION_WEIGHTS_PER_CHANNEL * shape[-1],
    ),
    "global_average_pooling2d": LayerSpec("GlobalAveragePooling2D", (), (), "map", lambda shape, args: (shape[2],)),
    # Augmentation, kept here for the model files that put it in the stack: active in training only.
    "random_flip": LayerSpec("RandomFlip", (), ("mode",), "map", _same_shape),
    "random_translation": LayerSpec(
        "RandomTranslation", ("height_factor", "width_factor"), ("fill_mode", "interpolation"), "map", _same_shape
    ),
}

# What `model.augmentation` accepts. Each is a no-op at evaluation and prediction.
AUGMENTATION_SPECS: dict[str, LayerSpec] = {
    "random_flip": LAYER_SPECS["random_flip"],
    "random_translation": LAYER_SPECS["random_translation"],
    # A zero-padded random crop back to the input size, as torchvision's RandomCrop(28, padding=p):
    # built as a RandomTranslation by up to p + 0.5 pixels with nearest interpolation and zero fill,
    # which is a whole-pixel shift drawn uniformly from -p..p on each axis. (Keras's own RandomCrop
    # returns the padded image unchanged at inference, so it cannot follow a ZeroPadding2D.)
    "random_crop": LayerSpec("RandomTranslation", ("padding",), (), "map", _same_shape),
    "random_zoom": LayerSpec(
        "RandomZoom", ("height_factor",), ("width_factor", "fill_mode", "interpolation"), "map", _same_shape
    ),
    # Random erasing (Zhong et al. 2017): with `probability`, one rectangle covering a `scale` share
    # of the image takes `fill_value` (0 is black; null is Gaussian noise), on the scaled [0, 1] pixels.
    "random_erasing": LayerSpec("RandomErasing", (), ("probability", "scale", "fill_value"), "map", _same_shape),
}

# The block types and their keys: (required, optional).
BLOCKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "residual": (("layers",), ("activation",)),
    "repeat": (("times", "layers"), ()),
}
