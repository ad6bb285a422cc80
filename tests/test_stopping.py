"""What stops training early: the pruning rule, early stopping with the best weights, collapse and NaN."""

from __future__ import annotations

import math
import re
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from fmnist_exp import errors
from fmnist_exp.config.schema import PruningConfig
from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.sweeps.pruning import should_prune
from fmnist_exp.tracking import logged_model
from fmnist_exp.tracking.store import Store
from fmnist_exp.training import callbacks, experiment
from helpers import SMALL_RUN, TINY_RUN, typed_config

RULE = PruningConfig(enabled=True, warmup_epochs=2, min_jobs=3)

# Recorded validation-accuracy curves of a 4-job sweep (epochs 1-3); the last job trails.
CURVES = {
    "a": [0.71, 0.78, 0.81],
    "b": [0.69, 0.77, 0.80],
    "c": [0.73, 0.79, 0.83],
    "trailing": [0.55, 0.61, 0.64],
}


@pytest.mark.parametrize(
    "value, others, epoch, pruned",
    [
        (0.61, [0.78, 0.77, 0.79], 2, True),  # below the median after the warm-up
        (0.55, [0.71, 0.69, 0.73], 1, False),  # still warming up
        (0.61, [0.78, 0.77], 2, False),  # too few other jobs reached this epoch
        (0.78, [0.78, 0.77, 0.79], 2, False),  # at the median: kept
        (0.80, [0.78, 0.77, 0.79, 0.10], 2, False),  # above the median of four
    ],
)
def test_median_rule(value, others, epoch, pruned):
    assert should_prune(value, others, epoch, RULE) is pruned


def test_a_job_is_never_pruned_after_its_last_epoch():
    assert should_prune(0.61, [0.78, 0.77, 0.79], 2, RULE, last_epoch=3) is True
    assert should_prune(0.61, [0.78, 0.77, 0.79], 3, RULE, last_epoch=3) is False


def test_median_rule_on_recorded_curves():
    pruned = {}
    for name, curve in CURVES.items():
        others = [values for other, values in CURVES.items() if other != name]
        pruned[name] = next(
            (
                epoch
                for epoch in range(1, 4)
                if should_prune(curve[epoch - 1], [values[epoch - 1] for values in others], epoch, RULE)
            ),
            None,
        )
    # b falls below the median of the others (0.78) at epoch 2 too: the rule prunes about half of a
    # sweep's jobs once the warm-up is over, the trailing job and the weaker of the leaders.
    assert pruned == {"a": None, "b": 2, "c": None, "trailing": 2}


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


def test_collapse_is_seen_after_learning_and_not_before():
    guard = callbacks.StopOnCollapse()
    guard.set_model(tiny_model())
    for epoch, accuracy in enumerate([0.12, 0.15, 0.45]):  # never learned: no collapse
        guard.on_epoch_end(epoch, {"accuracy": accuracy})
    assert guard.collapsed_at is None and not guard.model.stop_training
    for epoch, accuracy in enumerate([0.82, 0.88, 0.10], start=3):  # learned, then fell to chance
        guard.on_epoch_end(epoch, {"accuracy": accuracy})
    assert guard.collapsed_at == 6 and guard.model.stop_training


def test_a_resumed_run_remembers_that_it_had_learned():
    guard = callbacks.StopOnCollapse(best_so_far=0.9)
    guard.set_model(tiny_model())
    guard.on_epoch_end(40, {"accuracy": 0.1})
    assert guard.collapsed_at == 41


