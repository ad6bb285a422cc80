"""The layer registry: which layer types a config may name, how their shapes work out, how to build them.

A config names layers by registry key only; nothing from YAML is imported or evaluated, so a config
file cannot run code. `check_stack` works out every layer's output shape in plain Python (no
TensorFlow), which lets a bad stack fail in about a second with a message naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fmnist_exp.data import IMAGE_SHAPE, NUM_CLASSES
from fmnist_exp.errors import ConfigError

ACTIVATIONS = ("relu", "elu", "gelu", "selu", "silu", "swish", "sigmoid", "tanh", "softmax", "leaky_relu", "linear")
PADDINGS = ("valid", "same")
REGULARIZERS = ("l1", "l2")

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


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _window_output(shape: Shape, window: Any, strides: Any, padding: str) -> tuple[int, int]:
    (kh, kw), (sh, sw) = _pair(window), _pair(strides)
    height, width = shape[0], shape[1]
    if padding == "same":
        return -(-height // sh), -(-width // sw)
    return (height - kh) // sh + 1, (width - kw) // sw + 1


def _conv_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    height, width = _window_output(shape, args["kernel_size"], args.get("strides", 1), args.get("padding", "valid"))
    return (height, width, args["filters"])


def _conv_parameters(shape: Shape, args: dict[str, Any]) -> int:
    kh, kw = _pair(args["kernel_size"])
    bias = args["filters"] if args.get("use_bias", True) else 0
    return kh * kw * shape[2] * args["filters"] + bias


def _pool_shape(shape: Shape, args: dict[str, Any]) -> Shape:
    window = args.get("pool_size", 2)
    strides = args.get("strides") or window
    height, width = _window_output(shape, window, strides, args.get("padding", "valid"))
    return (height, width, shape[2])


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
    "dropout": LayerSpec("Dropout", ("rate",), (), "any", lambda shape, args: shape),
    "flatten": LayerSpec("Flatten", (), (), "map", lambda shape, args: (shape[0] * shape[1] * shape[2],)),
    "activation": LayerSpec("Activation", ("activation",), (), "any", lambda shape, args: shape),
    "batch_normalization": LayerSpec(
        "BatchNormalization",
        required=(),
        optional=("momentum", "epsilon"),
        needs="any",
        output_shape=lambda shape, args: shape,
        # gamma, beta, moving mean and moving variance per channel.
        parameters=lambda shape, args: 4 * shape[-1],
    ),
    "global_average_pooling2d": LayerSpec("GlobalAveragePooling2D", (), (), "map", lambda shape, args: (shape[2],)),
    # Augmentation: active in training only, the identity at inference.
    "random_flip": LayerSpec("RandomFlip", (), ("mode",), "map", lambda shape, args: shape),
    "random_translation": LayerSpec(
        "RandomTranslation", ("height_factor", "width_factor"), ("fill_mode",), "map", lambda shape, args: shape
    ),
}
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
FILL_MODES = ("constant", "reflect", "wrap", "nearest")


def _check_int(key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: {value!r} must be an integer of at least {minimum}")


def _check_window(key: str, value: Any) -> None:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"{key}: {list(value)!r} must be one integer or a pair [height, width]")
        for item in value:
            _check_int(key, item)
    else:
        _check_int(key, value)


def _check_arguments(key: str, layer_type: str, args: dict[str, Any]) -> None:
    """Types and ranges of each argument a registry layer accepts."""
    for name, value in args.items():
        where = f"{key}.{name}"
        if name in ("filters", "units"):
            _check_int(where, value)
        elif name in ("kernel_size", "pool_size"):
            _check_window(where, value)
        elif name == "strides" and value is not None:
            _check_window(where, value)
        elif name == "padding" and value not in PADDINGS:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(PADDINGS)}")
        elif name == "activation" and value is not None and value not in ACTIVATIONS:
            raise ConfigError(f"{where}: {value!r} is not one of null, {', '.join(ACTIVATIONS)}")
        elif name == "rate" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1):
            raise ConfigError(f"{where}: {value!r} must be a number in [0, 1)")
        elif name == "mode" and value not in FLIP_MODES:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(FLIP_MODES)}")
        elif name == "fill_mode" and value not in FILL_MODES:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(FILL_MODES)}")
        elif name in ("height_factor", "width_factor") and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1
        ):
            raise ConfigError(f"{where}: {value!r} must be a fraction in [0, 1)")
        elif name == "use_bias" and not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} must be true or false")
        elif name in ("momentum", "epsilon") and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ConfigError(f"{where}: {value!r} must be a number in [0, 1)")
        elif name == "kernel_regularizer" and value is not None:
            if not isinstance(value, dict) or not value or set(value) - set(REGULARIZERS):
                raise ConfigError(f"{where}: {value!r} must be null or a mapping like {{l2: 0.01}} (keys: l1, l2)")
            for factor_name, factor in value.items():
                if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0:
                    raise ConfigError(f"{where}.{factor_name}: {factor!r} must be a number of at least 0")


AUGMENTATION_TYPES = ("random_flip", "random_translation")


def check_augmentation(items: Sequence[dict[str, Any]], key: str = "model.augmentation") -> None:
    """The training-only augmentation list in front of the stack: augmentation layer types only."""
    for index, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") not in AUGMENTATION_TYPES:
            raise ConfigError(
                f"{key}[{index}]: {item!r} is not an augmentation layer; allowed types: {', '.join(AUGMENTATION_TYPES)}"
            )
    if items:
        check_stack(
            [*items, {"type": "flatten"}, {"type": "dense", "units": NUM_CLASSES, "activation": "softmax"}], key
        )


def check_stack(
    layers: Sequence[dict[str, Any]], key: str = "model.layers", augmentation: Sequence[dict[str, Any]] = ()
) -> list[Shape]:
    """Validate a layer list and return each layer's output shape; raises ConfigError naming the layer."""
    if not layers:
        raise ConfigError(f"{key}: the layer stack is empty")
    check_augmentation(augmentation)
    shape: Shape = IMAGE_SHAPE
    shapes = []
    for index, layer in enumerate(layers):
        where = f"{key}[{index}]"
        if not isinstance(layer, dict) or "type" not in layer:
            raise ConfigError(f"{where}: each layer must be a mapping with a 'type' key, got {layer!r}")
        layer_type = layer["type"]
        spec = LAYER_SPECS.get(layer_type)
        if spec is None:
            raise ConfigError(
                f"{where}.type: {layer_type!r} is not a known layer type; allowed: {', '.join(LAYER_SPECS)}"
            )
        args = {name: value for name, value in layer.items() if name != "type"}
        unknown = set(args) - set(spec.required) - set(spec.optional)
        if unknown:
            accepted = ", ".join(spec.required + spec.optional) or "no arguments"
            raise ConfigError(f"{where}: {layer_type} does not take {', '.join(sorted(unknown))}; it takes {accepted}")
        missing = [name for name in spec.required if name not in args]
        if missing:
            raise ConfigError(f"{where}: {layer_type} needs {', '.join(missing)}")
        _check_arguments(where, layer_type, args)
        if spec.needs == "map" and len(shape) != 3:
            raise ConfigError(f"{where}: {layer_type} needs a 2D feature map, but the input is already flat {shape}")
        if spec.needs == "flat" and len(shape) != 1:
            raise ConfigError(
                f"{where}: {layer_type} needs a flat input, but meets the feature map {_describe(shape)}; "
                "put a flatten or global_average_pooling2d before it"
            )
        if layer_type in ("conv2d", "max_pooling2d", "average_pooling2d") and args.get("padding", "valid") == "valid":
            window = _pair(args.get("kernel_size", args.get("pool_size", 2)))
            if window[0] > shape[0] or window[1] > shape[1]:
                size_key = "kernel_size" if layer_type == "conv2d" else "pool_size"
                raise ConfigError(
                    f"{where}.{size_key}: {args.get(size_key, 2)} does not fit the {_describe(shape)} feature map "
                    f"{'left after layer ' + str(index - 1) if index else 'of the input'}"
                )
        shape = spec.output_shape(shape, args)
        if any(size <= 0 for size in shape):
            raise ConfigError(f"{where}: the output shape {shape} has a dimension of 0; too much downsampling")
        shapes.append(shape)
    last = layers[-1]
    if last.get("type") != "dense" or last.get("units") != NUM_CLASSES or last.get("activation") != "softmax":
        raise ConfigError(
            f"{key}[{len(layers) - 1}]: the last layer must be "
            f"{{type: dense, units: {NUM_CLASSES}, activation: softmax}}, got {dict(last)!r}"
        )
    return shapes


