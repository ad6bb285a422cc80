"""Keras callbacks the fit stage adds: epoch timing, logging to the run, early stopping, collapse, and
the per-epoch and best checkpoints.

Each is checked once per epoch, never per batch, so the hot loop gains no host synchronisation.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from fmnist_exp.config.schema import EarlyStoppingConfig
from fmnist_exp.data.fashion_mnist import NUM_CLASSES
from fmnist_exp.tracking.active_run import Run
from fmnist_exp.training import run_folder

log = logging.getLogger(__name__)

# A run has "learned" once its training accuracy passed this, and "collapsed" when an epoch's
# training accuracy then falls to within this much of chance (1 / 10 classes).
LEARNED_ACCURACY = 0.5
COLLAPSED_ACCURACY = 2.0 / NUM_CLASSES
# A run "exploded" when an epoch's training accuracy is within COLLAPSED_ACCURACY of chance and its
# finite training loss is above this: hundreds of times the cross-entropy of a uniform guess (ln 10,
# about 2.3) plus any weight penalty of a sound model. A diverging optimizer (Adam at learning rate
# 10) reaches 1e19 and more without ever producing a NaN.
EXPLODED_LOSS = 1000.0


def is_better(monitor: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Accuracies improve upwards, losses downwards; a NaN never improves."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if monitor.endswith("loss"):
        return value < best - min_delta
    return value > best + min_delta


@dataclass(frozen=True)
class BestEpoch:
    """The one rule for a run's best epoch, used by early stopping, the best checkpoint (best.keras),
    the resume and the result.

    The best epoch is the first epoch whose `monitor` improved on every earlier epoch's by more than
    `min_delta`. With early stopping on, `monitor` is trainer.early_stopping.monitor (and its min_delta):
    the metric that decides when to stop also decides which epoch is kept, as Keras's
    restore_best_weights does. Without it, the objective's metric: its best checkpoint is what a
    collapse or NaN stop falls back to. Either way the objective a run reports is the objective's
    figure AT that epoch (ranking.objective), and the test pass and logged model are that epoch's.
    """

    monitor: str
    min_delta: float = 0.0

    @classmethod
    def of_run(cls, stopping: EarlyStoppingConfig, objective_metric: str) -> BestEpoch:
        if stopping.patience:
            return cls(stopping.monitor, stopping.min_delta)
        return cls(objective_metric)

    def improves(self, value: float, best: float | None) -> bool:
        return is_better(self.monitor, value, best, self.min_delta)

    def scan(self, history: dict[str, list[float]]) -> tuple[int | None, float | None]:
        """The best epoch (1-based) of a history and its figure; (None, None) before a usable epoch."""
        best_epoch, best = None, None
        for epoch, value in enumerate(history.get(self.monitor) or [], start=1):
            if self.improves(float(value), best):
                best_epoch, best = epoch, float(value)
        return best_epoch, best


class EpochLogger(keras.callbacks.Callback):
    """Every numeric value of an epoch's logs as a metric at step = epoch number, and a heartbeat."""

    def __init__(self, run: Run):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        metrics = {key: float(value) for key, value in (logs or {}).items() if _loggable(value)}
        self.run.log_metrics(metrics, step=epoch + 1)
        self.run.heartbeat(last_completed_epoch=epoch + 1)


def _loggable(value) -> bool:
    """A value of Keras's epoch logs that MLflow can take: whatever float() accepts (a tensor, a NumPy scalar)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


class ProgressLine(keras.callbacks.Callback):
    """One line per epoch for logs (no terminal): the figures and the estimated time left for the run."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs
        self.started = 0.0
        self.first_epoch: int | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch, self.started = epoch, time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        done = epoch + 1 - self.first_epoch
        elapsed = time.perf_counter() - self.started
        left = elapsed / done * (self.epochs - epoch - 1)
        figures = " ".join(
            f"{key}={logs[key]:.4f}" for key in ("loss", "accuracy", "val_loss", "val_accuracy") if key in logs
        )
        log.info(
            f"epoch {epoch + 1}/{self.epochs} {figures} {logs.get('epoch_seconds', 0):.1f}s, {_duration(left)} left"
        )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


