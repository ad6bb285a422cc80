"""The best epoch: the one rule that names it (callbacks.BestEpoch, for early stopping, checkpoints,
resume and the result alike), giving a model its weights back, and keeping it when training breaks
(a NaN, a collapse to chance, an exploded loss): the run ends FINISHED with that epoch, tagged."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fmnist_exp.analysis import ranking
from fmnist_exp.config.schema import ExperimentConfig
from fmnist_exp.errors import RunStopped, TrainingCollapsed, TrainingDiverged
from fmnist_exp.tracking.active_run import Run
from fmnist_exp.training import run_folder
from fmnist_exp.training.handoffs import Fitted, Prepared

log = logging.getLogger("fmnist_exp.training.experiment")  # the run's own lines, as before


def best_epoch_rule(prepared: Prepared):
    """The run's callbacks.BestEpoch: the early-stopping monitor when early stopping is on, else the objective."""
    from fmnist_exp.training import callbacks

    objective_metric = ranking.objective_metric(prepared.splits.validation is not None)
    return callbacks.BestEpoch.of_run(prepared.config.trainer.early_stopping, objective_metric)


def restore_best_epoch(prepared: Prepared, model, history: dict[str, list[float]]) -> int | None:
    """Give the model the best epoch's weights (checkpoints/best.keras) and return that epoch (1-based).

    best.keras was written by the run's BestEpoch rule, the rule that names the epoch here, by a run
    never interrupted as by one resumed. None, and the model untouched, without a best checkpoint or
    when its weights are not all finite."""
    import keras
    import numpy as np

    best_epoch, _ = best_epoch_rule(prepared).scan(history)
    path = run_folder.best_model(prepared.output_dir)
    if best_epoch is None or not path.is_file():
        return None
    weights = keras.saving.load_model(path).get_weights()
    if not all(np.isfinite(weight).all() for weight in weights):
        return None
    model.set_weights(weights)
    return best_epoch


@dataclass
class Broken:
    """Why training stopped itself: a NaN loss or a collapse, in which epoch, and the advice."""

    tag: str  # diverged_at_epoch | collapsed_at_epoch
    epoch: int
    error: RunStopped


def why_broken(config: ExperimentConfig, chosen: dict) -> Broken | None:
    """A NaN loss or a collapse seen by the fit stage's callbacks, or None."""
    advice = f"lower optimizer.learning_rate (now {config.optimizer.learning_rate}) or set optimizer.clipnorm"
    if (epoch := chosen["non_finite"].diverged_at) is not None:
        return Broken(
            "diverged_at_epoch",
            epoch,
            TrainingDiverged(f"the training loss became NaN or infinite in epoch {epoch}; {advice}"),
        )
    if (epoch := chosen["collapse"].exploded_at) is not None:  # a finite loss blown up, at chance accuracy
        return Broken(
            "diverged_at_epoch",
            epoch,
            TrainingDiverged(
                f"the training loss exploded to {chosen['collapse'].exploded_loss:.3g} in epoch {epoch} with the "
                f"training accuracy at chance level; {advice}"
            ),
        )
    if (epoch := chosen["collapse"].collapsed_at) is not None:
        return Broken(
            "collapsed_at_epoch",
            epoch,
            TrainingCollapsed(
                f"training collapsed in epoch {epoch}: the training accuracy fell to chance level after "
                f"reaching {chosen['collapse'].best:.4f}; {advice}, or stop earlier with "
                "trainer.early_stopping.patience"
            ),
        )
    return None


def keep_best_epoch(prepared: Prepared, model, run: Run, fitted: Fitted, broken: Broken) -> None:
    """After a collapse or a NaN stop, the run goes on with its best epoch (restore_best_epoch).

    The model gets the best epoch's weights, so the test pass, the logged model and the objective are
    that epoch's, as with early stopping; the run ends FINISHED, tagged with the epoch it broke in
    (docs/production.md says why). Without a best checkpoint whose weights are all finite (a NaN in
    the first epoch) there is nothing to keep, and the run ends FAILED as before.
    """
    fitted.best_epoch = restore_best_epoch(prepared, model, fitted.history)
    if fitted.best_epoch is None:
        raise broken.error
    path = run_folder.best_model(prepared.output_dir)
    fitted.stopped = (
        f"{broken.error} (the run keeps epoch {fitted.best_epoch}'s model, from {path}, and is evaluated with it)"
    )
    run.set_tags({broken.tag: broken.epoch, "mlflow.note.content": fitted.stopped})
    log.warning(fitted.stopped)