def _describe(shape: Shape) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]}" if len(shape) == 3 else str(shape)


def layer_table(
    layers: Sequence[dict[str, Any]], augmentation: Sequence[dict[str, Any]] = ()
) -> list[tuple[str, Shape, int]]:
    """(name, output shape, parameters) per layer, augmentation first, worked out without Keras."""
    shapes = [IMAGE_SHAPE, *check_stack(layers, augmentation=augmentation)]
    rows = [(f"augmentation.{index} {item['type']}", IMAGE_SHAPE, 0) for index, item in enumerate(augmentation)]
    for index, (layer, input_shape, output_shape) in enumerate(zip(layers, shapes[:-1], shapes[1:], strict=True)):
        args = {name: value for name, value in layer.items() if name != "type"}
        rows.append(
            (f"{index} {layer['type']}", output_shape, LAYER_SPECS[layer["type"]].parameters(input_shape, args))
        )
    return rows


def count_parameters(layers: Sequence[dict[str, Any]], augmentation: Sequence[dict[str, Any]] = ()) -> int:
    """Total weights, trainable or not, worked out without building the model."""
    return sum(parameters for _, _, parameters in layer_table(layers, augmentation))


def count_multiply_adds(layers: Sequence[dict[str, Any]], augmentation: Sequence[dict[str, Any]] = ()) -> int:
    """Multiply-adds of one image's forward pass through the convolutions and dense layers.

    Pooling, normalisation and activations are left out: they are a rounding error next to these.
    A training step costs about three forward passes (the backward pass about two).
    """
    shapes = [IMAGE_SHAPE, *check_stack(layers)]
    total = 0
    for layer, input_shape, output_shape in zip(layers, shapes[:-1], shapes[1:], strict=True):
        if layer["type"] == "conv2d":
            kernel_height, kernel_width = _pair(layer["kernel_size"])
            total += output_shape[0] * output_shape[1] * kernel_height * kernel_width * input_shape[2] * output_shape[2]
        elif layer["type"] == "dense":
            total += input_shape[0] * output_shape[0]
    return total


