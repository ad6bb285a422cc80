"""The house rules of docs/design.md, checked on the source: no import cycle (function-level and
type-only imports included), config at the bottom, MLflow behind the tracking layer, a run that
knows nothing of sweeps, private library internals in their one home each, and every default of
conf/ written the same in the schema."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fmnist_exp.config import schema as config_module

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)

PACKAGE = Path(config_module.__file__).parents[1]
# The layers are the package's folders, from the bottom up: a module imports from its own folder or
# the folders below it. errors.py (at the top of the package) is below them all; the top's other
# modules are the `python -m fmnist_exp.<command>` doors, above them all.
LAYERS = ["runtime", "config", "data", "model", "analysis", "tracking", "training", "sweeps", "commands"]
BASE = {"errors"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


MODULES = {
    module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if path.stem != "__init__" and "conf" not in path.relative_to(PACKAGE).parts
}
DOORS = {name for name in MODULES if "." not in name} - BASE


def level(name: str) -> int:
    if name in BASE:
        return -1
    if name in DOORS:
        return len(LAYERS)
    return LAYERS.index(name.split(".")[0])


# The tracking layer and the one home of library internals: the only modules that import MLflow.
TRACKING = {name for name in MODULES if name.startswith("tracking.")} | {"runtime.private_api"}
# Where each library's private modules may be imported (docs/design.md, "Private APIs we touch").
PRIVATE_HOMES = {
    "mlflow": {"runtime.private_api"},
    "keras": {"runtime.private_api"},
    "optuna": {"runtime.private_api"},
    "hydra_plugins.hydra_optuna_sweeper": {"sweeps.study"},
    "hydra_plugins.hydra_ray_launcher": {"sweeps.ray_cluster"},
    "hydra": {"runtime.private_api"},
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name `path` imports, wherever the import stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def package_imports(path: Path) -> set[str]:
    found = {name.removeprefix("fmnist_exp.") for name in imported_modules(path) if name.startswith("fmnist_exp.")}
    return {name for name in found if name in MODULES} - {module_name(path)}


GRAPH = {name: package_imports(path) for name, path in MODULES.items()}


def reachable(start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for following in GRAPH[stack.pop()]:
            if following not in seen:
                seen.add(following)
                stack.append(following)
    return seen


def test_the_graph_sees_imports_inside_functions():
    # experiment.py imports its stages' modules inside functions; a scan that missed those would pass anything.
    assert {"training.device", "training.streams", "training.callbacks"} <= GRAPH["training.experiment"]


def test_no_import_cycle():
    cycles = sorted(name for name in GRAPH if name in reachable(name))
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_every_module_lives_in_a_layer_folder():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert folders - {"conf"} == set(LAYERS), "a new folder is a new layer: place it in LAYERS above"
    assert DOORS == {"run", "evaluate", "predict", "report", "bench", "ui"}, "the top holds errors.py and the doors"


def test_no_module_imports_upwards():
    upwards = [f"{name} -> {other}" for name in GRAPH for other in GRAPH[name] if level(other) > level(name)]
    assert upwards == []


def test_each_door_opens_on_its_command_only():
    for door in DOORS:
        assert GRAPH[door] == {f"commands.{door}"}, door
        assert len(MODULES[door].read_text().splitlines()) <= 8, f"{door}.py is a door: the command lives in commands/"


def test_config_is_the_bottom_layer():
    for name in MODULES:
        if name.startswith("config."):
            assert all(other == "errors" or other.startswith("config.") for other in GRAPH[name]), name
    assert GRAPH["errors"] == set()


def test_a_run_knows_nothing_of_sweeps():
    assert not {name for name in reachable("training.experiment") if name.startswith(("sweeps.", "commands."))}


def test_mlflow_stays_in_the_tracking_layer():
    for name, path in MODULES.items():
        if name in TRACKING:
            continue
        text = path.read_text()
        assert not any(module.split(".")[0] == "mlflow" for module in imported_modules(path)), name
        assert not re.search(r"\.client\.|\.info\.(run_id|status|experiment_id)|\.data\.(tags|params|metrics)", text), (
            f"{name} reads an MLflow client or run object; ask tracking.store.Store (RunRecord) instead"
        )


def test_private_library_modules_only_in_their_home():
    for name, path in MODULES.items():
        for module in imported_modules(path):
            if not any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                continue
            libraries = [library for library in PRIVATE_HOMES if module.startswith(library + ".")]
            assert libraries, f"{name} imports the private {module}, of a library with no home for its internals"
            assert name in PRIVATE_HOMES[max(libraries, key=len)], f"{name} imports the private {module}"


def code_strings(path: Path) -> set[str]:
    """The string literals of a module's code (f-string parts included), its docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_output_folder_names_live_in_run_folder():
    names = (
        "state.json",
        "run.json",
        "overrides.yaml",
        "best.keras",
        "checkpoints",
        "epoch-",
    )  # (store.py's ".lock" guards its SQLite file)
    for name, path in MODULES.items():
        if name == "training.run_folder":
            continue
        named = [literal for literal in code_strings(path) if any(file in literal for file in names)]
        assert named == [], f"{name} names files of a run's output folder: {named}; ask run_folder"


