"""The benchmark command runs and reports what it promises (figures are machine-dependent)."""

from __future__ import annotations

import pytest

from fmnist_exp.commands import bench
from helpers import SUBSET_DIR


def test_bench_reports_ratio_flops_and_memory(monkeypatch):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(SUBSET_DIR))
    result = bench.main(["model=fast_cnn", "batch_size=64", "images=640", "repeats=2"])
    assert len(result["ratio_per_repeat"]) == 2
    assert 0.2 < result["ratio_median"] < 5
    assert result["matmul_peak_gflops"] > 1
    assert 0 < result["fraction_of_matmul_peak"] < 1.5
    # fast_cnn: 0.23 M + 3.61 M + 3.61 M convolution and 11.5 k dense multiply-adds per image.
    assert result["training_gflops_per_image"] == pytest.approx(6 * (225_792 + 3_612_672 + 3_612_672 + 11_520) / 1e9)
    assert result["peak_memory_mb_total"] > result["peak_memory_mb_after_data_load"] > 0
    # Each repeat says what share of the machine's CPU time was busy while it ran (Linux).
    for busy in result["runner_cpu_busy_per_repeat"] + result["bare_cpu_busy_per_repeat"]:
        assert 0 < busy <= 1


def test_bench_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        bench.main(["repeats=0"])
    with pytest.raises(SystemExit):
        bench.main(["colour=red"])


@pytest.mark.parametrize(
    ("argument", "named"),
    [
        ("model=nosuch", "fast_cnn"),
        ("trainer.precision=bogus", "trainer.precision"),
        ("trainer.jit_compile=maybe", "trainer.jit_compile"),
        ("time_to_accuracy=nosuch", "strong"),
    ],
)
def test_bench_names_a_bad_choice_without_a_traceback(argument, named, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.main([argument])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert named in error and "Traceback" not in error and "search path" not in error


def test_bench_says_where_it_looked_for_missing_data(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        bench.main(["images=256", "repeats=1"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "data.dir:" in error and "lacks train-images-idx3-ubyte.gz" in error  # a named folder is all or nothing


@pytest.mark.slow  # two real commands of about 20 s each
def test_time_to_accuracy_times_each_seed_as_its_own_command(monkeypatch, capsys):
    """Two seeds of the speedrun preset, each a real `python -m fmnist_exp.run` process, on the subset."""
    monkeypatch.setenv("FMNIST_DATA_DIR", str(SUBSET_DIR))
    result = bench.main(["time_to_accuracy=speedrun", "seeds=2", "target=0.5"])
    assert result["seeds"] == [1, 2] and len(result["per_seed"]) == 2
    for run in result["per_seed"]:
        # Read from the run's own record: a start-up, three epochs, a test accuracy per epoch.
        assert len(run["test_accuracy_by_epoch"]) == 3 and 0.5 <= run["final_test_accuracy"] <= 1
        assert 0 < run["seconds_to_target"] <= run["to_result_seconds"] < run["command_seconds"]
        assert run["training_images_per_second"] > 0 and 0 < run["fraction_of_matmul_peak"] < 1.5
    assert result["all_reached"] and result["command_seconds_worst"] >= result["command_seconds_mean"]
    assert result["final_test_accuracy_worst"] <= result["final_test_accuracy_mean"]
    printed = capsys.readouterr().out
    assert "seed 1: 50.00% after epoch" in printed and "seed 2:" in printed and "worst" in printed


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("seeds=0", "seeds: 0 must be a whole number from 1 to 10"),
        ("target=2", "target: 2.0 must be a test accuracy above 0 and at most 1"),
        ("output=/nonexistent/figures.json", "output: /nonexistent/figures.json: its folder does not exist"),
    ],
)
def test_time_to_accuracy_refuses_a_bad_key_before_training(argument, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.main(["time_to_accuracy=speedrun", argument])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_time_to_accuracy_passes_a_seeds_refusal_on_in_one_line(monkeypatch, tmp_path, capsys):
    """The seed's own command refuses (its data folder lacks the files): bench says so in one line, exit 2."""
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        bench.main(["time_to_accuracy=speedrun", "seeds=2"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.count("\n") == 1 and "Traceback" not in error
    assert "time_to_accuracy: seed 1: data.dir:" in error and "lacks train-images-idx3-ubyte.gz" in error


def test_seeds_without_a_preset_are_refused(capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.main(["seeds=3"])
    assert stopped.value.code == 2 and "seeds: only with time_to_accuracy=<preset>" in capsys.readouterr().err
