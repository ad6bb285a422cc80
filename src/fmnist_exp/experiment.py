"""One experiment, top to bottom: data, model, optimizer, MLflow run, fit, test, artifacts, objective.

`run()` takes the typed config and plain arguments, so tests call it without Hydra. `resume()`
continues an interrupted run from its last checkpoint, into the same MLflow run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fmnist_exp import backend, data, evaluation, models, tracking
from fmnist_exp import config as config_module
from fmnist_exp import sweep as sweeps
from fmnist_exp.config import ExperimentConfig
from fmnist_exp.errors import RunStopped, UserError

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


class TrainingDiverged(RunStopped):
    """The loss became NaN or infinite; the run ends FAILED."""


@dataclass
class Outcome:
    run_id: str
    objective: float  # the last epoch's validation accuracy (training accuracy with data.validation=none)
    test_accuracy: float
    test_loss: float
    history: dict[str, list[float]]


def run_name_from(overrides: Sequence[str]) -> str:
    return ",".join(overrides)[:250] or "default"


def prepare_output(output_dir: Path) -> Path:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"hydra.run.dir: cannot write to the output folder {output_dir} ({error})") from error
    return output_dir


def run(
    config: ExperimentConfig,
    output_dir: Path,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> Outcome:
    """Train and evaluate one config in a new MLflow run (a child of `parent_run_id` in a sweep)."""
    return _train(config, Path(output_dir), overrides, parent_run_id=parent_run_id)


def resume(target: str, tracking_uri: str) -> Outcome:
    """Continue the run whose output folder (or run id) is `target` from its last completed epoch."""
    folder = Path(target)
    if not (folder / CHECKPOINTS).is_dir():
        folder = tracking.output_dir_of_run(target, tracking_uri)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"resume: {folder} holds no {CONFIG_FILE}; is it a run's output folder?")
    config_module.register_schemas()
    schema = OmegaConf.structured(ExperimentConfig)
    config = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(config_path)))
    overrides = OmegaConf.load(folder / "overrides.yaml") if (folder / "overrides.yaml").is_file() else []
    return _train(config, folder, list(overrides), resume_from=folder / CHECKPOINTS)


def _train(
    config: ExperimentConfig,
    output_dir: Path,
    overrides: Sequence[str],
    resume_from: Path | None = None,
    parent_run_id: str | None = None,
) -> Outcome:
    # Everything that can be wrong with the input fails here, before TensorFlow and before a run.
    config_module.validate(config)
    backend.activate(config.trainer, config.deterministic)  # before anything imports Keras
    tracking.check_reachable(config.mlflow.tracking_uri)
    splits = data.load(config.data, config.seed)
    prepare_output(output_dir)
    (output_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    (output_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))

    import keras
    import mlflow

    from fmnist_exp import optim, plots, train

    # Jobs of a sweep share this process under Hydra's default launcher: start each from a clean slate.
    keras.backend.clear_session()
    train.configure_gpus()
    train.configure_threads(config.trainer.threads)
    train.configure_determinism(config.deterministic)
    keras.utils.set_random_seed(config.seed)
    train.configure_precision(config.trainer.precision)
    train_images, train_labels = splits.train
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)

    first_epoch, run_id = 0, None
    with train.strategy_scope(config.trainer.distribute):
        if resume_from is not None:
            state = train.read_checkpoint(resume_from)
            first_epoch, run_id = state["epoch"], state["run_id"]
            if first_epoch >= config.epochs:
                raise UserError(f"resume: {resume_from} already completed all {config.epochs} epochs")
            model = train.load_checkpoint(resume_from, state)
        else:
            model = models.build(config.model.layers, name=config.model.name)
            train.compile_model(model, optim.build(config.optimizer, steps_per_epoch, config.epochs), config.trainer)

    training_data = train.training_pipeline(
        train_images, train_labels, config.batch_size, config.seed, first_epoch, config.epochs
    )
    validation_data = train.pipeline(*splits.validation, config.batch_size) if splits.validation else None
    tags = {
        "overrides": " ".join(overrides),
        "data_source": str(splits.source),
        "output_dir": str(output_dir.resolve()),
        # What re-run sweeps match finished work by.
        "config_hash": sweeps.config_hash(config),
    }

    with tracking.run(
        config.mlflow.tracking_uri,
        config.mlflow.experiment_name,
        config.mlflow.run_name or run_name_from(overrides),
        tags,
        parent_run_id=parent_run_id,
        run_id=run_id,
    ) as active:
        if resume_from is None:
            tracking.log_params(config_module.flatten(config))
            mlflow.log_params(
                {
                    "data.train_images": len(train_images),
                    "data.validation_images": len(splits.validation[0]) if splits.validation else 0,
                    "data.test_images": len(splits.test[0]),
                    "model.parameters": model.count_params(),
                }
            )
            mlflow.log_artifact(str(output_dir / CONFIG_FILE))
            mlflow.log_artifact(str(output_dir / "overrides.yaml"))
        else:
            mlflow.set_tag("resumed_from_epoch", str(first_epoch))
        divergence = train.StopOnNonFiniteLoss()
        started = time.perf_counter()
        with train.sigterm_as_interrupt():
            model.fit(
                training_data,
                validation_data=validation_data,
                initial_epoch=first_epoch,
                epochs=config.epochs,
                steps_per_epoch=steps_per_epoch,
                callbacks=[
                    train.EpochTimer(len(train_images)),
                    divergence,
                    tracking.epoch_logger(),
                    train.Checkpointer(output_dir / CHECKPOINTS, active.info.run_id),
                ],
                verbose=train.verbosity(config.trainer.verbose),
                shuffle=False,  # the pipeline already orders each epoch by (seed, epoch)
            )
        if divergence.diverged_at is not None:
            raise TrainingDiverged(
                f"the training loss became NaN or infinite in epoch {divergence.diverged_at}; "
                f"lower optimizer.learning_rate (now {config.optimizer.learning_rate}) or set optimizer.clipnorm"
            )
        mlflow.log_metric("train_seconds", time.perf_counter() - started)

        test = train.evaluate(model, *splits.test, config.batch_size)
        mlflow.log_metrics({"test_loss": test.loss, "test_accuracy": test.accuracy})
        mlflow.log_metrics(evaluation.write_reports(*splits.test, test.probabilities, output_dir / "evaluation"))
        mlflow.log_artifacts(str(output_dir / "evaluation"), "evaluation")
        # The whole run's curves, from the store: a resumed run's Keras history holds only its own epochs.
        history = tracking.metric_histories(active.info.run_id)
        mlflow.log_artifact(str(plots.learning_curves(history, output_dir / "learning_curves.png")), "plots")
        if config.mlflow.log_model or config.register:
            tracking.log_keras_model(model, splits.test[0][:2], output_dir)
        if config.register:
            tracking.register_model(active.info.run_id, config.mlflow.registered_model_name)
        run_id = active.info.run_id

    objective_key = "val_accuracy" if "val_accuracy" in history else "accuracy"
    return Outcome(
        run_id=run_id,
        objective=float(history[objective_key][-1]),
        test_accuracy=test.accuracy,
        test_loss=test.loss,
        history=history,
    )
