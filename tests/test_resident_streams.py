"""The device stream (resident_streams.py) yields exactly the NumPy stream's batches, on JAX and PyTorch.

Each backend runs in a subprocess (tests/resident_probe.py): a process keeps the backend Keras first
started on, and this one's is whatever the other tests imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).parent / "resident_probe.py"


def probe(backend_name: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend_name, "NPROC": "1"}
    result = subprocess.run([sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["jax", "torch"])
def test_the_device_stream_yields_the_numpy_streams_batches_and_trains_alike(backend_name):
    if importlib.util.find_spec(backend_name) is None:
        pytest.skip(f"{backend_name} is not installed")
    findings = probe(backend_name)
    assert findings["backend"] == backend_name
    # 70 images in batches of 32: 3 per epoch; 3 epochs, or 2 and 1 after a resumed start at epoch 1, 2.
    assert findings["training_batches_from_epoch_0"] == 9
    assert findings["training_batches_from_epoch_1"] == 6
    assert findings["training_batches_from_epoch_2"] == 3
    assert findings["test_batches"] == 3
    assert findings["same_weights_after_training"] is True  # the same batches give bit-identical weights
    if backend_name == "jax":
        assert findings["no_copy_per_step"] is True  # JAX's transfer guard saw no copy to the device
    # The runner's default: the device stream on JAX (measured no slower on a CPU), NumPy on PyTorch.
    assert findings["auto"] == {"jax": "device", "torch": "pydataset"}[backend_name]