def _keras_arguments(args: dict[str, Any]) -> dict[str, Any]:
    from keras import regularizers

    converted = dict(args)
    for name in ("kernel_size", "pool_size", "strides"):
        if isinstance(converted.get(name), list):
            converted[name] = tuple(converted[name])
    factors = converted.get("kernel_regularizer")
    if factors is not None:
        converted["kernel_regularizer"] = regularizers.L1L2(l1=factors.get("l1", 0.0), l2=factors.get("l2", 0.0))
    return converted


def build(layers: Sequence[dict[str, Any]], name: str = "model", augmentation: Sequence[dict[str, Any]] = ()):
    """Build the keras.Model. Its input is raw pixels (0-255, any numeric dtype); scaling is its first layer.

    Scaling inside the model keeps the data pipeline uint8 and lets a logged model take raw images.
    """
    import keras
    from keras import layers as keras_layers

    check_stack(layers, augmentation=augmentation)
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    outputs = keras_layers.Rescaling(1.0 / 255, name="scale_to_unit")(inputs)
    for index, item in enumerate(augmentation):
        args = _keras_arguments({key: value for key, value in item.items() if key != "type"})
        keras_class = getattr(keras_layers, LAYER_SPECS[item["type"]].keras_name)
        outputs = keras_class(**args, name=f"augmentation_{item['type']}_{index}")(outputs)
    for index, layer in enumerate(layers):
        spec = LAYER_SPECS[layer["type"]]
        args = _keras_arguments({key: value for key, value in layer.items() if key != "type"})
        keras_class = getattr(keras_layers, spec.keras_name)
        layer_name = f"{layer['type']}_{index}"
        if layer is layers[-1]:
            # The softmax stays float32 under mixed precision so that probabilities are well formed.
            outputs = keras_class(**args, name=layer_name, dtype="float32")(outputs)
        else:
            outputs = keras_class(**args, name=layer_name)(outputs)
    return keras.Model(inputs, outputs, name=name)
