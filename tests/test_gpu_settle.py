"""scripts/gpu_settle.sh end to end at toy size on JAX on this CPU: every command runs and the summary
says what each produced; and a SIGTERM mid-way leaves a partial summary (real processes, the shipped
subset)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmnist_exp.sweeps import gpu_pack
from helpers import SUBSET_DIR

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None or gpu_pack.JoblibLauncher is None,
    reason="needs jax and hydra-joblib-launcher (pip install -e '.[jax,sweeps]')",
)


def start(out: Path, **extra: str) -> subprocess.Popen:
    env = {**os.environ, "GPU_CHECK_SIZE": "tiny", "KERAS_BACKEND": "jax", "OUT": str(out),
           "FMNIST_DATA_DIR": str(SUBSET_DIR), **extra}  # fmt: skip
    return subprocess.Popen(["bash", "scripts/gpu_settle.sh"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


# One command of each kind (a runner sweep of three seeds, the plain script, a bench): all ten
# together take minutes on two cores (SETTLE_PARTS picks these; the commands and summary are the same).
PARTS = "article,plain_seed1,bench_b32"


@pytest.mark.slow  # three packed sweeps and the bench: minutes (CI's second step)
def test_the_settle_run_packs_its_commands_and_summarises_them(tmp_path):
    process = start(tmp_path, SETTLE_PARTS=PARTS)
    assert process.wait(timeout=600) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] is True, results["outcome"]
    assert sorted(results["outcome"]) == sorted(PARTS.split(","))
    runs = results["groups"]["article"]  # three seeds side by side, trained to the end of their (toy) length
    assert sorted(run["seed"] for run in runs) == ["1", "2", "3"]
    assert all(run["status"] == "FINISHED" and len(run["val_accuracy"]) == 2 for run in runs)
    assert all(run["test_accuracy"] is not None and run["collapsed_at_epoch"] is None for run in runs)
    assert [run["epochs"] for run in results["groups"]["article_plain"]] == [2]
    (bench,) = results["bench"]
    assert bench["batch_size"] == 32 and bench["stream"] == "device" and bench["compare_stream"] == "pydataset"
    assert bench["ratio_median"] > 0 and bench["compare_stream_ratio_median"] > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "; complete)" in summary and "| article | 3 | FINISHED | 2 |" in summary
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "gpu_settle: bench_b32 finished" in (tmp_path / "log.txt").read_text()


def test_a_collapse_is_the_first_epoch_at_chance_after_learning():
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_settle_summary

    assert gpu_settle_summary.collapsed_at([0.15, 0.6, 0.89, 0.1, 0.1]) == 4
    assert gpu_settle_summary.collapsed_at([0.1, 0.15, 0.3]) is None  # never learned: not a collapse


@pytest.mark.slow
def test_a_settle_run_stopped_by_sigterm_writes_a_partial_summary(tmp_path):
    process = start(tmp_path, SETTLE_PARTS="article")
    time.sleep(12)  # the commands are starting: nothing has finished
    os.kill(process.pid, signal.SIGTERM)  # the driver, which exec replaced the shell with
    assert process.wait(timeout=120) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] is False
    assert set(results["outcome"].values()) == {"stopped (SIGTERM)"}
    assert "PARTIAL" in (tmp_path / "summary.md").read_text()
