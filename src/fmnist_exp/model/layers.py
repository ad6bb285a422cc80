"""The layer registry: which layer types a config may name, how their shapes work out, how to build them.

A config names layers by registry key only; nothing from YAML is imported or evaluated, so a config
file cannot run code. Shapes, parameter counts and multiply-adds are worked out in plain Python (no
TensorFlow), which lets a bad stack fail in about a second with a message naming the layer by its
full config path, inside blocks too (`model.layers[3].layers[1].kernel_size: ...`).

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

The API:

- `check_stack(layers, key="model.layers") -> list[Shape]`: validate the stack, return the output
  shape of each top-level item.
- `check_augmentation(items, key="model.augmentation") -> None`: validate an augmentation list.
- `count_parameters(layers) -> int`, `count_multiply_adds(layers) -> int`: without building.
- `build(layers, augmentation=(), name="model") -> keras.Model`: checks both lists, then builds with
  the Keras functional API from `keras.layers` only, no backend-specific calls, so that the same
  model runs on TensorFlow, JAX and PyTorch (tests/test_backends.py trains it on each).
- `stack_table(model) -> str`: the layer table `dry_run=true` prints and a run logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fmnist_exp.data.fashion_mnist import IMAGE_SHAPE, NUM_CLASSES
from fmnist_exp.errors import ConfigError

if TYPE_CHECKING:
    from fmnist_exp.config.schema import ModelConfig

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


@dataclass(frozen=True)
class _Traced:
    """One config item with the shapes worked out: a layer, or a block with its traced children.

    A residual's children are its body; a repeat's are every copy's layers, in order.
    `shortcut_strides` is set on a residual whose shortcut is a projection.
    """

    layer: Mapping[str, Any]
    name: str  # the Keras layer name, unique within the model
    input_shape: Shape
    output_shape: Shape
    children: tuple[_Traced, ...] = ()
    shortcut_strides: tuple[int, int] | None = None

    @property
    def type(self) -> str:
        return self.layer["type"]

    @property
    def arguments(self) -> dict[str, Any]:
        return {name: value for name, value in self.layer.items() if name != "type"}


def _check_int(key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: {value!r} must be an integer of at least {minimum}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        if name == "layers":
            continue  # A block's body: traced item by item.
        if layer_type == "random_crop" and name == "padding":
            _check_int(where, value)
            if value >= IMAGE_SHAPE[0]:
                raise ConfigError(f"{where}: {value} pixels must be less than the image's {IMAGE_SHAPE[0]}")
        elif name in ("filters", "units", "times"):
            _check_int(where, value)
        elif name in ("kernel_size", "pool_size"):
            _check_window(where, value)
        elif name == "strides" and value is not None:
            _check_window(where, value)
        elif name == "padding" and value not in PADDINGS:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(PADDINGS)}")
        elif name == "activation" and value is not None and value not in ACTIVATIONS:
            raise ConfigError(f"{where}: {value!r} is not one of null, {', '.join(ACTIVATIONS)}")
        elif name == "rate" and (not _is_number(value) or not 0 <= value < 1):
            raise ConfigError(f"{where}: {value!r} must be a number in [0, 1)")
        elif name == "mode" and value not in FLIP_MODES:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(FLIP_MODES)}")
        elif name == "fill_mode" and value not in FILL_MODES:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(FILL_MODES)}")
        elif name == "interpolation" and value not in INTERPOLATIONS:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(INTERPOLATIONS)}")
        elif name in ("height_factor", "width_factor") and (not _is_number(value) or not 0 <= value < 1):
            raise ConfigError(f"{where}: {value!r} must be a fraction in [0, 1)")
        elif name == "probability" and (not _is_number(value) or not 0 <= value <= 1):
            raise ConfigError(f"{where}: {value!r} must be a probability in [0, 1]")
        elif name == "fill_value" and value is not None and (not _is_number(value) or not 0 <= value <= 1):
            raise ConfigError(f"{where}: {value!r} must be null (noise) or a pixel value in [0, 1]")
        elif name == "scale" and not (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(_is_number(item) for item in value)
            and 0 < value[0] <= value[1] <= 1
        ):
            raise ConfigError(f"{where}: {value!r} must be a pair [low, high] of area shares, 0 < low <= high <= 1")
        elif name == "use_bias" and not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} must be true or false")
        elif name in ("momentum", "epsilon") and not (_is_number(value) and 0 <= value < 1):
            raise ConfigError(f"{where}: {value!r} must be a number in [0, 1)")
        elif name == "kernel_regularizer" and value is not None:
            if not isinstance(value, Mapping) or not value or set(value) - set(REGULARIZERS):
                raise ConfigError(f"{where}: {value!r} must be null or a mapping like {{l2: 0.01}} (keys: l1, l2)")
            for factor_name, factor in value.items():
                if not _is_number(factor) or factor < 0:
                    raise ConfigError(f"{where}.{factor_name}: {factor!r} must be a number of at least 0")


def _check_keys(where: str, layer_type: str, args: dict[str, Any], required, optional) -> None:
    unknown = set(args) - set(required) - set(optional)
    if unknown:
        accepted = ", ".join(required + optional) or "no arguments"
        raise ConfigError(f"{where}: {layer_type} does not take {', '.join(sorted(unknown))}; it takes {accepted}")
    missing = [name for name in required if name not in args]
    if missing:
        raise ConfigError(f"{where}: {layer_type} needs {', '.join(missing)}")
    _check_arguments(where, layer_type, args)


def _describe(shape: Shape) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]}" if len(shape) == 3 else str(shape)


def _check_input(where: str, layer_type: str, needs: str, shape: Shape) -> None:
    if needs == "map" and len(shape) != 3:
        raise ConfigError(f"{where}: {layer_type} needs a 2D feature map, but the input is already flat {shape}")
    if needs == "flat" and len(shape) != 1:
        raise ConfigError(
            f"{where}: {layer_type} needs a flat input, but meets the feature map {_describe(shape)}; "
            "put a flatten or global_average_pooling2d before it"
        )


def _item_type(item: Any, where: str) -> str:
    if not isinstance(item, Mapping) or "type" not in item:
        raise ConfigError(f"{where}: each layer must be a mapping with a 'type' key, got {item!r}")
    if not isinstance(item["type"], str):
        raise ConfigError(f"{where}.type: {item['type']!r} must be a layer type's name")
    return item["type"]


def _trace_sequence(items: Any, shape: Shape, key: str, prefix: str, top: bool, entering: str) -> list[_Traced]:
    """Trace a list of items from `shape`; `entering` says where the first item's input comes from."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ConfigError(f"{key}: {items!r} must be a list of layers")
    if not items:
        raise ConfigError(f"{key}: the layer stack is empty" if top else f"{key}: a block's layer list is empty")
    traced = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        if index == 0:
            reaching = entering
        else:
            reaching = f"left after layer {index - 1}" if top else f"left after {key}[{index - 1}]"
        layer_type = _item_type(item, where)
        node = _trace_item(item, layer_type, shape, where, f"{prefix}{layer_type}_{index}", reaching)
        traced.append(node)
        shape = node.output_shape
    return traced


