"""What each stage of an experiment hands the next: Prepared (checked and loaded), Fitted (trained),
Outcome (evaluated and logged: what a command or a sweep reads of a finished run)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fmnist_exp.config.schema import ExperimentConfig
from fmnist_exp.data.fashion_mnist import Splits
from fmnist_exp.tracking.store import Store


@dataclass
class Prepared:
    """Everything checked and loaded; nothing trained, no run started."""

    config: ExperimentConfig
    output_dir: Path
    overrides: list[str]
    splits: Splits
    store: Store
    started_at: float = 0.0  # time.time() when the command, or this job of a sweep, began (experiment.job_start)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.splits.train[0]) / self.config.batch_size)


@dataclass
class Fitted:
    history: dict[str, list[float]]
    seconds: float
    best_epoch: int | None = None  # with early stopping: the epoch whose weights the model holds
    pruned_at: int | None = None
    stopped: str | None = None  # a collapse or NaN stop that kept the best epoch: what happened, plainly
    first_epoch: int = 0  # the epochs done before this process's fit (a resume's)
    started_at: float | None = None  # time.time() when this process's fit began; None: nothing was fitted


@dataclass
class Outcome:
    run_id: str
    objective: float  # see ranking.objective
    test_accuracy: float
    test_loss: float
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None
    pruned_at: int | None = None
    stopped: str | None = None  # see Fitted.stopped