# -- defaults written twice: the YAML in conf/ and the dataclasses --------------------------------


def yaml_leaves(node, prefix=""):
    for key, value in node.items():
        if key in ("defaults", "hydra"):
            continue
        if isinstance(value, dict):
            yield from yaml_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def schema_default(schema, dotted: str):
    node = schema()
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize(
    ("yaml_file", "schema"),
    [
        ("config.yaml", config_module.ExperimentConfig),
        ("data/default.yaml", config_module.DataConfig),
    ],
)
def test_yaml_defaults_equal_the_schema(yaml_file, schema):
    written = OmegaConf.to_container(OmegaConf.load(config_module.CONF_DIR / yaml_file), resolve=False)
    leaves = dict(yaml_leaves(written))
    compared = 0
    for key, value in leaves.items():
        if isinstance(value, str) and "${" in value:
            continue  # from the environment (KERAS_BACKEND, FMNIST_DATA_DIR): the schema holds the fallback
        assert schema_default(schema, key) == value, (
            f"{yaml_file}: {key}: {value!r} in YAML, {schema_default(schema, key)!r} in {schema.__name__}"
        )
        compared += 1
    assert compared >= 5


def test_every_schema_key_has_a_commented_default_in_conf():
    """A key missing from conf/config.yaml would be a default a person cannot see (or comment on)."""
    text = (config_module.CONF_DIR / "config.yaml").read_text()
    leaves = dict(yaml_leaves(OmegaConf.to_container(OmegaConf.load(config_module.CONF_DIR / "config.yaml"))))
    schema = OmegaConf.to_container(OmegaConf.structured(config_module.ExperimentConfig), resolve=False)
    for group in ("data", "model", "optimizer"):  # their defaults are their group files
        schema.pop(group)
    computed = {"mlflow.tracking_uri"}  # $MLFLOW_TRACKING_URI or the checkout's store, said in a comment
    missing = [key for key, _ in yaml_leaves(schema) if key not in leaves and key not in computed]
    assert missing == [], f"conf/config.yaml does not show {missing}"
    uncommented = [key for key in leaves if "." not in key and not re.search(rf"^{key}: .*#", text, re.MULTILINE)]
    assert uncommented == [], f"conf/config.yaml: no comment beside {uncommented}"


def test_rooms_stay_small():
    """No source file over 400 lines and no function over 60: a room one reads in one sitting."""
    too_long = []
    for name, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def print_graph() -> None:
    """`python tests/test_architecture.py`: the package's import graph, layer by layer, top first."""
    for name in sorted(MODULES, key=lambda name: (-level(name), name)):
        lines = len(MODULES[name].read_text().splitlines())
        print(f"{name:32} {lines:4} lines  -> {', '.join(sorted(GRAPH[name])) or '-'}")


if __name__ == "__main__":
    print_graph()
