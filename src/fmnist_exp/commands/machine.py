"""What a measurement says about the machine it ran on, and the runner's config composed for it.

Shared by `bench`'s throughput rounds and its timed presets (`time_to_accuracy`).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine() -> str:
    model_name = ""
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model_name or platform.processor()}, {platform.system()}"


def matmul_peak_flops(dtype: str = "float32", size: int | None = None, trials: int = 5) -> float:
    """Best FLOP/s of a square matmul in `dtype` on the running backend's default device, measured now.

    Through keras.ops, so it runs on whichever backend is active. 2048 on a CPU, 8192 on an
    accelerator (where a 2048 product takes well under a millisecond). Each trial ends by copying one
    number to the host, which waits for the device.
    """
    import keras

    from fmnist_exp.model import backend

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

    from fmnist_exp.config.schema import CONF_DIR, register_schemas
    from fmnist_exp.model.validation import to_experiment_config

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return to_experiment_config(hydra_compose(config_name="config", overrides=overrides))