def _trace_item(item: Mapping[str, Any], layer_type: Any, shape: Shape, where: str, name: str, reaching: str):
    args = {key: value for key, value in item.items() if key != "type"}
    if layer_type in BLOCKS:
        _check_keys(where, layer_type, args, *BLOCKS[layer_type])
        if layer_type == "residual":
            return _trace_residual(item, args, shape, where, name)
        return _trace_repeat(item, args, shape, where, name)
    spec = LAYER_SPECS.get(layer_type)
    if spec is None:
        if layer_type in AUGMENTATION_SPECS:
            raise ConfigError(
                f"{where}.type: {layer_type!r} is an augmentation type; put it in model.augmentation, "
                "which is applied in front of the layers"
            )
        allowed = ", ".join([*LAYER_SPECS, *BLOCKS])
        raise ConfigError(f"{where}.type: {layer_type!r} is not a known layer type; allowed: {allowed}")
    _check_keys(where, layer_type, args, spec.required, spec.optional)
    _check_input(where, layer_type, spec.needs, shape)
    if layer_type in ("conv2d", "max_pooling2d", "average_pooling2d") and args.get("padding", "valid") == "valid":
        window = _pair(args.get("kernel_size", args.get("pool_size", 2)))
        if window[0] > shape[0] or window[1] > shape[1]:
            size_key = "kernel_size" if layer_type == "conv2d" else "pool_size"
            raise ConfigError(
                f"{where}.{size_key}: {args.get(size_key, 2)} does not fit the {_describe(shape)} feature map {reaching}"
            )
    output = spec.output_shape(shape, args)
    if any(size <= 0 for size in output):
        raise ConfigError(f"{where}: the output shape {output} has a dimension of 0; too much downsampling")
    return _Traced(item, name, shape, output)


