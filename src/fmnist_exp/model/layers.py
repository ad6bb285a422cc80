"""A layer stack checked against the registry: shapes, parameters and multiply-adds, in plain Python.

A config names layers by registry key only; nothing from YAML is imported or evaluated, so a config
file cannot run code. Shapes, parameter counts and multiply-adds are worked out in plain Python (no
TensorFlow), which lets a bad stack fail in about a second with a message naming the layer by its
full config path, inside blocks too (`model.layers[3].layers[1].kernel_size: ...`).

The grammar of `model.layers` and `model.augmentation` is model/registry.py's.

The API:

- `check_stack(layers, key="model.layers") -> list[Shape]`: validate the stack, return the output
  shape of each top-level item.
- `check_augmentation(items, key="model.augmentation") -> None`: validate an augmentation list.
- `count_parameters(layers) -> int`, `count_multiply_adds(layers) -> int`: without building.
- `keras_model.build(layers, augmentation=(), name="model") -> keras.Model` (model/keras_model.py)
  checks both lists, then builds the model.
- `stack_table(model) -> str`: the layer table `dry_run=true` prints and a run logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fmnist_exp.data.fashion_mnist import IMAGE_SHAPE, NUM_CLASSES
from fmnist_exp.errors import ConfigError

if TYPE_CHECKING:
    from fmnist_exp.config.schema import ModelConfig

from fmnist_exp.model.registry import (
    ACTIVATIONS,
    AUGMENTATION_SPECS,
    BATCH_NORMALIZATION_WEIGHTS_PER_CHANNEL,
    BLOCKS,
    FILL_MODES,
    FLIP_MODES,
    INTERPOLATIONS,
    LAYER_SPECS,
    PADDINGS,
    REGULARIZERS,
    Shape,
    pair,
)


@dataclass(frozen=True)
class Traced:
    """One config item with the shapes worked out: a layer, or a block with its traced children.

    A residual's children are its body; a repeat's are every copy's layers, in order.
    `shortcut_strides` is set on a residual whose shortcut is a projection.
    """

    layer: Mapping[str, Any]
    name: str  # the Keras layer name, unique within the model
    input_shape: Shape
    output_shape: Shape
    children: tuple[Traced, ...] = ()
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


def _trace_sequence(items: Any, shape: Shape, key: str, prefix: str, top: bool, entering: str) -> list[Traced]:
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
        window = pair(args.get("kernel_size", args.get("pool_size", 2)))
        if window[0] > shape[0] or window[1] > shape[1]:
            size_key = "kernel_size" if layer_type == "conv2d" else "pool_size"
            raise ConfigError(
                f"{where}.{size_key}: {args.get(size_key, 2)} does not fit the {_describe(shape)} feature map {reaching}"
            )
    output = spec.output_shape(shape, args)
    if any(size <= 0 for size in output):
        raise ConfigError(f"{where}: the output shape {output} has a dimension of 0; too much downsampling")
    return Traced(item, name, shape, output)


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


def _trace_residual(item, args, shape: Shape, where: str, name: str) -> Traced:
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
    return Traced(item, name, shape, output, tuple(body), strides)


def _trace_repeat(item, args, shape: Shape, where: str, name: str) -> Traced:
    times = args["times"]
    children: list[Traced] = []
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
    return Traced(item, name, shape, output, tuple(children))


def trace_stack(layers: Sequence[Mapping[str, Any]], key: str) -> list[Traced]:
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
    return [node.output_shape for node in trace_stack(layers, key)]


def trace_augmentation(items: Sequence[Mapping[str, Any]], key: str) -> list[Traced]:
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
        traced.append(Traced(item, f"augmentation_{layer_type}_{index}", IMAGE_SHAPE, IMAGE_SHAPE))
    return traced


def check_augmentation(items: Sequence[Mapping[str, Any]], key: str = "model.augmentation") -> None:
    """Validate an augmentation list: only AUGMENTATION_SPECS types, their arguments checked."""
    trace_augmentation(items, key)


def _parameters(nodes: Sequence[Traced]) -> int:
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
    return _parameters(trace_stack(layers, "model.layers"))


def layer_table(
    layers: Sequence[Mapping[str, Any]], augmentation: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[str, Shape, int]]:
    """(name, output shape, parameters) of each augmentation and top-level item (a block counts whole)."""
    rows = [(node.name, node.output_shape, 0) for node in trace_augmentation(augmentation, "model.augmentation")]
    return rows + [(node.name, node.output_shape, _parameters([node])) for node in trace_stack(layers, "model.layers")]


def _multiply_adds(nodes: Sequence[Traced]) -> int:
    total = 0
    for node in nodes:
        if node.children:
            total += _multiply_adds(node.children)
            if node.shortcut_strides is not None:
                height, width, channels_out = node.output_shape
                total += height * width * node.input_shape[2] * channels_out
        elif node.type == "conv2d":
            height, width, channels_out = node.output_shape
            kernel_height, kernel_width = pair(node.layer["kernel_size"])
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
    return _multiply_adds(trace_stack(layers, "model.layers"))


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
