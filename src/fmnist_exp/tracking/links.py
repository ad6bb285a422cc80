"""Where a person looks at the store: the one link to the MLflow UI and the command that serves it."""

from __future__ import annotations

UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` and `python -m fmnist_exp.ui` serve by default


def ui_link(
    tracking_uri: str, experiment_id: str | None = None, run_id: str | None = None, address: str | None = None
) -> str:
    """The one link to the MLflow UI: the experiment's runs table, one run's page, or (with no
    experiment) the list of experiments, in the machine-learning view.

    MLflow 3.17's UI opens on its GenAI view (traces, prompts) unless the address asks for
    `workflowType=machine_learning`. A tracking server serves its own UI at its URI; a SQLite store
    is served by `mlflow ui` (or `python -m fmnist_exp.ui`) at `address`.
    """
    if tracking_uri.startswith(("http://", "https://")):
        address = tracking_uri
    root = (address or UI_ADDRESS).rstrip("/") + "/"
    page = "#/experiments" + (f"/{experiment_id}/runs" if experiment_id else "") + (f"/{run_id}" if run_id else "")
    return f"{root}{page}?workflowType=machine_learning"


def ui_command(tracking_uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """How to look at the store: the link, with the command that serves it where a server is needed."""
    from fmnist_exp.config.schema import default_tracking_uri

    link = ui_link(tracking_uri, experiment_id, run_id)
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {link}"
    store = "" if tracking_uri == default_tracking_uri() else f" mlflow.tracking_uri={tracking_uri}"
    return f"python -m fmnist_exp.ui{store}, then open {link}"
