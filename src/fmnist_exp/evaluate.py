"""`python -m fmnist_exp.evaluate model_uri=runs:/<run_id>/model`: a logged model on the test set.

With a model that came from a run (runs:/ or models:/ URIs), the test subset and batch size default
to the run's own, so the printed accuracy reproduces the run's logged test_accuracy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fmnist_exp import cli
from fmnist_exp.config import DataConfig, default_tracking_uri
from fmnist_exp.errors import UserError

USAGE = (
    "usage: python -m fmnist_exp.evaluate model_uri=URI [data.dir=DIR] [data.max_test_samples=N] "
    "[batch_size=N] [tracking_uri=URI] [output_dir=DIR]"
)
DEFAULTS = {
    "model_uri": "",
    "data.dir": "",
    "data.max_test_samples": 0,
    "batch_size": 0,
    "tracking_uri": "",
    "output_dir": "",
}


def main(argv: list[str] | None = None) -> float:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    arguments = cli.parse_assignments(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if not arguments["model_uri"]:
        cli.fail(f"model_uri: required, e.g. runs:/<run_id>/model or models:/<name>@champion\n{USAGE}")

    from fmnist_exp import backend

    backend.activate_for_loading()  # KERAS_BACKEND, else whichever backend is installed
    from fmnist_exp import data, evaluation, tracking, train

    tracking_uri = arguments["tracking_uri"] or default_tracking_uri()
    try:
        run = tracking.source_run(arguments["model_uri"], tracking_uri)
        logged = run.data.params if run else {}
        data_config = DataConfig(
            dir=arguments["data.dir"] or logged.get("data.dir") or os.environ.get("FMNIST_DATA_DIR"),
            max_test_samples=arguments["data.max_test_samples"] or _optional_int(logged.get("data.max_test_samples")),
            validation="none",
        )
        batch_size = arguments["batch_size"] or int(logged.get("batch_size", 256))
        images, labels = data.load(data_config, seed=0).test
        model = tracking.load_keras_model(arguments["model_uri"], tracking_uri)
    except UserError as error:
        cli.fail(str(error))
    result = train.evaluate(model, images, labels, batch_size)
    print(f"test_accuracy={result.accuracy:.4f} test_loss={result.loss:.4f} images={len(labels)}")
    if run is not None and "test_accuracy" in run.data.metrics:
        logged_accuracy = run.data.metrics["test_accuracy"]
        verdict = "matches" if abs(logged_accuracy - result.accuracy) < 1e-9 else "DIFFERS from"
        print(f"{verdict} the run's logged test_accuracy={logged_accuracy:.4f} (run {run.info.run_id})")
    if arguments["output_dir"]:
        folder = Path(arguments["output_dir"])
        evaluation.write_reports(images, labels, result.probabilities, folder)
        print(f"reports written to {folder}")
    return result.accuracy


def _optional_int(value: str | None) -> int | None:
    return None if value in (None, "null", "None") else int(value)


if __name__ == "__main__":
    main()
