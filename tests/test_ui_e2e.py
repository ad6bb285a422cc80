"""The MLflow UI as a person uses it: a real sweep, a real server, headless Chromium.

A 2 x 2 grid with 2 seed replicates opens where the runner's link says (the machine-learning view).
What a run records shows where MLflow 3's UI looks for it: the runs table's Dataset and Models
columns, grouping by the config tag (one row per config with the replicates' mean), the sweep's
parent run as its comparison (note, table, figures), the experiment's Models tab (test metrics per
dataset, source run, registered versions), a run's system metric charts, and the comparison of the
jobs. Screenshots land in the test's folder and, with FMNIST_SCREENSHOT_DIR set, there too (docs/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from fmnist_exp.tracking.links import ui_link
from helpers import SUBSET_DIR, free_port, stop_process_group, wait_for_http

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,  # 8 trainings, a server and a browser: minutes (CI's second step)
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def sweep_store(tmp_path):
    """A 2 x 2 grid (batch size, learning rate) raced on 2 seeds each, 8 runs on the shipped subset,
    models registered, in a fresh SQLite store.

    System metrics are sampled every second, so that a job of seconds draws a curve.
    """
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable, "-m", "fmnist_exp.run", "-m",
            f"data.dir={SUBSET_DIR}", "data.max_train_samples=600", "data.max_test_samples=200",
            "epochs=1", "trainer.verbose=0", "register=true", "mlflow.experiment_name=ui_check",
            # A race held to 2 seeds a config: 8 runs whatever it decides, and the note says how it did.
            "batch_size=32,64", "optimizer.learning_rate=0.001,0.003", "replicates=auto", "race.min_seeds=2",
            "race.max_seeds=2",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return uri


@pytest.fixture
def ui_server(sweep_store, tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", sweep_store],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, seconds=180)  # a busy shared machine starts it slowly
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process)


def save_screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name))
    target = os.environ.get("FMNIST_SCREENSHOT_DIR")
    if target:
        shutil.copy(tmp_path / name, Path(target) / name)


def close_the_assistant(page) -> None:
    assistant_close = page.get_by_role("button", name="Close")
    if assistant_close.count():
        assistant_close.first.click()


def png_width(path: Path) -> int:
    """A PNG's width in pixels, from its IHDR chunk (bytes 16-19, big-endian)."""
    return int.from_bytes(path.read_bytes()[16:20], "big")


def shown(value: float) -> str:
    """How the runs table shows a metric: three decimals, trailing zeros dropped."""
    return f"{value:.3f}".rstrip("0")


