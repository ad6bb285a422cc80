"""`python -m fmnist_exp.evaluate model_uri=runs:/<run_id>/model`: a logged model on the test set.

With a model that came from a run (runs:/ or models:/ URIs), the test subset and batch size default
to the run's own, so the printed accuracy reproduces the run's logged test_accuracy. The keys are
conf/evaluate.yaml's, typed by EvaluateConfig; `--help` lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from fmnist_exp.commands import hydra_app as commands
from fmnist_exp.config.checks import check_positive
from fmnist_exp.config.schema import DataConfig
from fmnist_exp.model import backend
from fmnist_exp.runtime import noise
from fmnist_exp.tracking import registry


@dataclass
class EvaluateConfig:
    model_uri: str = field(default=MISSING, metadata={"example": "runs:/<run id>/model or models:/<name>@champion"})
    # None: the run's own batch size (256 for a model that came from no run).
    batch_size: int | None = None
    # A folder for the confusion matrix and the per-class report (None: none written).
    output_dir: str | None = None
    data: commands.EvaluationDataConfig = field(default_factory=commands.EvaluationDataConfig)
    mlflow: commands.StoreConfig = field(default_factory=commands.StoreConfig)


def main(argv: list[str] | None = None) -> float | None:
    """The command line (`argv`, else sys.argv): prints and returns the test accuracy."""
    noise.quiet()
    return commands.run("evaluate", EvaluateConfig, evaluate, argv)


def console() -> None:
    """`fmnist-evaluate`: main without its return value, which a console script would pass to sys.exit."""
    main()


def evaluate(config: EvaluateConfig) -> float:
    check_positive("batch_size", config.batch_size, allow_none=True)
    check_positive("data.max_test_samples", config.data.max_test_samples, allow_none=True)
    from fmnist_exp.data import fashion_mnist as data
    from fmnist_exp.tracking.registry import in_store
    from fmnist_exp.tracking.store import Store

    store = Store(config.mlflow.tracking_uri, config.mlflow.orphan_after_minutes)
    store.check(existing=in_store(config.model_uri))
    store.reap_orphans()
    run = registry.source_run(store, config.model_uri)
    logged = run.params if run else {}
    data_config = DataConfig(
        dir=config.data.dir or logged_data_dir(run) or os.environ.get("FMNIST_DATA_DIR"),
        download=config.data.download,
        mirror=config.data.mirror,
        verify=config.data.verify,
        max_test_samples=config.data.max_test_samples or _optional_int(_logged(logged, "data.max_test_samples")),
        validation="none",
    )
    batch_size = config.batch_size or int(logged.get("batch_size", 256))
    images, labels = data.load(data_config, seed=0).test
    from fmnist_exp.tracking import logged_model

    with logged_model.fetched(config.model_uri, store) as path:  # the folder is checked first
        backend.activate_for_loading()  # KERAS_BACKEND, else whichever backend is installed
        noise.import_tensorflow()
        model = logged_model.load_file(path, config.model_uri)
    from fmnist_exp.analysis import per_class
    from fmnist_exp.training import streams

    result = streams.test_pass(model, images, labels, batch_size)
    print(f"test_accuracy={result.accuracy:.4f} test_loss={result.loss:.4f} images={len(labels)}")
    if run is not None and "test_accuracy" in run.metrics:
        logged_accuracy = run.metrics["test_accuracy"]
        verdict = "matches" if abs(logged_accuracy - result.accuracy) < 1e-9 else "DIFFERS from"
        print(f"{verdict} the run's logged test_accuracy={logged_accuracy:.4f} (run {run.run_id})")
    if config.output_dir:
        folder = Path(config.output_dir)
        per_class.write_reports(images, labels, result.probabilities, folder)
        print(f"reports written to {folder}")
    return result.accuracy


def logged_data_dir(run) -> str | None:
    """The data folder a run trained on: its data.dir tag (a path of the machine), or the data.dir
    param of a run logged before paths became tags."""
    if run is None:
        return None
    return _logged(run.tags, "data.dir") or _logged(run.params, "data.dir")


def _logged(params: dict[str, str], key: str) -> str | None:
    """A run's logged param, None where the run had none (MLflow keeps None as the text "None")."""
    value = params.get(key)
    return None if value in (None, "null", "None") else value


def _optional_int(value: str | None) -> int | None:
    return None if value is None else int(value)


if __name__ == "__main__":
    main()
