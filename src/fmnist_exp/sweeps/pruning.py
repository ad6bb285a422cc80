"""Pruning: stop a sweep's job that clearly trails the sweep's other jobs at the same epoch.

The rule is the median rule with a warm-up: after epoch `warmup_epochs`, a job whose objective
figure (validation accuracy, else training accuracy) at epoch e is below the median of the other
jobs' figures at epoch e stops, provided at least `min_jobs` other jobs reached e. The other jobs'
figures are read from the shared MLflow store (the sweep's child runs), so the rule works with every
sweeper (grid, Optuna) and every launcher (in-process, joblib, Ray).
"""

from __future__ import annotations

import logging
import statistics

import keras

from fmnist_exp.config.schema import PruningConfig
from fmnist_exp.tracking.active_run import Run
from fmnist_exp.tracking.store import Store

log = logging.getLogger(__name__)


def should_prune(
    value: float, others: list[float], epoch: int, config: PruningConfig, last_epoch: int | None = None
) -> bool:
    """The median rule: `value` at `epoch` against the other jobs' values at the same epoch.

    Never after the job's last epoch: stopping then saves nothing, and the search would record a
    finished job as pruned (Optuna's samplers learn less from a PRUNED trial than a COMPLETE one).
    """
    if epoch < config.warmup_epochs or len(others) < config.min_jobs:
        return False
    if last_epoch is not None and epoch >= last_epoch:
        return False
    return value < statistics.median(others)


class SweepPruner(keras.callbacks.Callback):
    """Stops training when `should_prune` says so; the run then ends FINISHED, tagged pruned."""

    def __init__(self, store: Store, run: Run, parent_run_id: str, metric: str, config: PruningConfig):
        super().__init__()
        self.store = store
        self.run = run
        self.parent_run_id = parent_run_id
        self.metric = metric
        self.config = config
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.metric)
        if value is None or epoch + 1 < self.config.warmup_epochs:
            return
        others = self.others_at(epoch + 1)
        if should_prune(float(value), others, epoch + 1, self.config, last_epoch=self.params.get("epochs")):
            self.pruned_at = epoch + 1
            self.model.stop_training = True
            self.run.set_tags({"pruned": "true", "pruned_at_epoch": epoch + 1})
            log.info(
                f"pruned after epoch {epoch + 1}: {self.metric}={float(value):.4f} is below the median "
                f"{statistics.median(others):.4f} of {len(others)} other jobs at that epoch"
            )

    def others_at(self, epoch: int) -> list[float]:
        """The other jobs' figures at `epoch`, for jobs that reached it (pruned and failed ones included)."""
        values = []
        for sibling in self.store.children(self.parent_run_id):
            if sibling.run_id == self.run.run_id:
                continue
            value = self.store.metric_at(sibling.run_id, self.metric, epoch)
            if value is not None:
                values.append(value)
        return values
