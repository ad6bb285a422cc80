"""The MLflow UI as a person uses it: a real sweep, a real server, headless Chromium.

Screenshots land in the test's folder and, with FMNIST_SCREENSHOT_DIR set, there too (docs/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import SUBSET_DIR, free_port, stop_process_group, wait_for_http

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def sweep_store(tmp_path):
    """A 3-job sweep (batch sizes) on the shipped subset, in a fresh SQLite store."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable, "-m", "fmnist_exp.run", "-m",
            f"data.dir={SUBSET_DIR}", "data.max_train_samples=600", "data.max_test_samples=200",
            "epochs=1", "trainer.verbose=0", "mlflow.log_model=false", "mlflow.experiment_name=ui_check",
            "batch_size=32,64,128", f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
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
        wait_for_http(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process)


def save_screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name))
    target = os.environ.get("FMNIST_SCREENSHOT_DIR")
    if target:
        shutil.copy(tmp_path / name, Path(target) / name)


def test_sweep_runs_and_comparison_in_the_browser(ui_server, sweep_store, tmp_path):
    client = mlflow.MlflowClient(sweep_store)
    experiment = client.get_experiment_by_name("ui_check")
    all_runs = client.search_runs([experiment.experiment_id])
    children = [run for run in all_runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 3

    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{ui_server}/#/experiments/{experiment.experiment_id}/runs", wait_until="domcontentloaded")
        page.get_by_text("Run Name").first.wait_for()
        assistant_close = page.get_by_role("button", name="Close")
        if assistant_close.count():
            assistant_close.first.click()

        # Show the test accuracy and the swept parameter as columns.
        page.get_by_role("button", name="Columns").click()
        for column in ("test_accuracy", "batch_size"):
            page.get_by_placeholder("Search columns").fill(column)
            page.get_by_text(column, exact=True).last.click()
        page.keyboard.press("Escape")

        # Unfold the sweep's parent run to list its jobs.
        page.locator('[role=gridcell] button[data-component-id*="runnamecellrenderer"]').first.click()
        for child in children:
            page.get_by_text(child.info.run_name, exact=True).first.wait_for()
        grid = page.locator("[role=grid]").first.inner_text()
        for child in children:
            assert child.info.run_name in grid
            shown = f"{child.data.metrics['test_accuracy']:.3f}".rstrip("0")
            assert shown in grid, f"test_accuracy {shown} of {child.info.run_name} is not listed"
        save_screenshot(page, tmp_path, "mlflow_ui_runs.png")

        # Compare the three jobs: the swept parameter and the metric side by side.
        ids = ",".join(f'"{child.info.run_id}"' for child in children)
        page.goto(
            f'{ui_server}/#/compare-runs?runs=[{ids}]&experiments=["{experiment.experiment_id}"]',
            wait_until="domcontentloaded",
        )
        page.locator(".js-plotly-plot").first.wait_for()  # the parallel-coordinates plot rendered
        batch_row = page.locator("tr", has=page.get_by_text("batch_size", exact=True)).last
        for child in children:
            assert child.data.params["batch_size"] in batch_row.inner_text()
        # The metrics table is a virtualised grid: the names column, then the values column.
        metric_link = page.get_by_title("Plot chart").filter(has_text="test_accuracy").first
        metric_link.scroll_into_view_if_needed()
        body = page.inner_text("body")
        metrics_block = body[body.rindex("Metrics") :]
        assert "test_accuracy" in metrics_block
        for child in children:
            shown = f"{child.data.metrics['test_accuracy']:.3f}".rstrip("0")
            assert shown in metrics_block, f"test_accuracy {shown} of {child.info.run_name} is not compared"
        page.get_by_text("Run details").first.scroll_into_view_if_needed()
        save_screenshot(page, tmp_path, "mlflow_ui_compare.png")
        browser.close()
    assert (tmp_path / "mlflow_ui_runs.png").stat().st_size > 20_000
