"""`python -m fmnist_exp.bench`: the runner's training speed against a bare Keras loop, measured in one process.

    python -m fmnist_exp.bench                          # seed_cnn, batch 32, 3 interleaved repeats
    python -m fmnist_exp.bench model=fast_cnn batch_size=128 repeats=5
    python -m fmnist_exp.bench time_to_accuracy=fast    # wall seconds until test accuracy >= 90.52%

The two sides alternate (runner, bare, runner, bare, ...) because throughput on shared machines
drifts and is even bimodal; medians and the spread are reported, never one sample.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from fmnist_exp.commands import hydra_app as commands
from fmnist_exp.commands import time_to_accuracy as timed_presets
from fmnist_exp.commands.machine import compose, machine, matmul_peak_flops
from fmnist_exp.config.schema import MODEL_FIELDS
from fmnist_exp.errors import ConfigError
from fmnist_exp.runtime import noise
from fmnist_exp.tracking import active_run

ARTICLE_ACCURACY = 0.9052
MAX_SEEDS = 10


@dataclass
class BenchTrainerConfig:
    # The runner's trainer.backend, trainer.precision and trainer.jit_compile (checked there).
    # backend null: the runner's default ($KERAS_BACKEND, else tensorflow).
    backend: str | None = None
    precision: str = "float32"
    jit_compile: str = "auto"


@dataclass
class BenchConfig:
    # The runner's model group: model=fast_cnn picks conf/model/fast_cnn.yaml, measured as it stands.
    model: Any = MISSING
    batch_size: int = 32
    images: int = 12800  # training images per repeat
    repeats: int = 3  # measured rounds per side, after one tracing round
    trainer: BenchTrainerConfig = field(default_factory=BenchTrainerConfig)
    # The runner's training stream: auto = tf.data on TensorFlow, a NumPy PyDataset elsewhere;
    # tf_data or pydataset to compare the two on TensorFlow.
    stream: str = "auto"
    # A second runner stream measured in the same rounds (e.g. stream=pydataset compare_stream=device):
    # its images/s and its ratio to bare Keras, under the same drift of a shared machine.
    compare_stream: str | None = None
    # A preset of conf/experiment/: measure the wall seconds until its test accuracy reaches `target`.
    time_to_accuracy: str | None = None
    target: float = ARTICLE_ACCURACY
    seeds: int = 1  # with time_to_accuracy: seeds 1..N, each its own command
    output: str | None = None  # a .json file for the figures


class Timed:
    """Wall seconds of a block, and the share of the whole machine's CPU time that was busy meanwhile.

    The share comes from Linux's /proc/stat (None elsewhere). Slow repeats on a 2-core machine show
    up as about 0.5: one core idle while TensorFlow's compute threads share the other.
    """

    def __enter__(self):
        self.cpu_start, self.started = self.read(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        end, self.busy = self.read(), None
        if self.cpu_start is not None and end is not None:
            elapsed = [after - before for before, after in zip(self.cpu_start, end, strict=True)]
            idle = elapsed[3] + elapsed[4]  # idle + iowait
            self.busy = 1 - idle / sum(elapsed) if sum(elapsed) else None

    @staticmethod
    def read() -> list[int] | None:
        try:
            return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None  # not Linux: the figure is left out


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_seconds() -> dict:
    """Loading all 70,000 images, verified: once into an empty decoded-data cache, then from it."""
    from fmnist_exp.data import fashion_mnist as data
    from fmnist_exp.data import idx

    data_config = compose([]).data
    previous = os.environ.get(idx.CACHE_ENV)
    timings = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ[idx.CACHE_ENV] = cache
        try:
            for name in ("data_load_seconds_cold", "data_load_seconds_cached"):
                started = time.perf_counter()
                data.load(data_config, seed=0)
                timings[name] = time.perf_counter() - started
        finally:
            if previous is None:
                os.environ.pop(idx.CACHE_ENV)
            else:
                os.environ[idx.CACHE_ENV] = previous
    return timings


def throughput(arguments: dict) -> dict:
    """Images/s of the runner's fit stage (`experiment.fit`: its stream, every callback the runner
    adds, MLflow logging, checkpoints) against a bare `model.fit` on NumPy arrays, interleaved; with
    `compare_stream`, a second runner side on that stream in the same rounds."""
    from fmnist_exp.training import experiment

    rounds = arguments["repeats"] + 1  # the first round traces the functions and is not counted
    loading = load_seconds()
    load_memory = peak_memory_mb()
    streams = [arguments["stream"]] + ([arguments["compare_stream"]] if arguments.get("compare_stream") else [])
    with tempfile.TemporaryDirectory() as scratch:
        config = compose([*arguments["overrides"], "data.validation=none", f"data.max_train_samples={arguments['images']}",
                          f"epochs={rounds}", "trainer.verbose=0", f"mlflow.tracking_uri=sqlite:///{scratch}/mlflow.db"])  # fmt: skip
        prepared = experiment.prepare(config, Path(scratch) / "output")
        experiment.start_keras(config)
        runner_models = [experiment.build(prepared) for _ in streams]
        bare_model = experiment.build(prepared)
        images, labels = prepared.splits.train
        timed: dict[str, list[Timed]] = {stream: [] for stream in [*streams, "bare"]}
        with active_run.start(prepared.store, "bench", "runner", {}) as run:
            for epoch in range(rounds):
                for stream, model in zip(streams, runner_models, strict=True):
                    with Timed() as runner_round:
                        experiment.fit(prepared, model, run, epoch, epoch + 1, stream=stream)
                    timed[stream].append(runner_round)
                with Timed() as bare_round:
                    bare_model.fit(images, labels, batch_size=config.batch_size, epochs=1, verbose=0)
                timed["bare"].append(bare_round)
    counted = {side: measured[1:] for side, measured in timed.items()}  # the tracing round dropped
    bare_rates = rates_of(counted["bare"], len(images))
    result = figures(config, runner_models[0], streams[0], len(images), counted[streams[0]], counted["bare"])
    if len(streams) == 2:
        compared = rates_of(counted[streams[1]], len(images))
        result["compare_stream"] = streams[1]
        result["compare_stream_images_per_second"] = compared
        result["compare_stream_ratio_per_repeat"] = [one / bare for one, bare in zip(compared, bare_rates, strict=True)]
        result["compare_stream_ratio_median"] = statistics.median(result["compare_stream_ratio_per_repeat"])
    return {
        **result,
        **loading,
        "peak_memory_mb_after_data_load": load_memory,
        "peak_memory_mb_total": peak_memory_mb(),
    }


def rates_of(rounds: list[Timed], images: int) -> list[float]:
    return [images / measured.seconds for measured in rounds]


def figures(config, runner_model, stream: str, images: int, runner: list[Timed], bare: list[Timed]) -> dict:
    """The throughput figures of a runner side against bare Keras, and the work against the matmul peak."""
    import keras

    from fmnist_exp.model import backend
    from fmnist_exp.model import layers as models

    runner_rates, bare_rates = rates_of(runner, images), rates_of(bare, images)
    ratios = [runner / bare for runner, bare in zip(runner_rates, bare_rates, strict=True)]
    multiply_adds = models.count_multiply_adds(config.model.layers)
    peak = matmul_peak_flops()
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    compute_peak = matmul_peak_flops(compute_dtype) if compute_dtype != "float32" else peak
    achieved = statistics.median(runner_rates) * 3 * 2 * multiply_adds
    return {
        "machine": machine(),
        "backend": backend.describe(),
        "model": config.model.name,
        "batch_size": config.batch_size,
        "precision": config.trainer.precision,
        "jit_compile": str(runner_model.jit_compile),  # what Keras resolved `auto` to
        "stream": stream,
        "images_per_repeat": images,
        "runner_images_per_second": runner_rates,
        "bare_images_per_second": bare_rates,
        "ratio_per_repeat": ratios,
        "runner_cpu_busy_per_repeat": [measured.busy for measured in runner],
        "bare_cpu_busy_per_repeat": [measured.busy for measured in bare],
        "ratio_median": statistics.median(ratios),
        "training_gflops_per_image": 6 * multiply_adds / 1e9,
        "achieved_gflops": achieved / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "fraction_of_matmul_peak": achieved / peak,
        # The same against a matmul in the policy's compute dtype (bfloat16, float16), when not float32.
        "compute_dtype": compute_dtype,
        "compute_dtype_matmul_peak_gflops": compute_peak / 1e9,
        "fraction_of_compute_dtype_peak": achieved / compute_peak,
    }


def main(argv: list[str] | None = None) -> dict | None:
    """The command line (`argv`, else sys.argv): prints and returns the figures."""
    from fmnist_exp.config.schema import register_schemas

    noise.quiet()
    register_schemas()  # the resolvers the model files use
    return commands.run("bench", BenchConfig, bench, argv)


def console() -> None:
    """`fmnist-bench`: main without its return value, which a console script would pass to sys.exit."""
    main()


def trainer_overrides(config: BenchConfig) -> list[str]:
    """The runner's keys this measurement sets: backend, precision, XLA."""
    trainer = config.trainer
    chosen = [f"trainer.precision={trainer.precision}", f"trainer.jit_compile={trainer.jit_compile}"]
    return chosen + ([f"trainer.backend={trainer.backend}"] if trainer.backend else [])