def test_sweep_runs_and_comparison_in_the_browser(ui_server, sweep_store, tmp_path):
    client = mlflow.MlflowClient(sweep_store)
    experiment = client.get_experiment_by_name("ui_check")
    all_runs = client.search_runs([experiment.experiment_id])
    children = [run for run in all_runs if "mlflow.parentRunId" in run.data.tags]
    (parent,) = [run for run in all_runs if "sweep_key" in run.data.tags]
    assert len(children) == 8
    groups: dict[str, list] = {}
    for child in children:
        groups.setdefault(child.data.tags["config_group"], []).append(child)
    assert len(groups) == 4 and all(len(members) == 2 for members in groups.values())
    models = client.search_logged_models([experiment.experiment_id])
    assert sorted(model.source_run_id for model in models) == sorted(child.info.run_id for child in children)
    for child in children:
        assert {item.dataset.name for item in child.inputs.dataset_inputs} == {
            "fashion-mnist-train",
            "fashion-mnist-validation",
            "fashion-mnist-test",
        }
        assert len(client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")) >= 2
    # The links the runner prints, with the server's address.
    runs_link = ui_link(sweep_store, experiment.experiment_id, address=ui_server)
    parent_link = ui_link(sweep_store, experiment.experiment_id, parent.info.run_id, address=ui_server)

    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.set_default_timeout(60_000)
        # The link opens the experiment's runs in the machine-learning view, not the GenAI one.
        page.goto(runs_link)
        page.get_by_text("Run Name").first.wait_for()
        assert f"/experiments/{experiment.experiment_id}/runs" in page.url
        playwright_api.expect(page.get_by_text("Model training", exact=True).first).to_be_visible()
        assert page.get_by_text("Judges", exact=True).count() == 0  # a GenAI-view entry of the side bar
        close_the_assistant(page)

        # Show the objective, the test accuracy and the swept parameters as columns.
        page.get_by_role("button", name="Columns").click()
        for column in ("objective", "test_accuracy", "batch_size", "optimizer.learning_rate"):
            page.get_by_placeholder("Search columns").fill(column)
            page.get_by_text(column, exact=True).last.click()
        page.keyboard.press("Escape")

        # Unfold the sweep's parent run to list its jobs: each with its datasets and its model.
        page.locator('[role=gridcell] button[data-component-id*="runnamecellrenderer"]').first.click()
        for child in children:
            page.get_by_text(child.info.run_name, exact=True).first.wait_for()
        grid = page.locator("[role=grid]").first.inner_text()
        for child in children:
            assert child.info.run_name in grid
            assert shown(child.data.metrics["test_accuracy"]) in grid, f"{child.info.run_name}: no test_accuracy"
        assert grid.count("fashion-mnist-train (") == 8, "the Dataset column is not filled"
        # The Models column links each job's model by its registered version (register=true).
        versions = {str(version.version) for version in client.search_model_versions("name='fmnist_cnn'")}
        linked = page.locator('[role=grid] a[href*="/models/fmnist_cnn/versions/"]')
        assert linked.count() == 8, "the Models column is not filled"
        assert {linked.nth(i).get_attribute("href").rsplit("/", 1)[1] for i in range(8)} <= versions
        save_screenshot(page, tmp_path, "mlflow_ui_runs.png")

        # Group by the config tag: one row per config, its replicates' mean objective beside it.
        page.get_by_role("button", name="Group by").click()
        page.get_by_role("menu").get_by_text("config_group", exact=True).click()
        page.keyboard.press("Escape")
        for group in groups:
            page.get_by_text(f"Group: {group}").first.wait_for()
        grouped = page.locator("[role=grid]").first.inner_text()
        for members in groups.values():
            mean = sum(member.data.metrics["objective"] for member in members) / len(members)
            assert f"{mean:.6f}"[:6] in grouped and "(average)" in grouped, f"no mean {mean} for its group"
        save_screenshot(page, tmp_path, "mlflow_ui_grouped.png")

        # The sweep's parent run is its comparison: the note, then the table and figures it logged.
        page.goto(parent_link)
        description = page.get_by_text("Swept: batch_size in 32,64; optimizer.learning_rate in 0.001,0.003")
        description.first.wait_for()
        body = page.inner_text("body")
        assert "8 runs: 8 finished, 0 pruned, 0 failed." in body
        assert "paired t-test over seeds" in body and "Re-run the winner: python -m fmnist_exp.run -m" in body
        # The race's decision: its rules, the runs it saved, and how each config was decided.
        assert "Race (replicates=auto): 2 to 2 seeds per config" in body and "the leader after 2 seeds" in body
        decided = body.count("behind after 2 seeds") + body.count("undecided at the max of 2 seeds")
        assert decided == 3, body[:3000]  # each of the three rivals, one way or the other
        close_the_assistant(page)
        description.first.scroll_into_view_if_needed()
        save_screenshot(page, tmp_path, "mlflow_ui_sweep_parent.png")
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("summary", exact=True).first.click()
        for name in ("configs.md", "objective_by_epoch.png", "params_vs_objective.png", "sweep_summary.csv"):
            page.get_by_text(name, exact=True).first.wait_for()
        # The band figure (each config's mean by epoch, +- one sd over its seeds) as the UI draws it.
        page.get_by_text("objective_by_epoch.png", exact=True).first.click()
        page.get_by_text("summary/objective_by_epoch.png", exact=True).first.wait_for()  # the preview's title
        figure = page.locator('img[src^="blob:"]').first  # the UI fetches the artifact and shows it as a blob
        figure.wait_for()
        playwright_api.expect(figure).to_have_js_property("complete", True)
        logged = Path(client.download_artifacts(parent.info.run_id, "summary/objective_by_epoch.png", str(tmp_path)))
        assert figure.evaluate("image => image.naturalWidth") == png_width(logged) > 0  # drawn, and this figure
        save_screenshot(page, tmp_path, "mlflow_ui_band_figure.png")
        page.get_by_text("jobs.json", exact=True).first.click()
        playwright_api.expect(page.get_by_text("View as table")).to_be_visible()
        for header in ("run_name", "seed", "batch_size", "optimizer/learning_rate", "status"):
            page.get_by_text(header, exact=True).last.wait_for()  # the table's column headers
        body = page.inner_text("body")
        assert all(body.count(child.info.run_name) >= 1 for child in children), "the jobs' table lists every run"
        save_screenshot(page, tmp_path, "mlflow_ui_sweep_table.png")

        # The experiment's Models tab: one model per job, its test metrics on the test set.
        page.goto(f"{ui_server}/#/experiments/{experiment.experiment_id}/models?workflowType=machine_learning")
        page.get_by_text("Source run").first.wait_for()
        page.set_viewport_size({"width": 2000, "height": 900})  # wide enough for the metric columns
        models_table = page.locator("[role=grid], table").first
        listed = playwright_api.expect(models_table)  # the grid fills itself in column by column
        for text in ("test_accuracy", "fashion-mnist-test", *(child.info.run_name for child in children)):
            listed.to_contain_text(text, timeout=60_000)
        playwright_api.expect(models_table.get_by_text("Ready", exact=True)).to_have_count(8)
        playwright_api.expect(models_table.locator('a[href*="/models/fmnist_cnn/versions/"]')).to_have_count(8)
        save_screenshot(page, tmp_path, "mlflow_ui_models.png")
        page.set_viewport_size({"width": 1600, "height": 900})

        # A job's system metrics, drawn as charts on its page.
        child = children[0]
        page.goto(
            f"{ui_server}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}/system-metrics"
            "?workflowType=machine_learning"
        )
        page.get_by_text("cpu_utilization_percentage", exact=True).first.wait_for()
        close_the_assistant(page)
        page.get_by_placeholder("Search metric charts").fill("cpu|memory")  # a regular expression
        for metric in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage"):
            page.get_by_text(f"{child.info.run_name} (system/{metric})").first.wait_for()  # a chart's legend
        drawn = page.locator(".js-plotly-plot").filter(has=page.locator("path.js-line"))
        playwright_api.expect(drawn).to_have_count(3)  # the three charts drew their lines
        save_screenshot(page, tmp_path, "mlflow_ui_system_metrics.png")

        # A job's own charts: the 33 per-class test figures in a section of their own, apart from the
        # 11 curves and results (MLflow 3.17 lists the prefixed section first on a run's page).
        page.goto(
            f"{ui_server}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}/model-metrics"
            "?workflowType=machine_learning"
        )
        page.get_by_text("test_per_class", exact=True).first.wait_for()
        sections = " ".join(page.inner_text("body").split())
        assert "test_per_class (33)" in sections and "Model metrics (11)" in sections, sections[:400]

        # Compare the four jobs of one seed: the swept parameters and the test accuracy side by side.
        compared = [member for members in groups.values() for member in members if member.data.params["seed"] == "42"]
        ids = ",".join(f'"{run.info.run_id}"' for run in compared)
        page.goto(
            f'{ui_server}/#/compare-runs?runs=[{ids}]&experiments=["{experiment.experiment_id}"]'
            "&workflowType=machine_learning",
            wait_until="domcontentloaded",
        )
        page.locator(".js-plotly-plot").first.wait_for()  # the parallel-coordinates plot rendered
        close_the_assistant(page)
        parameters, metrics = page.locator(".du-bois-light-select").nth(0), page.locator(".du-bois-light-select").nth(1)
        run_name = parameters.locator(".du-bois-light-select-selection-item", has_text="mlflow.run_name")
        if run_name.count():  # picked by default when the runs differ in nothing else the plot can show
            run_name.locator(".du-bois-light-select-selection-item-remove").click()
        for chosen in metrics.locator(".du-bois-light-select-selection-item-remove").all():
            chosen.click()  # the plot's first pick is whatever metric comes first, a system metric here
        metrics.click()
        page.keyboard.type("test_accuracy")
        page.locator(".du-bois-light-select-item-option[title='test_accuracy']").click()
        page.keyboard.press("Escape")
        chosen = ".du-bois-light-select-selection-item-content"
        assert metrics.locator(chosen).all_inner_texts() == ["test_accuracy"]
        assert {"batch_size", "optimizer.learning_rate"} <= set(parameters.locator(chosen).all_inner_texts())
        page.locator(".js-plotly-plot").first.get_by_text("test_accuracy").first.wait_for()
        save_screenshot(page, tmp_path, "mlflow_ui_compare.png")
        batch_row = page.locator("tr", has=page.get_by_text("batch_size", exact=True)).last
        for run in compared:
            assert run.data.params["batch_size"] in batch_row.inner_text()
        browser.close()
    for name in (
        "mlflow_ui_runs.png", "mlflow_ui_grouped.png", "mlflow_ui_sweep_parent.png", "mlflow_ui_sweep_table.png",
        "mlflow_ui_models.png", "mlflow_ui_system_metrics.png", "mlflow_ui_compare.png", "mlflow_ui_band_figure.png",
    ):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 20_000, name
