"""`bench time_to_accuracy=<preset> seeds=N`: a preset's command, as a person types it, timed per seed.

Each seed runs `python -m fmnist_exp.run experiment=<preset> seed=<s> data.validation=test` in a
process of its own, so start-up (imports, the Keras backend, decoding the data) counts as it does for
a person. `data.validation=test` is the article's way of watching the test accuracy epoch by epoch;
it trains on the same images as a preset that validates on nothing, and adds one test pass per
epoch. The seconds to the target are read from the run's own record: `time/startup_seconds` plus the
epochs' `epoch_seconds` up to the first epoch at the target.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmnist_exp.commands.machine import compose, machine, matmul_peak_flops
from fmnist_exp.errors import ConfigError
from fmnist_exp.model.layers import count_multiply_adds


def measure(preset: str, target: float, seeds: int, overrides: list[str]) -> dict:
    """The per-seed figures, their mean and worst, and the training steps' share of the matmul peak."""
    config = compose([f"experiment={preset}", *overrides])  # a bad preset or value: refused before any run
    with tempfile.TemporaryDirectory() as scratch:
        runs = [one_seed(preset, seed, target, overrides, Path(scratch)) for seed in range(1, seeds + 1)]
    peak = matmul_peak_flops()  # measured after the runs, with nothing else of ours training
    flops_per_image = 6 * count_multiply_adds(config.model.layers)
    for run in runs:
        run["fraction_of_matmul_peak"] = run["training_images_per_second"] * flops_per_image / peak
    walls = [run["command_seconds"] for run in runs]
    accuracies = [run["final_test_accuracy"] for run in runs]
    reached = [run["seconds_to_target"] for run in runs]
    return {
        "machine": machine(),
        "preset": preset,
        "target": target,
        "seeds": [run["seed"] for run in runs],
        "per_seed": runs,
        "all_reached": all(seconds is not None for seconds in reached),
        "seconds_to_target_mean": statistics.fmean(reached) if None not in reached else None,
        "seconds_to_target_worst": max(reached) if None not in reached else None,
        "command_seconds_mean": statistics.fmean(walls),
        "command_seconds_worst": max(walls),
        "final_test_accuracy_mean": statistics.fmean(accuracies),
        "final_test_accuracy_worst": min(accuracies),
        "training_gflops_per_image": flops_per_image / 1e9,
        "matmul_peak_gflops": peak / 1e9,
    }


def one_seed(preset: str, seed: int, target: float, overrides: list[str], scratch: Path) -> dict:
    """One seed's command in its own process, timed from its start to its exit, then its record read."""
    uri = f"sqlite:///{scratch}/mlflow.db"
    command = [sys.executable, "-m", "fmnist_exp.run", f"experiment={preset}", f"seed={seed}",
               "data.validation=test", "trainer.verbose=0", f"mlflow.tracking_uri={uri}",
               "mlflow.experiment_name=time_to_accuracy", f"hydra.run.dir={scratch}/seed_{seed}", *overrides]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = child.communicate()
    except BaseException:  # Ctrl-C or a signal to bench: the seed's command ends with it, not after it
        child.terminate()
        child.wait()
        raise
    wall = time.perf_counter() - started
    if child.returncode == 2:  # the runner's own one-line refusal: passed on as one line
        refusal = stderr.strip().splitlines()[-1].removeprefix("fmnist_exp: error: ")
        raise ConfigError(f"time_to_accuracy: seed {seed}: {refusal}")
    if child.returncode != 0:  # anything else keeps the command's traceback
        raise RuntimeError(f"time_to_accuracy: seed {seed} exited {child.returncode}:\n{stderr[-5000:]}")
    return {"seed": seed, "command_seconds": wall, **recorded(uri, seed, target)}


def recorded(uri: str, seed: int, target: float) -> dict:
    """From the seed's run in MLflow: when the test accuracy first reached `target`, and the training speed."""
    from fmnist_exp.tracking.store import Store

    store = Store(uri)
    found = store.search("time_to_accuracy", f"params.seed = '{seed}'")
    if len(found) != 1:
        raise RuntimeError(f"time_to_accuracy: seed {seed}'s command ended with {len(found)} runs in {uri}, not one")
    run = found[0]
    accuracies, seconds, rates = (
        store.metric_history(run.run_id, key) for key in ("val_accuracy", "epoch_seconds", "images_per_second")
    )
    elapsed, reached_at, reached_epoch = run.metrics["time/startup_seconds"], None, None
    for epoch, (accuracy, epoch_seconds) in enumerate(zip(accuracies, seconds, strict=True), start=1):
        elapsed += epoch_seconds
        if accuracy >= target:
            reached_at, reached_epoch = elapsed, epoch
            break
    return {
        "seconds_to_target": reached_at,
        "epoch_reached": reached_epoch,
        "final_test_accuracy": run.metrics["test_accuracy"],
        "test_accuracy_by_epoch": accuracies,
        "to_result_seconds": run.metrics["time/to_result_seconds"],
        "train_seconds": run.metrics["train_seconds"],
        # The median epoch: the first one carries the graph's tracing.
        "training_images_per_second": statistics.median(rates),
    }


def summary(result: dict) -> str:
    """What a person reads: one line per seed, then the mean and the worst."""
    target = f"{100 * result['target']:.2f}%"
    lines = [
        f"{result['preset']} on {result['machine']}: test accuracy {target} (data.validation=test), seeds {result['seeds']}"
    ]
    for run in result["per_seed"]:
        reached = (
            f"{target} after epoch {run['epoch_reached']}, {run['seconds_to_target']:.1f} s from the command's start"
            if run["seconds_to_target"] is not None
            else f"{target} not reached"
        )
        lines.append(
            f"  seed {run['seed']}: {reached}; final test accuracy {100 * run['final_test_accuracy']:.2f}%, "
            f"the command {run['command_seconds']:.1f} s; training {run['training_images_per_second']:,.0f} images/s, "
            f"{run['fraction_of_matmul_peak']:.2f} of the {result['matmul_peak_gflops']:.0f} GFLOP/s matmul peak"
        )
    if result["all_reached"]:
        lines.append(
            f"  to {target}: mean {result['seconds_to_target_mean']:.1f} s, worst {result['seconds_to_target_worst']:.1f} s"
        )
    else:
        lines.append(f"  to {target}: not reached on every seed")
    lines.append(
        f"  final test accuracy: mean {100 * result['final_test_accuracy_mean']:.2f}%, "
        f"worst {100 * result['final_test_accuracy_worst']:.2f}%; the command: mean {result['command_seconds_mean']:.1f} s, "
        f"worst {result['command_seconds_worst']:.1f} s"
    )
    return "\n".join(lines)
