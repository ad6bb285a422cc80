"""A sweep whatever its jobs' fate: refused, failed, crashed or interrupted, its parent counts every
job, ends in the status that says what happened, and the process exits as one run would.

Real sweeps in subprocesses against a real store; the tiny config (400 images, one epoch).
"""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fmnist_exp.sweeps import sweep
from fmnist_exp.tracking.store import Store
from helpers import TINY_RUN, all_runs, assert_refused, finish, run_command, start_command, wait_for

RUN = "fmnist_exp.run"
TINY = [
    *[item for item in TINY_RUN if not item.startswith("trainer.verbose=")],
    "trainer.verbose=0",
    "mlflow.log_model=false",
    "mlflow.system_metrics=false",
]


def sweep_command(arguments: list[str], tracking_uri: str, cwd: Path, kind: str = "warm"):
    return run_command(
        RUN,
        ["-m", *TINY, *arguments, f"hydra.sweep.dir={cwd / 'sweep'}"],
        cwd,
        {"MLFLOW_TRACKING_URI": tracking_uri},
        kind=kind,
    )


def parent_and_children(tracking_uri: str) -> tuple:
    runs = all_runs(tracking_uri)
    (parent,) = [run for run in runs if "sweep_key" in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_a_refused_job_is_counted_and_listed_with_its_reason(tmp_path, tracking_uri):
    result = sweep_command(["epochs=1", "model.dropout=0.3,1.5"], tracking_uri, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = parent_and_children(tracking_uri)
    assert parent.info.status == "FINISHED"
    assert sorted((child.info.run_name, child.info.status) for child in children) == [
        ("model.dropout=0.3", "FINISHED"),
        ("model.dropout=1.5", "FAILED"),
    ]
    (refused,) = [child for child in children if child.info.status == "FAILED"]
    reason = "model.dropout: 1.5 must be a number in [0, 1)"
    assert refused.data.tags["refused"] == "true" and refused.data.tags["failure_reason"].startswith(reason)
    note = parent.data.tags["mlflow.note.content"]
    assert "2 runs: 1 finished, 0 pruned, 1 failed." in note
    assert f"Failed: model.dropout=1.5: {reason}" in note
    assert parent.data.tags["sweep_jobs"] == "2"
    assert "model.dropout=1.5" in (tmp_path / "sweep" / "summary" / "sweep_summary.md").read_text()


def test_a_sweep_whose_jobs_were_all_refused_fails_with_exit_2(tmp_path, tracking_uri):
    result = sweep_command(["epochs=1", "model.dropout=1.5,2"], tracking_uri, tmp_path, kind="cold")
    assert_refused(result, "every job of the sweep was refused as bad input (2 of 2), e.g. model.dropout: ")
    parent, children = parent_and_children(tracking_uri)
    assert parent.info.status == "FAILED"
    assert [child.info.status for child in children] == ["FAILED", "FAILED"]
    assert "2 runs: 0 finished, 0 pruned, 2 failed." in parent.data.tags["mlflow.note.content"]


def row(status: str, reason: str = "", refused: bool = False, name: str = "seed=3") -> dict:
    return {"status": status, "pruned_at": "", "objective": math.nan if status != "FINISHED" else 0.5,
            "failure_reason": reason, "refused": refused, "run_name": name}  # fmt: skip


def test_how_a_sweep_ends_from_its_jobs_and_what_stopped_it():
    refused = row("FAILED", "model.dropout: 2 ...", True, "model.dropout=2")
    stopped = row("FAILED", "TrainingDiverged: NaN")
    assert sweep.sweep_ending("FINISHED", None, [row("FINISHED"), refused], "p") == ("FINISHED", "", None)
    assert sweep.sweep_ending("FINISHED", None, [refused, refused], "p")[::2] == ("FAILED", 2)
    status, line, code = sweep.sweep_ending("FINISHED", None, [refused, stopped], "p")
    assert (status, code) == ("FAILED", 1) and line.startswith("every job of the sweep failed (2 runs)")
    assert sweep.sweep_ending("FINISHED", None, [], "p")[::2] == ("FAILED", 1)
    status, line, code = sweep.sweep_ending("KILLED", KeyboardInterrupt("SIGTERM"), [stopped], "p")
    assert (status, code) == ("KILLED", 130) and line.startswith("interrupted (SIGTERM) before the sweep ended")
    assert sweep.sweep_ending("FAILED", ZeroDivisionError("x"), [], "p")[::2] == ("FAILED", None)
    assert sweep.sweep_ending("FAILED", SystemExit(2), [], "p")[1] == "The sweep stopped before it ended (exit 2)."
    assert sweep.failure_lines([refused, row("KILLED"), row("FINISHED")]) == [
        "Failed: model.dropout=2: model.dropout: 2 ...",
        "Killed: seed=3",
    ]
    assert [sweep.ending_status(error) for error in (None, KeyboardInterrupt(), ValueError())] == [
        "FINISHED",
        "KILLED",
        "FAILED",
    ]


@pytest.mark.slow
def test_a_seed_sweep_with_replicates_names_each_run_by_its_own_seed(tmp_path, tracking_uri):
    result = sweep_command(["epochs=1", "seed=1,3", "replicates=2"], tracking_uri, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, children = parent_and_children(tracking_uri)
    assert sorted(child.info.run_name for child in children) == ["seed=1", "seed=2", "seed=3", "seed=4"]
    assert sweep.replicate_name("batch_size=32,seed=3", 4) == "batch_size=32,seed=4"
    assert sweep.replicate_name("default", 43) == "seed=43"


# A job's code with a bug: the runner's own module, whose experiment.run raises what no check expects.
WITH_A_BUG = (
    "import runpy, sys\n"
    "from fmnist_exp.training import experiment\n"
    "def broken(*args, **kwargs):\n"
    "    raise ZeroDivisionError('a bug in the job')\n"
    "experiment.run = broken\n"
    "sys.argv = ['fmnist_exp.run', *sys.argv[1:]]\n"
    "runpy.run_module('fmnist_exp.run', run_name='__main__')\n"
)


def test_a_crashed_sweep_ends_failed_and_keeps_its_traceback(tmp_path, tracking_uri):
    import os
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", WITH_A_BUG, "-m", *TINY, "epochs=1", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug in the job" in result.stderr
    parent, children = parent_and_children(tracking_uri)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["mlflow.note.content"].startswith("The sweep crashed before it ended (ZeroDivisionError")
    assert (
        sorted((child.info.status, child.data.tags["failure_reason"]) for child in children)
        == [("FAILED", "ZeroDivisionError: a bug in the job")] * 2
    )


def test_sigterm_during_job_2_of_3_ends_the_parent_killed_in_one_line(tmp_path, tracking_uri):
    Store(tracking_uri).client  # noqa: B018 (the store is made first: polling it must not race its creation)
    arguments = ["-m", *TINY, "epochs=4", "seed=1,2,3", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    process = start_command(RUN, arguments, tmp_path, {"MLFLOW_TRACKING_URI": tracking_uri})

    def second_job_training():
        runs = all_runs(tracking_uri)
        children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
        return len(children) == 2 and any(
            run.info.status == "RUNNING" and "last_completed_epoch" in run.data.tags for run in children
        )

    wait_for(second_job_training, process, what="the second job's first epoch")
    process.send_signal(signal.SIGTERM)
    result = finish(process)
    lines = [line for line in result.stderr.splitlines() if line.startswith("fmnist_exp:") or "Traceback" in line]
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("fmnist_exp: error: interrupted (SIGTERM) before the sweep ended")
    parent, children = parent_and_children(tracking_uri)
    assert parent.info.status == "KILLED"
    assert parent.data.tags["mlflow.note.content"].startswith("interrupted (SIGTERM) before the sweep ended")
    assert sorted(child.info.status for child in children) == ["FINISHED", "KILLED"]
    assert MlflowClient(tracking_uri).search_runs([parent.info.experiment_id], "attributes.status = 'RUNNING'") == []
