"""The sweep parent's curve figure, read from its artists: bands, faint runs, pruned marks, epochs."""

from __future__ import annotations

import statistics

import pytest
from matplotlib import collections, pyplot

from fmnist_exp.analysis import plots

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)

# Config a: three seeds over 3 epochs. Config b: one seed trained all 3 epochs, one pruned after
# epoch 2. Config c: two seeds, one stopped early after epoch 2. Config d: its only run was pruned.
CURVES = {
    "a-1": [0.80, 0.85, 0.88],
    "a-2": [0.78, 0.86, 0.89],
    "a-3": [0.81, 0.84, 0.87],
    "b-1": [0.75, 0.80, 0.82],
    "b-2": [0.70, 0.72],
    "c-1": [0.79, 0.83, 0.86],
    "c-2": [0.77, 0.84],
    "d-1": [0.60],
}


def row(group: str, seed: int, pruned_at="") -> dict:
    return {
        "run_id": f"{group}-{seed}",
        "run_name": f"lr={group},seed={seed}",
        "status": "FINISHED",
        "pruned_at": pruned_at,
        "objective": CURVES[f"{group}-{seed}"][-1],
        "config_group": f"lr={group} [{group}0000000]",
        "objective_metric": "val_accuracy",
    }


# Not in the order of the configs' means (a 0.88, c 0.85, b 0.82): the legend ranks them so.
ROWS = [row("c", 1), row("c", 2), row("b", 1), row("b", 2, pruned_at=2), row("a", 1), row("a", 2), row("a", 3)]
ROWS.append(row("d", 1, pruned_at=1))


@pytest.fixture
def figure():
    figure = plots.sweep_curves_figure(ROWS, CURVES)
    figure.canvas.draw()
    yield figure
    pyplot.close(figure)


def test_a_band_of_one_sd_for_each_config_with_two_seeds_or_more(figure):
    (axis,) = figure.axes
    bands = [item for item in axis.collections if isinstance(item, collections.PolyCollection)]
    assert len(bands) == 2  # a and c (best mean first); b has one fully trained run, d none
    # a's band spans its mean +- one sd at each of its 3 epochs; c's only the 2 epochs both its runs reached.
    a_band, c_band = (band.get_paths()[0].vertices for band in bands)
    runs = [CURVES["a-1"], CURVES["a-2"], CURVES["a-3"]]
    for epoch in (1, 2, 3):
        values = [run[epoch - 1] for run in runs]
        at_epoch = a_band[a_band[:, 0] == epoch][:, 1]
        assert min(at_epoch) == pytest.approx(statistics.fmean(values) - statistics.stdev(values))
        assert max(at_epoch) == pytest.approx(statistics.fmean(values) + statistics.stdev(values))
    assert set(c_band[:, 0]) == {1, 2}


def test_means_bold_runs_faint_pruned_dashed_and_crossed(figure):
    (axis,) = figure.axes
    lines = axis.get_lines()
    faint = [line for line in lines if line.get_alpha() == 0.25]
    assert len(faint) == 6  # every run that was not pruned, behind its config's mean
    means = [line for line in lines if line.get_linewidth() == 2]
    assert len(means) == 3  # a, b, c; d has no fully trained run
    assert list(means[0].get_ydata()) == pytest.approx([0.7967, 0.85, 0.88], abs=1e-4)
    assert len([line for line in lines if line.get_linestyle() == "--"]) == 2
    assert len([line for line in lines if line.get_marker() == "x"]) == 2
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == ["lr=a (3 seeds)", "lr=c (2 seeds)", "lr=b", "lr=d"]


def test_the_epochs_axis_has_whole_numbers_only(figure):
    (axis,) = figure.axes
    shown = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
    assert shown and all(float(tick).is_integer() for tick in shown)
    assert {label.get_text() for label in axis.get_xticklabels() if label.get_text()} <= {"0", "1", "2", "3", "4"}


def test_the_png_is_written(tmp_path):
    path = plots.sweep_curves(ROWS, CURVES, tmp_path / "objective_by_epoch.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