def _projection_strides(where: str, shape: Shape, output: Shape) -> tuple[int, int]:
    """The 1x1 convolution's strides that take the block's input size to its body's output size."""
    strides = []
    for size_in, size_out in zip(shape[:2], output[:2], strict=True):
        # A 1x1 convolution with stride s gives ceil(size / s); take the smallest s that matches.
        stride = next((s for s in range(1, size_in + 1) if -(-size_in // s) == size_out), None)
        if stride is None:
            raise ConfigError(
                f"{where}: the body takes {_describe(shape)} to {_describe(output)}, and no strided 1x1 "
                f"projection takes {shape[0]}x{shape[1]} to {output[0]}x{output[1]} for the shortcut; "
                "downsample with padding: same and strides in the body"
            )
        strides.append(stride)
    return strides[0], strides[1]


def _trace_residual(item, args, shape: Shape, where: str, name: str) -> _Traced:
    _check_input(where, "residual", "map", shape)
    body = _trace_sequence(
        args["layers"], shape, f"{where}.layers", f"{name}_", top=False, entering=f"entering {where}"
    )
    output = body[-1].output_shape
    if len(output) != 3:
        raise ConfigError(
            f"{where}.layers: a residual body must end on a feature map, to be added to its input; "
            f"it ends flat {output}"
        )
    strides = None if output == shape else _projection_strides(where, shape, output)
    return _Traced(item, name, shape, output, tuple(body), strides)


def _trace_repeat(item, args, shape: Shape, where: str, name: str) -> _Traced:
    times = args["times"]
    children: list[_Traced] = []
    output = shape
    for copy in range(times):
        try:
            copied = _trace_sequence(
                args["layers"], output, f"{where}.layers", f"{name}_{copy}_", top=False, entering=f"entering {where}"
            )
        except ConfigError as error:
            if copy == 0:
                raise
            raise ConfigError(f"{error} (in repetition {copy + 1} of {times} of {where})") from None
        children.extend(copied)
        output = copied[-1].output_shape
    return _Traced(item, name, shape, output, tuple(children))


def _trace_stack(layers: Sequence[Mapping[str, Any]], key: str) -> list[_Traced]:
    traced = _trace_sequence(layers, IMAGE_SHAPE, key, "", top=True, entering="of the input")
    last = layers[-1]
    if last.get("type") != "dense" or last.get("units") != NUM_CLASSES or last.get("activation") != "softmax":
        raise ConfigError(
            f"{key}[{len(layers) - 1}]: the last layer must be "
            f"{{type: dense, units: {NUM_CLASSES}, activation: softmax}}, got {dict(last)!r}"
        )
    return traced


def check_stack(
    layers: Sequence[Mapping[str, Any]], key: str = "model.layers", augmentation: Sequence[Mapping[str, Any]] = ()
) -> list[Shape]:
    """Validate the augmentation list and the layer list and return each top-level item's output
    shape; raises ConfigError naming the item by its full path (`model.layers[3].layers[1].kernel_size`)."""
    check_augmentation(augmentation)
    return [node.output_shape for node in _trace_stack(layers, key)]


def _trace_augmentation(items: Sequence[Mapping[str, Any]], key: str) -> list[_Traced]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ConfigError(f"{key}: {items!r} must be a list of augmentation layers (or empty)")
    traced = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        layer_type = _item_type(item, where)
        spec = AUGMENTATION_SPECS.get(layer_type)
        if spec is None:
            raise ConfigError(
                f"{where}.type: {layer_type!r} is not an augmentation type; allowed: {', '.join(AUGMENTATION_SPECS)}"
            )
        args = {name: value for name, value in item.items() if name != "type"}
        _check_keys(where, layer_type, args, spec.required, spec.optional)
        traced.append(_Traced(item, f"augmentation_{layer_type}_{index}", IMAGE_SHAPE, IMAGE_SHAPE))
    return traced


def check_augmentation(items: Sequence[Mapping[str, Any]], key: str = "model.augmentation") -> None:
    """Validate an augmentation list: only AUGMENTATION_SPECS types, their arguments checked."""
    _trace_augmentation(items, key)


def _parameters(nodes: Sequence[_Traced]) -> int:
    total = 0
    for node in nodes:
        if node.children:
            total += _parameters(node.children)
            if node.shortcut_strides is not None:
                channels_in, channels_out = node.input_shape[2], node.output_shape[2]
                total += channels_in * channels_out + BATCH_NORMALIZATION_WEIGHTS_PER_CHANNEL * channels_out
        else:
            total += LAYER_SPECS[node.type].parameters(node.input_shape, node.arguments)
    return total


def count_parameters(layers: Sequence[Mapping[str, Any]]) -> int:
    """Total weights, trainable or not (what Keras's count_params() says), without building the model."""
    return _parameters(_trace_stack(layers, "model.layers"))


def layer_table(
    layers: Sequence[Mapping[str, Any]], augmentation: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[str, Shape, int]]:
    """(name, output shape, parameters) of each augmentation and top-level item (a block counts whole)."""
    rows = [(node.name, node.output_shape, 0) for node in _trace_augmentation(augmentation, "model.augmentation")]
    return rows + [(node.name, node.output_shape, _parameters([node])) for node in _trace_stack(layers, "model.layers")]


def _multiply_adds(nodes: Sequence[_Traced]) -> int:
    total = 0
    for node in nodes:
        if node.children:
            total += _multiply_adds(node.children)
            if node.shortcut_strides is not None:
                height, width, channels_out = node.output_shape
                total += height * width * node.input_shape[2] * channels_out
        elif node.type == "conv2d":
            height, width, channels_out = node.output_shape
            kernel_height, kernel_width = _pair(node.layer["kernel_size"])
            total += height * width * kernel_height * kernel_width * node.input_shape[2] * channels_out
        elif node.type == "dense":
            total += node.input_shape[0] * node.output_shape[0]
    return total


def count_multiply_adds(layers: Sequence[Mapping[str, Any]]) -> int:
    """Multiply-adds of one image's forward pass through the convolutions and dense layers, the
    projection shortcuts of residual blocks included.

    Pooling, normalisation, activations and the residual additions are left out: each is one
    operation per element, a rounding error next to these. A training step costs about three
    forward passes (the backward pass about two).
    """
    return _multiply_adds(_trace_stack(layers, "model.layers"))


def _keras_arguments(node: _Traced) -> dict[str, Any]:
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


def _apply(node: _Traced, inputs, dtype: str | None = None):
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

    traced = _trace_stack(layers, "model.layers")
    augmenting = _trace_augmentation(augmentation, "model.augmentation")
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    outputs = keras_layers.Rescaling(1.0 / 255, name="scale_to_unit")(inputs)
    for node in augmenting:
        outputs = _apply(node, outputs)
    for node in traced[:-1]:
        outputs = _apply(node, outputs)
    # The softmax stays float32 under mixed precision so that probabilities are well formed.
    outputs = _apply(traced[-1], outputs, dtype="float32")
    return keras.Model(inputs, outputs, name=name)


def stack_table(model: ModelConfig) -> str:
    """The model's layer table: each layer's output shape and parameters, the totals (`dry_run=true`
    prints it; a run logs it as model_layers.txt)."""
    rows = layer_table(model.layers, augmentation=model.augmentation)
    width = max(len(row[0]) for row in rows)
    lines = [f"model {model.name}" + "".join(f", {k}={v}" for k, v in model.knobs.items())]
    lines.append(f"  {'layer':<{width}}  {'output shape':>14}  {'parameters':>11}")
    for name, shape, parameters in rows:
        lines.append(f"  {name:<{width}}  {'x'.join(map(str, shape)):>14}  {parameters:>11,}")
    total = count_parameters(model.layers)
    multiply_adds = count_multiply_adds(model.layers)
    lines.append(f"  total {total:,} parameters; {multiply_adds:,} multiply-adds per image (forward)")
    return "\n".join(lines)
