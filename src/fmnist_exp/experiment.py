"""One experiment, top to bottom: data, model, optimizer, MLflow run, fit, test, artifacts, objective.

`run()` takes the typed config and plain arguments, so tests call it without Hydra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fmnist_exp import config as config_module
from fmnist_exp import data, models, tracking
from fmnist_exp.config import ExperimentConfig


@dataclass
class Outcome:
    run_id: str
    objective: float  # the last epoch's validation accuracy (training accuracy with data.validation=none)
    test_accuracy: float
    test_loss: float
    history: dict[str, list[float]]


def run_name_from(overrides: Sequence[str]) -> str:
    return ",".join(overrides)[:250] or "default"


def run(config: ExperimentConfig, output_dir: Path, overrides: Sequence[str] = ()) -> Outcome:
    # Everything that can be wrong with the input fails here, before TensorFlow and before a run.
    config_module.validate(config)
    tracking.check_reachable(config.mlflow.tracking_uri)
    splits = data.load(config.data, config.seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    import keras
    import mlflow

    from fmnist_exp import optim, plots, train

    keras.utils.set_random_seed(config.seed)
    train.configure_precision(config.trainer.precision)
    model = models.build(config.model.layers, name=config.model.name)
    train_images, train_labels = splits.train
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    train.compile_model(model, optim.build(config.optimizer, steps_per_epoch, config.epochs), config.trainer)

    training_data = train.pipeline(
        train_images,
        train_labels,
        config.batch_size,
        shuffle_seed=config.seed,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    validation_data = train.pipeline(*splits.validation, config.batch_size) if splits.validation else None

    tags = {"overrides": " ".join(overrides), "data_source": str(splits.source)}
    with tracking.run(
        config.mlflow.tracking_uri,
        config.mlflow.experiment_name,
        config.mlflow.run_name or run_name_from(overrides),
        tags,
    ) as active:
        tracking.log_params(config_module.flatten(config))
        mlflow.log_params(
            {
                "data.train_images": len(train_images),
                "data.validation_images": len(splits.validation[0]) if splits.validation else 0,
                "data.test_images": len(splits.test[0]),
                "model.parameters": model.count_params(),
            }
        )
        started = time.perf_counter()
        history = model.fit(
            training_data,
            validation_data=validation_data,
            epochs=config.epochs,
            callbacks=[train.EpochTimer(len(train_images)), tracking.epoch_logger()],
            verbose=train.verbosity(config.trainer.verbose),
            shuffle=False,  # the tf.data pipeline already reshuffles every epoch
        ).history
        train_seconds = time.perf_counter() - started

        test = train.evaluate(model, *splits.test, config.batch_size)
        mlflow.log_metrics({"test_loss": test.loss, "test_accuracy": test.accuracy, "train_seconds": train_seconds})

        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
        (output_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
        mlflow.log_artifact(str(output_dir / "config.yaml"))
        mlflow.log_artifact(str(output_dir / "overrides.yaml"))
        mlflow.log_artifact(str(plots.learning_curves(history, output_dir / "learning_curves.png")), "plots")
        if config.mlflow.log_model:
            tracking.log_keras_model(model, splits.test[0][:2], output_dir)
        run_id = active.info.run_id

    objective_key = "val_accuracy" if "val_accuracy" in history else "accuracy"
    return Outcome(
        run_id=run_id,
        objective=float(history[objective_key][-1]),
        test_accuracy=test.accuracy,
        test_loss=test.loss,
        history={key: [float(value) for value in values] for key, values in history.items()},
    )