class EarlyStopping(keras.callbacks.Callback):
    """Stops training once `patience` epochs passed without a better epoch by the run's BestEpoch rule.

    It only stops: the best epoch's weights are restored after the fit from checkpoints/best.keras,
    which BestCheckpoint writes by the same rule, so a resumed run restores what an uninterrupted one
    does. After a resume, `history` (the epochs done) gives the best so far."""

    def __init__(self, rule: BestEpoch, patience: int, history: dict[str, list[float]] | None = None):
        super().__init__()
        self.rule = rule
        self.patience = patience
        self.best_epoch, self.best = rule.scan(history or {})

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.rule.monitor)
        if value is None:
            return
        if self.rule.improves(float(value), self.best):
            self.best_epoch, self.best = epoch + 1, float(value)
        elif epoch + 1 - (self.best_epoch or 0) >= self.patience:
            self.model.stop_training = True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the end of an epoch whose loss is NaN or infinite, and remembers it."""

    def __init__(self):
        super().__init__()
        self.diverged_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.diverged_at = epoch + 1
            self.model.stop_training = True


class StopOnCollapse(keras.callbacks.Callback):
    """Stops a run whose training accuracy fell back to about chance after it had learned, or sits
    at chance with an exploded loss (above EXPLODED_LOSS) whether it had learned or not.

    Both keep a finite loss, so the NaN check cannot see them. The epoch's mean training accuracy is
    used, not a validation figure: a brief spike inside an epoch that recovers does not pull a whole
    epoch's mean down to chance.
    """

    def __init__(self, best_so_far: float = 0.0):
        super().__init__()
        self.best = best_so_far
        self.collapsed_at: int | None = None
        self.exploded_at: int | None = None
        self.exploded_loss: float | None = None

    def on_epoch_end(self, epoch, logs=None):
        accuracy, loss = (logs or {}).get("accuracy"), (logs or {}).get("loss")
        if accuracy is None or not np.isfinite(accuracy):
            return
        at_chance = accuracy <= COLLAPSED_ACCURACY
        if at_chance and loss is not None and np.isfinite(loss) and loss > EXPLODED_LOSS:
            self.exploded_at, self.exploded_loss = epoch + 1, float(loss)
            self.model.stop_training = True
        elif self.best >= LEARNED_ACCURACY and at_chance:
            self.collapsed_at = epoch + 1
            self.model.stop_training = True
        self.best = max(self.best, float(accuracy))


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps `best.keras`, the model of the best epoch by the run's BestEpoch rule, written atomically.

    After a resume, `history` (the epochs done) gives the best so far."""

    def __init__(self, output_dir: Path, rule: BestEpoch, history: dict[str, list[float]] | None = None):
        super().__init__()
        self.output_dir = output_dir
        self.rule = rule
        _, self.best = rule.scan(history or {})

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.rule.monitor)
        if value is None or not self.rule.improves(float(value), self.best):
            return
        self.best = float(value)
        run_folder.save_best(self.model, self.output_dir)


class EpochTimer(keras.callbacks.Callback):
    """Adds learning_rate, epoch_seconds and images_per_second to each epoch's logs.

    images_per_second counts the training pass only (it stops the clock when validation begins), so
    it compares across validation schemes. JAX, and every backend on a GPU, run steps asynchronously:
    Python reaches the end of the training pass while the device still works on its last steps, so
    the clock stops only after one number written by the last step has reached the host.
    """

    def __init__(self, train_images: int):
        super().__init__()
        self.train_images = train_images
        self._epoch_start = 0.0
        self._train_end: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._train_end = None
        self._epoch_start = time.perf_counter()

    def _wait_for_device(self) -> None:
        keras.ops.convert_to_numpy(self.model.optimizer.iterations)

    def on_test_begin(self, logs=None):
        if self._train_end is None:
            self._wait_for_device()
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self._wait_for_device()
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._epoch_start
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["epoch_seconds"] = now - self._epoch_start
            logs["images_per_second"] = self.train_images / train_seconds if train_seconds > 0 else 0.0


class Checkpointer(keras.callbacks.Callback):
    """After every epoch: the model with its optimizer state, and the state naming it (run_folder.save_epoch:
    written so that a crash mid-write leaves the previous checkpoint intact)."""

    def __init__(self, output_dir: Path, run_id: str):
        super().__init__()
        self.output_dir = output_dir
        self.run_id = run_id

    def on_epoch_end(self, epoch, logs=None):
        run_folder.save_epoch(self.model, self.output_dir, epoch + 1, self.run_id)