def test_early_stopping_keeps_the_best_epochs_weights(tmp_path, tracking_uri):
    overrides = [
        *SMALL_RUN,
        "epochs=5",
        "model=fast_cnn",
        "optimizer.learning_rate=0.01",
        "deterministic=true",
        "trainer.early_stopping.patience=1",
        f"mlflow.tracking_uri={tracking_uri}",
    ]
    config = typed_config(overrides)
    outcome = experiment.run(config, tmp_path / "run")
    history = outcome.history["val_accuracy"]
    best = int(np.argmax(history)) + 1
    assert outcome.best_epoch == best
    run = mlflow.MlflowClient(tracking_uri).get_run(outcome.run_id)
    assert run.data.metrics["best_epoch"] == best
    assert run.data.metrics["objective"] == pytest.approx(history[best - 1])
    assert outcome.objective == pytest.approx(history[best - 1])
    # Early stopping stopped once validation accuracy had not improved for one epoch.
    assert len(history) == min(5, best + 1)
    # The logged model holds the best epoch's weights: on the validation images it scores exactly
    # what was logged for the best epoch.
    model = logged_model.load(f"runs:/{outcome.run_id}/model", Store(tracking_uri))
    images, labels = data.load(config.data, config.seed).validation
    accuracy = float((np.asarray(model.predict(images, verbose=0)).argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(history[best - 1], abs=1e-6)
    assert (tmp_path / "run" / "checkpoints" / "best.keras").is_file()


def test_without_early_stopping_the_objective_is_the_last_epoch(finished_run):
    outcome, run, _, _ = finished_run
    assert outcome.best_epoch is None and "best_epoch" not in run.data.metrics
    assert run.data.metrics["objective"] == pytest.approx(outcome.history["val_accuracy"][-1])
    assert not math.isnan(outcome.objective)


class Sabotage(keras.callbacks.Callback):
    """Sets every weight to `value` as epoch `epoch` (0-based) begins: with zeros the network can only
    learn the class prior (a collapse to chance with a finite loss), with NaN the loss is NaN."""

    def __init__(self, epoch: int, value: float):
        super().__init__()
        self.epoch, self.value = epoch, value

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.set_weights([np.full_like(weight, self.value) for weight in self.model.get_weights()])


# Where the docs say what a NaN or a collapse does to a run: (page, the words that begin the passage).
# A passage runs to the next blank line or list item.
STOPPED_RUN_PASSAGES = [
    ("README.md", "If training collapses"),
    ("docs/sweeps.md", "**Collapse and NaN.**"),
    ("docs/reliability.md", "**Training that breaks stops.**"),
    ("docs/production.md", "- status **"),
    ("docs/design.md", "A run that stops itself"),
]


def assert_the_docs_say_a_stopped_run_ends(status: str) -> None:
    """Each passage names `status` (what a real collapsed or NaN-stopped run ended with) and no other
    status or exit 3, except in what it says of a NaN in the first epoch (no epoch to keep: FAILED)."""
    root = Path(__file__).resolve().parent.parent
    for page, start in STOPPED_RUN_PASSAGES:
        text = root.joinpath(page).read_text(encoding="utf-8")
        assert start in text, f"{page} no longer says {start!r}: update STOPPED_RUN_PASSAGES"
        passage = re.split(r"\n\s*\n|\n\s*- ", text[text.index(start) + 1 :])[0]
        claims = " ".join(part for part in re.split(r"(?<=[.;])\s+", passage) if "first epoch" not in part)
        assert set(re.findall(r"\b(FINISHED|FAILED|KILLED)\b", claims)) == {status}, f"{page}: {passage}"
        assert not re.search(r"exits? 3", claims), f"{page}: {passage}"


@pytest.mark.parametrize("value, tag", [(0.0, "collapsed_at_epoch"), (math.nan, "diverged_at_epoch")])
def test_a_collapse_or_a_nan_stop_keeps_the_best_epoch(tmp_path, tracking_uri, monkeypatch, value, tag):
    """Training learns for two epochs and breaks in the third: the run restores the best epoch's
    checkpoint, evaluates and logs it as a normal run does, and says that it broke and when."""
    real_callbacks = experiment.callbacks_for

    def with_sabotage(*arguments, **keywords):
        return {"sabotage": Sabotage(epoch=2, value=value), **real_callbacks(*arguments, **keywords)}

    monkeypatch.setattr(experiment, "callbacks_for", with_sabotage)
    overrides = [
        *SMALL_RUN,
        "epochs=4",
        "model=fast_cnn",
        "optimizer.learning_rate=0.01",
        "deterministic=true",
        f"mlflow.tracking_uri={tracking_uri}",
    ]
    config = typed_config(overrides)
    outcome = experiment.run(config, tmp_path / "run")
    history = outcome.history["val_accuracy"]
    assert len(history) == 3  # stopped after the epoch that broke
    assert max(outcome.history["accuracy"][:2]) >= callbacks.LEARNED_ACCURACY  # it had learned
    best = 1 + int(np.argmax(history[:2]))
    assert outcome.best_epoch == best
    assert outcome.objective == pytest.approx(history[best - 1])
    assert "epoch 3" in outcome.stopped and f"keeps epoch {best}'s model" in outcome.stopped
    assert f"epoch {best}'s model kept]" in experiment.result_line(outcome)

    run = mlflow.MlflowClient(tracking_uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert_the_docs_say_a_stopped_run_ends(run.info.status)
    assert run.data.tags[tag] == "3"
    assert run.data.tags["mlflow.note.content"] == outcome.stopped
    assert run.data.metrics["objective"] == pytest.approx(history[best - 1])
    assert run.data.metrics["best_epoch"] == best
    assert run.data.metrics["test_accuracy"] == pytest.approx(outcome.test_accuracy)
    assert outcome.test_accuracy > 0.5  # the best epoch's model, not the broken one
    # The logged model is the best epoch's: on the validation images it scores what that epoch logged.
    model = logged_model.load(f"runs:/{outcome.run_id}/model", Store(tracking_uri))
    images, labels = data.load(config.data, config.seed).validation
    accuracy = float((np.asarray(model.predict(images, verbose=0)).argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(history[best - 1], abs=1e-6)


@pytest.mark.slow
def test_a_nan_in_the_first_epoch_leaves_nothing_to_keep_and_fails(tmp_path, tracking_uri):
    overrides = [*SMALL_RUN, "optimizer.learning_rate=1e6", f"mlflow.tracking_uri={tracking_uri}"]
    with pytest.raises(errors.TrainingDiverged, match="NaN or infinite in epoch 1"):
        experiment.run(typed_config(overrides), tmp_path / "run")
    (run,) = mlflow.MlflowClient(tracking_uri).search_runs(
        [mlflow.MlflowClient(tracking_uri).get_experiment_by_name("fmnist_exp").experiment_id]
    )
    assert run.info.status == "FAILED" and "test_accuracy" not in run.data.metrics


def test_a_loss_that_explodes_at_chance_accuracy_stops_tagged_with_its_best_epoch(tmp_path, tracking_uri):
    """Adam at learning rate 10 blows the loss up to about 1e19 at chance accuracy and never to NaN:
    the run stops as a collapse does, keeps its best epoch, and says that its loss exploded."""
    overrides = [*TINY_RUN, "epochs=4", "optimizer.learning_rate=10", "mlflow.log_model=false",
                 f"mlflow.tracking_uri={tracking_uri}"]  # fmt: skip
    outcome = experiment.run(typed_config(overrides), tmp_path / "run")
    losses = outcome.history["loss"]
    assert len(losses) < 4 and math.isfinite(losses[-1]) and losses[-1] > callbacks.EXPLODED_LOSS
    assert outcome.history["accuracy"][-1] <= callbacks.COLLAPSED_ACCURACY
    assert outcome.best_epoch is not None and f"keeps epoch {outcome.best_epoch}'s model" in outcome.stopped
    run = mlflow.MlflowClient(tracking_uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["diverged_at_epoch"] == str(len(losses))
    assert (
        f"the training loss exploded to {losses[-1]:.3g} in epoch {len(losses)}" in run.data.tags["mlflow.note.content"]
    )
    assert run.data.metrics["best_epoch"] == outcome.best_epoch
    assert run.data.metrics["objective"] == pytest.approx(outcome.history["val_accuracy"][outcome.best_epoch - 1])


class InterruptAfter(keras.callbacks.Callback):
    """Raises KeyboardInterrupt (what Ctrl-C and SIGTERM become) once epoch `epoch` (1-based) is
    checkpointed: the run ends KILLED with its checkpoints, as after a real signal."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


# Early stopping on val_loss with a min_delta, where the best epoch by that rule (3: epochs 4 and 5
# improve val_loss by less than min_delta) is not the best by val_accuracy (5). Checked below, so that
# the test cannot pass vacuously.
MIN_DELTA = 0.25
VAL_LOSS_STOPPING = [
    *TINY_RUN,
    "epochs=5",
    "model=fast_cnn",
    "model.dropout=0",
    "optimizer.learning_rate=0.01",
    "deterministic=true",
    "trainer.early_stopping.patience=2",
    "trainer.early_stopping.monitor=val_loss",
    f"trainer.early_stopping.min_delta={MIN_DELTA}",
]


@pytest.mark.slow
@pytest.mark.parametrize("interrupted_after", [4, 5])
def test_a_resumed_run_restores_and_reports_the_best_epoch_of_the_uninterrupted_run(
    tmp_path, tracking_uri, monkeypatch, interrupted_after
):
    """The best epoch is chosen by one rule (callbacks.BestEpoch): a run interrupted after an epoch
    and resumed (mid-training, or after its last epoch) restores and reports the same epoch as the run
    never interrupted: the best by the early-stopping monitor (val_loss, with its min_delta), with the
    objective (val_accuracy) taken at that epoch."""
    config = typed_config([*VAL_LOSS_STOPPING, f"mlflow.tracking_uri={tracking_uri}"])
    reference = experiment.run(config, tmp_path / "reference")
    losses, accuracies = reference.history["val_loss"], reference.history["val_accuracy"]
    best, lowest = 1, losses[0]
    for epoch, loss in enumerate(losses[1:], start=2):
        if loss < lowest - MIN_DELTA:
            best, lowest = epoch, loss
    assert best != 1 + int(np.argmax(accuracies)), f"the monitors agree ({losses}, {accuracies}): nothing shown"
    assert best < interrupted_after <= len(losses)
    assert reference.best_epoch == best
    assert reference.objective == accuracies[best - 1]

    real_callbacks = experiment.callbacks_for
    with monkeypatch.context() as patch:
        patch.setattr(
            experiment,
            "callbacks_for",
            lambda *a, **k: {**real_callbacks(*a, **k), "interrupt": InterruptAfter(interrupted_after)},
        )
        with pytest.raises(KeyboardInterrupt):
            experiment.run(config, tmp_path / "interrupted")
    resumed = experiment.resume(str(tmp_path / "interrupted"), Store(tracking_uri))

    timing = {"epoch_seconds", "images_per_second", "train_seconds"}
    assert {k: v for k, v in resumed.history.items() if k not in timing} == {
        k: v for k, v in reference.history.items() if k not in timing
    }
    assert (resumed.best_epoch, resumed.objective, resumed.test_accuracy, resumed.test_loss) == (
        reference.best_epoch,
        reference.objective,
        reference.test_accuracy,
        reference.test_loss,
    )
    client = mlflow.MlflowClient(tracking_uri)
    logged = [client.get_run(outcome.run_id).data.metrics for outcome in (reference, resumed)]
    for key in ("best_epoch", "objective", "test_accuracy", "test_loss"):
        assert logged[0][key] == logged[1][key], key
