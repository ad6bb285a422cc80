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
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fmnist_exp import cli
from fmnist_exp.errors import UserError

USAGE = (
    "usage: python -m fmnist_exp.bench [model=NAME] [batch_size=N] [images=N] [repeats=N] "
    "[precision=float32|mixed_bfloat16|mixed_float16] [jit_compile=auto|true|false] [backend=tensorflow|jax|torch] "
    "[stream=auto|tf_data|pydataset] [time_to_accuracy=PRESET] [output=FILE.json]"
)
DEFAULTS = {
    "model": "seed_cnn",
    "batch_size": 32,
    "images": 12800,
    "repeats": 3,
    "precision": "float32",
    "jit_compile": "auto",
    "backend": "",  # empty: trainer.backend's default, i.e. KERAS_BACKEND or tensorflow
    "stream": "auto",  # the runner's training stream: auto = tf_data on TensorFlow, pydataset elsewhere
    "time_to_accuracy": "",
    "target": "0.9052",
    "output": "",
}
ARTICLE_ACCURACY = 0.9052


def machine() -> str:
    model_name = ""
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model_name or platform.processor()}, {platform.system()}"


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


def matmul_peak_flops(dtype: str = "float32", size: int | None = None, trials: int = 5) -> float:
    """Best FLOP/s of a square matmul in `dtype` on the running backend's default device, measured now.

    Through keras.ops, so it runs on whichever backend is active. 2048 on a CPU, 8192 on an
    accelerator (where a 2048 product takes well under a millisecond). Each trial ends by copying one
    number to the host, which waits for the device.
    """
    import keras

    from fmnist_exp import backend

    size = size or (8192 if backend.has_accelerator() else 2048)
    left = keras.random.normal((size, size), dtype=dtype, seed=1)
    right = keras.random.normal((size, size), dtype=dtype, seed=2)

    def wait(product) -> None:
        keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.cast(product[:1], "float32")))

    wait(keras.ops.matmul(left, right))  # warm-up
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(4):
            product = keras.ops.matmul(left, right)
        wait(product)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - started))
    return best


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from fmnist_exp.config import PROJECT_ROOT, register_schemas, to_experiment_config

    register_schemas()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return to_experiment_config(hydra_compose(config_name="config", overrides=overrides))


