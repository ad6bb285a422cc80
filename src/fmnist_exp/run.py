"""Hydra entry point: `python -m fmnist_exp.run [overrides]`, `-m` for sweeps."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fmnist_exp.config import register_schemas, to_experiment_config
from fmnist_exp.data import DataError
from fmnist_exp.tracking import TrackingError


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def job(composed: DictConfig) -> float:
    """One job: validate, train, log; returns the objective (validation accuracy) for sweepers."""
    runtime = HydraConfig.get()
    try:
        config = to_experiment_config(composed)
        from fmnist_exp import experiment

        outcome = experiment.run(config, Path(runtime.runtime.output_dir), runtime.overrides.task)
    except (ValueError, DataError, TrackingError) as error:
        # A user error: one clear line and a non-zero exit, no traceback.
        print(f"fmnist_exp: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"test_accuracy={outcome.test_accuracy:.4f} run_id={outcome.run_id}")
    print(f"Compare runs: mlflow ui --host 127.0.0.1 --backend-store-uri {config.mlflow.tracking_uri}")
    return outcome.objective


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter.
    register_schemas()
    job()


if __name__ == "__main__":
    main()
