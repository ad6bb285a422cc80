"""What a run records as it starts: its tags, its params, data sets and config files, and the start-up
block it logs (what is about to be trained, where, and where to look at it)."""

from __future__ import annotations

import logging

from fmnist_exp.config import identity
from fmnist_exp.tracking.active_run import Run
from fmnist_exp.tracking.links import ui_command
from fmnist_exp.training import run_folder
from fmnist_exp.training.handoffs import Prepared

log = logging.getLogger("fmnist_exp.training.experiment")  # the run's own lines, as before


def run_tags(prepared: Prepared, run_name: str) -> dict[str, str]:
    from fmnist_exp.tracking import params

    return {
        "overrides": " ".join(prepared.overrides),
        "data_source": str(prepared.splits.source),
        "output_dir": str(prepared.output_dir.resolve()),
        # What re-run sweeps match finished work by.
        "config_hash": identity.config_hash(prepared.config),
        # The same without the seed: the seed replicates of one config share it (the UI's "Group by").
        "config_group": identity.config_group(prepared.config, run_name),
        **params.run_tags_of_config(prepared.config),
    }


def log_inputs(prepared: Prepared, run: Run, model) -> None:
    """The run's params (what a person compares, params.run_params), data sets and config files."""
    from fmnist_exp.model import layers as models
    from fmnist_exp.tracking import dataset_inputs, params

    splits = prepared.splits
    counts = {
        "data.train_images": len(splits.train[0]),
        "data.validation_images": len(splits.validation[0]) if splits.validation else 0,
        "data.test_images": len(splits.test[0]),
        "model.parameters": model.count_params(),
    }
    run.log_params(params.run_params(prepared.config, prepared.overrides, counts))
    momenta = sorted({layer.momentum for layer in model.layers if type(layer).__name__ == "BatchNormalization"})
    if momenta:  # derived from the run's length (keras_model.settle_batch_norm): a tag, not a choice
        run.set_tags({"batch_norm_momentum": ",".join(f"{momentum:g}" for momentum in momenta)})
    run.log_datasets(dataset_inputs.describe(prepared.config, splits))
    run.log_artifact(prepared.output_dir / run_folder.CONFIG_FILE)
    run.log_artifact(prepared.output_dir / run_folder.OVERRIDES_FILE)
    layers = prepared.output_dir / run_folder.LAYERS_FILE
    layers.write_text(models.stack_table(prepared.config.model) + "\n")
    run.log_artifact(layers)


def announce(prepared: Prepared, model, run: Run) -> None:
    """The start-up block: what is about to be trained, where, and where to look at it."""
    from fmnist_exp.model import backend

    config, splits = prepared.config, prepared.splits
    validation = f"{len(splits.validation[0]):,} validation" if splits.validation else "no validation"
    lines = [
        f"model      {config.model.name}: {model.count_params():,} parameters"
        + (f" ({', '.join(f'{k}={v}' for k, v in config.model.knobs.items())})" if config.model.knobs else ""),
        f"data       {len(splits.train[0]):,} training, {validation}, {len(splits.test[0]):,} test images from {splits.source}",
        f"training   {config.epochs} epoch{'s' if config.epochs != 1 else ''} at batch size {config.batch_size}, {config.optimizer.name} "
        f"lr {config.optimizer.learning_rate} ({config.optimizer.schedule.name})",
        f"device     {backend.describe()}, {config.trainer.precision}",
        f"run        {run.run_id} in experiment {config.mlflow.experiment_name}",
        f"output     {prepared.output_dir.resolve()}",
        f"watch      {ui_command(prepared.store.uri, run.experiment_id)}",
    ]
    log.info("\n".join(lines))
    warning = backend.slow_precision_warning(config.trainer.precision, backend.cpu_flags(), backend.has_accelerator())
    if warning:
        log.warning(warning)