def throughput(arguments: dict) -> dict:
    """Images/s of the runner's fit (its pipeline, callbacks, MLflow logging, checkpoints) and of a bare fit."""
    from fmnist_exp import data

    started = time.perf_counter()
    config = compose([f"model={arguments['model']}", f"batch_size={arguments['batch_size']}",
                      f"trainer.precision={arguments['precision']}", f"trainer.jit_compile={arguments['jit_compile']}", "data.validation=none", "trainer.verbose=0",
                      *backend_override(arguments)])  # fmt: skip
    splits = data.load(config.data, config.seed)
    load_seconds = time.perf_counter() - started
    load_memory = peak_memory_mb()

    from fmnist_exp import backend

    backend.activate(config.trainer)
    import keras

    from fmnist_exp import models, optim, tracking, train

    images, labels = (array[: arguments["images"]] for array in splits.train)
    batch_size = config.batch_size
    steps = -(-len(images) // batch_size)
    train.configure_precision(config.trainer.precision)

    def fresh_model():
        keras.utils.set_random_seed(config.seed)
        model = models.build(config.model.layers)
        train.compile_model(model, optim.build(config.optimizer, steps, 1000), config.trainer)
        return model

    runner_model, bare_model = fresh_model(), fresh_model()
    rounds = arguments["repeats"] + 1  # the first round traces the functions and is not counted
    stream = train.training_pipeline(images, labels, batch_size, config.seed, 0, rounds, stream=arguments["stream"])
    runner_rounds, bare_rounds = [], []
    with tempfile.TemporaryDirectory() as scratch:
        store = f"sqlite:///{scratch}/mlflow.db"
        with tracking.run(store, "bench", "runner", {}) as active:
            callbacks = [
                train.EpochTimer(len(images)),
                train.StopOnNonFiniteLoss(),
                tracking.epoch_logger(),
                train.Checkpointer(Path(scratch) / "checkpoints", active.info.run_id),
            ]
            for epoch in range(rounds):
                with Timed() as runner_round:
                    runner_model.fit(stream, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps,
                                     callbacks=callbacks, verbose=0, shuffle=False)  # fmt: skip
                with Timed() as bare_round:
                    bare_model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0)
                runner_rounds.append(runner_round)
                bare_rounds.append(bare_round)
    runner_rounds, bare_rounds = runner_rounds[1:], bare_rounds[1:]  # drop the tracing round
    runner_rates = [len(images) / measured.seconds for measured in runner_rounds]
    bare_rates = [len(images) / measured.seconds for measured in bare_rounds]
    ratios = [runner / bare for runner, bare in zip(runner_rates, bare_rates, strict=True)]

    multiply_adds = models.count_multiply_adds(config.model.layers)
    peak = matmul_peak_flops()
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    compute_peak = matmul_peak_flops(compute_dtype) if compute_dtype != "float32" else peak
    achieved = statistics.median(runner_rates) * 3 * 2 * multiply_adds
    return {
        "machine": machine(),
        "backend": keras.backend.backend(),
        "backend_version": backend.describe(),
        "keras": keras.__version__,
        "model": config.model.name,
        "batch_size": batch_size,
        "precision": config.trainer.precision,
        "jit_compile": str(runner_model.jit_compile),  # what Keras resolved `auto` to
        "stream": train.stream_kind(arguments["stream"]),
        "images_per_repeat": len(images),
        "runner_images_per_second": runner_rates,
        "bare_images_per_second": bare_rates,
        "ratio_per_repeat": ratios,
        "runner_cpu_busy_per_repeat": [measured.busy for measured in runner_rounds],
        "bare_cpu_busy_per_repeat": [measured.busy for measured in bare_rounds],
        "ratio_median": statistics.median(ratios),
        "training_gflops_per_image": 6 * multiply_adds / 1e9,
        "achieved_gflops": achieved / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "fraction_of_matmul_peak": achieved / peak,
        # The same against a matmul in the policy's compute dtype (bfloat16, float16), when not float32.
        "compute_dtype": compute_dtype,
        "compute_dtype_matmul_peak_gflops": compute_peak / 1e9,
        "fraction_of_compute_dtype_peak": achieved / compute_peak,
        "data_load_seconds_all_70000_verified": load_seconds,
        "peak_memory_mb_after_data_load": load_memory,
        "peak_memory_mb_total": peak_memory_mb(),
    }


def backend_override(arguments: dict) -> list[str]:
    return [f"trainer.backend={arguments['backend']}"] if arguments.get("backend") else []


def time_to_accuracy(preset: str, target: float, backend_choice: list[str] = ()) -> dict:
    """Train a preset with the test set as validation (the article's way) and find when it first reaches `target`."""
    from fmnist_exp import experiment

    with tempfile.TemporaryDirectory() as scratch:
        config = compose([f"experiment={preset}", "data.validation=test", "mlflow.log_model=false",
                          f"mlflow.tracking_uri=sqlite:///{scratch}/mlflow.db", *backend_choice])  # fmt: skip
        outcome = experiment.run(config, Path(scratch) / "output")
    elapsed, reached = 0.0, None
    for epoch, (seconds, accuracy) in enumerate(
        zip(outcome.history["epoch_seconds"], outcome.history["val_accuracy"], strict=True), start=1
    ):
        elapsed += seconds
        if accuracy >= target and reached is None:
            reached = {"epoch": epoch, "seconds": elapsed, "test_accuracy": accuracy}
    return {"machine": machine(), "preset": preset, "target": target, "reached": reached,
            "final_test_accuracy": outcome.test_accuracy, "epochs": len(outcome.history["val_accuracy"])}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    arguments = cli.parse_assignments(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if arguments["repeats"] < 1 or arguments["images"] < arguments["batch_size"]:
        cli.fail("repeats must be at least 1 and images at least one batch")
    from hydra.errors import HydraException

    try:
        if arguments["time_to_accuracy"]:
            result = time_to_accuracy(
                arguments["time_to_accuracy"], float(arguments["target"]), backend_override(arguments)
            )
        else:
            result = throughput(arguments)
    except (UserError, HydraException) as error:  # bad model/preset name or value, data not found
        cli.fail(str(error).split("\nConfig search path")[0])  # Hydra's search path says nothing useful here
    for key, value in result.items():
        shown = (
            [round(item, 3) if isinstance(item, float) else item for item in value]
            if isinstance(value, list)
            else value
        )
        print(f"{key:>38}: {round(shown, 4) if isinstance(shown, float) else shown}")
    if arguments["output"]:
        Path(arguments["output"]).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