def bench(config: BenchConfig) -> dict:
    if config.repeats < 1 or config.images < config.batch_size:
        raise ConfigError("repeats must be at least 1 and images at least one batch")
    if config.compare_stream == config.stream:
        raise ConfigError(f"compare_stream: {config.compare_stream} is already the stream measured")
    if not 0 < config.target <= 1:
        raise ConfigError(f"target: {config.target} must be a test accuracy above 0 and at most 1")
    if config.seeds != 1 and not config.time_to_accuracy:
        raise ConfigError("seeds: only with time_to_accuracy=<preset> (the throughput rounds use repeats=)")
    if config.output and not Path(config.output).resolve().parent.is_dir():
        raise ConfigError(f"output: {config.output}: its folder does not exist")
    if not 1 <= config.seeds <= MAX_SEEDS:
        raise ConfigError(f"seeds: {config.seeds} must be a whole number from 1 to {MAX_SEEDS}")
    model = config.model
    knobs = [f"model.{knob}={value}" for knob, value in model.items() if knob not in MODEL_FIELDS]
    arguments = {
        "overrides": [f"model={model['name']}", *knobs, f"batch_size={config.batch_size}", *trainer_overrides(config)],
        "images": config.images,
        "repeats": config.repeats,
        "stream": config.stream,
        "compare_stream": config.compare_stream,
    }
    from hydra.errors import HydraException

    try:
        if config.time_to_accuracy:
            result = timed_presets.measure(
                config.time_to_accuracy, config.target, config.seeds, trainer_overrides(config)
            )
            print(timed_presets.summary(result))
            return write(result, config.output)
        result = throughput(arguments)
    except HydraException as error:  # a bad model or preset name, or value; Hydra's search path says nothing useful
        raise ConfigError(commands.joined(str(error).split("\nConfig search path")[0].splitlines())) from error
    for key, value in result.items():
        shown = (
            [round(item, 3) if isinstance(item, float) else item for item in value]
            if isinstance(value, list)
            else value
        )
        print(f"{key:>38}: {round(shown, 4) if isinstance(shown, float) else shown}")
    return write(result, config.output)


def write(result: dict, output: str | None) -> dict:
    if output:
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
