"""One experiment as its stages: prepare, build or restore, fit, evaluate and log.

    prepared = prepare(config, output_dir)          # data, output folder (the config arrives validated)
    model = build(prepared)                          # or restore(...) from a checkpoint
    with active_run.start(prepared.store, ...) as run:
        fitted = fit(prepared, model, run)           # model.fit with the runner's callbacks
        outcome = evaluate_and_log(prepared, model, run, fitted)

`run()` and `resume()` are those stages in order; each stage is a plain function a test (or
`bench`) can call. Adding a callback touches `callbacks_for`; adding an artifact touches
`evaluate_and_log`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fmnist_exp.analysis import ranking
from fmnist_exp.config import identity
from fmnist_exp.config import schema as config_module
from fmnist_exp.config.schema import ExperimentConfig
from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.errors import UserError
from fmnist_exp.runtime.interrupts import signals_as_interrupt
from fmnist_exp.tracking import active_run, registry
from fmnist_exp.tracking.active_run import Run
from fmnist_exp.tracking.store import Store
from fmnist_exp.training import best_epoch, run_folder, run_record
from fmnist_exp.training.handoffs import Fitted, Outcome, Prepared

log = logging.getLogger(__name__)

# Callbacks a caller adds to the fit stage, made from the job's run and its objective metric (a
# sweep adds its pruner this way, so that one run's code knows nothing of sweeps). A callback with a
# `pruned_at` epoch that is not None ended the job early.
ExtraCallbacks = Callable[[Run, str], dict]


# -- the stages ---------------------------------------------------------------------------------


def prepare(
    config: ExperimentConfig, output_dir: Path, overrides: Sequence[str] = (), store: Store | None = None
) -> Prepared:
    """What the data can get wrong fails here, before Keras and before a run. The config arrives
    validated (model.validation.to_experiment_config at the command's boundary), its store checked."""
    started_at = job_start()
    store = store or Store(config.mlflow.tracking_uri, config.mlflow.orphan_after_minutes)
    splits = data.load(config.data, config.seed)
    data.check_splits(splits, held_out=config.data.validation == "holdout")
    output_dir = run_folder.make(Path(output_dir))
    run_folder.write_inputs(output_dir, config_module.to_yaml(config), list(overrides))
    return Prepared(config, output_dir, list(overrides), splits, store, started_at)


# Whether this process has started a run already: the first run's clock starts with the command (its
# imports and start-up count), a later one's (a sweep's next job under the in-process launcher) with
# its own preparation.
_RAN_BEFORE = False


def job_start() -> float:
    """When this run began, as time.time(): the process's start for its first run, now for a later one."""
    global _RAN_BEFORE
    if _RAN_BEFORE:
        return time.time()
    _RAN_BEFORE = True
    import psutil

    return psutil.Process().create_time()


def start_keras(config: ExperimentConfig):
    """Keras for this job: its backend, a clean session, threads, determinism, seeds and precision.

    Returns keras. The backend is chosen here, before anything imports Keras, and after everything
    that can be wrong with the input has been found (prepare), so that a bad input costs no TensorFlow
    start-up."""
    from fmnist_exp.model import backend
    from fmnist_exp.runtime import noise

    if config.trainer.backend == "tensorflow":
        noise.import_tensorflow()  # before Keras imports it: without its CPU-machine start-up lines
    backend.activate(config.trainer, config.deterministic)
    import keras

    from fmnist_exp.training import device

    # Jobs of a sweep share this process under Hydra's default launcher: start each from a clean slate.
    keras.backend.clear_session()
    device.configure_gpus()
    device.configure_threads(config.trainer.threads)
    device.configure_determinism(config.deterministic)
    keras.utils.set_random_seed(config.seed)
    device.configure_precision(config.trainer.precision)
    return keras


def build(prepared: Prepared):
    """A new, compiled model from the config."""
    from fmnist_exp.model import keras_model, optim
    from fmnist_exp.training import device

    config = prepared.config
    with device.strategy_scope(config.trainer.distribute):
        model = keras_model.build(config.model.layers, name=config.model.name, augmentation=config.model.augmentation)
        for line in keras_model.settle_batch_norm(model, config.model.layers, prepared.steps_per_epoch):
            log.warning(line)
        optimizer = optim.build(config.optimizer, prepared.steps_per_epoch, config.epochs)
        device.compile_model(model, optimizer, config.trainer)
    return model


def restore(prepared: Prepared, state: dict):
    """The checkpointed model, compiled, with its optimizer state."""
    import zipfile

    from fmnist_exp.training import device

    path = run_folder.checkpoint_file(prepared.output_dir, state)
    with device.strategy_scope(prepared.config.trainer.distribute):
        try:
            return run_folder.load_checkpoint(prepared.output_dir, state)
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
            reason = " ".join(str(error).split())[:300]
            raise UserError(
                f"resume: the checkpoint {path} cannot be read ({type(error).__name__}: {reason}); "
                "it is probably truncated. Start the run afresh, or restore the file."
            ) from error


def fit(
    prepared: Prepared,
    model,
    run: Run,
    first_epoch: int = 0,
    last_epoch: int | None = None,
    extra_callbacks: ExtraCallbacks | None = None,
    stream: str = "auto",
) -> Fitted:
    """Train epochs first_epoch+1 .. last_epoch (default: the config's) with the runner's callbacks.

    `stream` picks the training stream (streams.stream_kind): tf.data on TensorFlow, a NumPy PyDataset
    elsewhere; bench compares the two."""
    from fmnist_exp.training import device, streams

    config = prepared.config
    last_epoch = config.epochs if last_epoch is None else last_epoch
    images, labels = prepared.splits.train
    batches = streams.training_pipeline(images, labels, config.batch_size, config.seed, first_epoch, last_epoch, stream)
    validation = prepared.splits.validation
    callbacks = callbacks_for(prepared, run, first_epoch, extra_callbacks)
    started, started_at = time.perf_counter(), time.time()
    model.fit(
        batches,
        validation_data=streams.pipeline(*validation, config.batch_size) if validation else None,
        initial_epoch=first_epoch,
        epochs=last_epoch,
        steps_per_epoch=prepared.steps_per_epoch,
        callbacks=list(callbacks.values()),
        verbose=0 if "progress" in callbacks else device.verbosity(config.trainer.verbose),
        shuffle=False,  # the stream already orders each epoch by (seed, epoch)
    )
    seconds = time.perf_counter() - started
    pruned_at = next((c.pruned_at for c in callbacks.values() if getattr(c, "pruned_at", None) is not None), None)
    fitted = Fitted(run.histories(), seconds, pruned_at=pruned_at, first_epoch=first_epoch, started_at=started_at)
    broken = best_epoch.why_broken(config, callbacks)
    if broken is not None:
        best_epoch.keep_best_epoch(prepared, model, run, fitted, broken)
    elif config.trainer.early_stopping.patience:
        fitted.best_epoch = best_epoch.restore_best_epoch(prepared, model, fitted.history)
    return fitted


def callbacks_for(prepared: Prepared, run: Run, first_epoch: int, extra: ExtraCallbacks | None = None) -> dict:
    """The runner's callbacks, by name, in the order Keras calls them."""
    from fmnist_exp.training import callbacks, device

    config = prepared.config
    history = run.histories() if first_epoch else {}
    objective_metric = ranking.objective_metric(prepared.splits.validation is not None)
    rule = best_epoch.best_epoch_rule(prepared)
    chosen = {
        "timer": callbacks.EpochTimer(len(prepared.splits.train[0])),
        "non_finite": callbacks.StopOnNonFiniteLoss(),
        "collapse": callbacks.StopOnCollapse(max(history.get("accuracy", [0.0]))),
    }
    stopping = config.trainer.early_stopping
    if stopping.patience:
        chosen["early_stopping"] = callbacks.EarlyStopping(rule, stopping.patience, history)
    chosen["logger"] = callbacks.EpochLogger(run)
    if config.trainer.verbose == "auto" and device.verbosity("auto") != 1:  # a log, not a terminal
        chosen["progress"] = callbacks.ProgressLine(config.epochs)
    if extra is not None:
        chosen.update(extra(run, objective_metric))
    chosen["best_checkpoint"] = callbacks.BestCheckpoint(prepared.output_dir, rule, history)
    chosen["checkpoint"] = callbacks.Checkpointer(prepared.output_dir, run.run_id)
    return chosen


def evaluate_and_log(prepared: Prepared, model, run: Run, fitted: Fitted) -> Outcome:
    """The test pass, reports, curves, the model and its registration, and the objective."""
    from fmnist_exp.analysis import per_class, plots
    from fmnist_exp.tracking import dataset_inputs, logged_model
    from fmnist_exp.training import streams

    config, output_dir = prepared.config, prepared.output_dir
    run.log_metrics({"train_seconds": fitted.seconds, **time_to_first_epoch(prepared, fitted)})
    model_id = None  # the LoggedModel the test metrics belong to, logged first so they can name it
    if config.mlflow.log_model or config.register:
        model_id = logged_model.log(run, model, prepared.splits.test[0][:2], output_dir)
    test = streams.test_pass(model, *prepared.splits.test, config.batch_size)
    test_set = dataset_inputs.describe(config, prepared.splits)["test"]
    objective = ranking.objective(fitted.history, fitted.best_epoch)
    final = {"objective": objective, **({"best_epoch": fitted.best_epoch} if fitted.best_epoch else {})}
    run.log_metrics(final, model_id=model_id)
    run.log_metrics({"test_loss": test.loss, "test_accuracy": test.accuracy}, model_id=model_id, dataset=test_set)
    report = per_class.write_reports(*prepared.splits.test, test.probabilities, output_dir / "evaluation")
    run.log_metrics(report, model_id=model_id, dataset=test_set)
    run.log_artifacts(output_dir / "evaluation", "evaluation")
    run.log_artifact(plots.learning_curves(fitted.history, output_dir / "learning_curves.png"), "plots")
    if config.register:
        registry.register_model(prepared.store, run.run_id, config.mlflow.registered_model_name)
    # Where the time went, for a person reading the run: see time_to_first_epoch and train_seconds.
    run.log_metrics({"time/to_result_seconds": time.time() - prepared.started_at})
    return Outcome(
        run_id=run.run_id,
        objective=objective,
        test_accuracy=test.accuracy,
        test_loss=test.loss,
        history=fitted.history,
        best_epoch=fitted.best_epoch,
        pruned_at=fitted.pruned_at,
        stopped=fitted.stopped,
    )


def time_to_first_epoch(prepared: Prepared, fitted: Fitted) -> dict[str, float]:
    """Seconds from the run's start (the command's, for its first run) to the end of the first epoch
    this process trained: start-up, data, build and the first epoch with its compile."""
    epochs = fitted.history.get("epoch_seconds", [])
    if fitted.started_at is None or len(epochs) <= fitted.first_epoch:
        return {}
    first = fitted.started_at - prepared.started_at + epochs[fitted.first_epoch]
    return {"time/to_first_epoch_seconds": first, "time/startup_seconds": fitted.started_at - prepared.started_at}


# -- whole runs ---------------------------------------------------------------------------------


def run(
    config: ExperimentConfig,
    output_dir: Path,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
    store: Store | None = None,
    extra_callbacks: ExtraCallbacks | None = None,
    extra_tags: dict | None = None,
) -> Outcome:
    """Train and evaluate one config in a new MLflow run (a child of `parent_run_id` in a sweep,
    tagged with `extra_tags`, such as a sweep's replicate number)."""
    prepared = prepare(config, output_dir, overrides, store)
    name = config.mlflow.run_name or identity.run_name(prepared.overrides)
    with run_folder.one_writer(prepared.output_dir), signals_as_interrupt():
        start_keras(config)
        model = build(prepared)
        with (
            active_run.start(
                prepared.store,
                config.mlflow.experiment_name,
                name,
                {**run_record.run_tags(prepared, name), **(extra_tags or {})},
                parent_run_id=parent_run_id,
            ) as active,
            active.system_metrics(config.mlflow.system_metrics),
        ):
            run_folder.write_run_id(prepared.output_dir, active.run_id)
            run_record.log_inputs(prepared, active, model)
            run_record.announce(prepared, model, active)
            fitted = fit(prepared, model, active, extra_callbacks=extra_callbacks)
            return evaluate_and_log(prepared, model, active, fitted)


def resume(target: str, store: Store) -> Outcome:
    """Continue the run whose output folder (or run id) is `target` from its last completed epoch.

    A run stopped in its first epoch starts again from epoch 0; a run whose epochs are all done
    (stopped during its test pass or model logging) only finishes what is missing. Either way it is
    the same MLflow run.
    """
    from fmnist_exp.model.validation import validate

    store.check()
    folder = run_folder.locate(target, store)
    with run_folder.one_writer(folder):
        config = config_module.from_yaml(folder / run_folder.CONFIG_FILE)
        validate(config)  # a config read from a file: this is its boundary
        overrides = run_folder.read_overrides(folder)
        prepared = prepare(config, folder, overrides, store)
        run_id = run_folder.run_id_of(folder)
        if store.get_run(run_id).status == "FINISHED":
            raise UserError(f"resume: run {run_id} already FINISHED; there is nothing to resume")
        state = run_folder.checkpoint_state(folder)
        with signals_as_interrupt():
            start_keras(config)
            model = restore(prepared, state) if state else build(prepared)
            first_epoch = state["epoch"] if state else 0
            with (
                active_run.start(store, config.mlflow.experiment_name, "", {}, run_id=run_id) as active,
                active.system_metrics(config.mlflow.system_metrics, resume=True),
            ):
                active.set_tags({"resumed_from_epoch": first_epoch})
                log.info(f"resuming run {run_id} after epoch {first_epoch} of {config.epochs}")
                if first_epoch < config.epochs:
                    fitted = fit(prepared, model, active, first_epoch)
                else:
                    fitted = finished_fit(prepared, model, active)
                return evaluate_and_log(prepared, model, active, fitted)


def finished_fit(prepared: Prepared, model, run: Run) -> Fitted:
    """A run whose epochs are all done: its history from the store; with early stopping, the best
    epoch's weights (restore_best_epoch), as the fit stage gives them."""
    history = run.histories()
    seconds = sum(history.get("epoch_seconds", []))
    fitted = Fitted(history, seconds)
    if prepared.config.trainer.early_stopping.patience:
        fitted.best_epoch = best_epoch.restore_best_epoch(prepared, model, history)
    return fitted


def result_line(outcome: Outcome) -> str:
    """What a finished job says last, on the terminal and in its log."""
    line = f"test_accuracy={outcome.test_accuracy:.4f} objective={outcome.objective:.4f} run_id={outcome.run_id}"
    if outcome.stopped:  # a collapse or NaN stop: its first clause says which, and when
        line += f" [{outcome.stopped.split(':')[0].split(';')[0]}; epoch {outcome.best_epoch}'s model kept]"
    return line
