"""`python -m fmnist_exp.ui`: the MLflow UI on the runner's own store, on 127.0.0.1.

    python -m fmnist_exp.ui                                   the default store, http://127.0.0.1:5000
    python -m fmnist_exp.ui mlflow.experiment_name=baseline   print the link to that experiment's runs
    python -m fmnist_exp.ui mlflow.tracking_uri=sqlite:////abs/path/mlflow.db --port 5001

It opens the store the runner writes to by default (an absolute path, so from any folder), prints
the address of the experiment's runs table, and hands over to `mlflow ui`: the process becomes the
server, and every argument that is not one of the two keys goes to it unchanged (--port, --workers,
...). Ctrl-C stops it.
"""

from __future__ import annotations

import os
import sys

from fmnist_exp.config.schema import MlflowConfig, default_tracking_uri
from fmnist_exp.errors import TrackingError, UserError, fail
from fmnist_exp.runtime import noise

KEYS = ("mlflow.tracking_uri", "mlflow.experiment_name")


def usage() -> str:
    return (
        "usage: python -m fmnist_exp.ui [mlflow.tracking_uri=URI] [mlflow.experiment_name=NAME] [mlflow ui options]\n"
        f"The MLflow UI on the runner's store (now: {default_tracking_uri()}; $MLFLOW_TRACKING_URI\n"
        "changes it) on 127.0.0.1. Options such as --port 5001 go to `mlflow ui` unchanged."
    )


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if "--help" in arguments or arguments == ["-h"]:  # -h with a value is mlflow's --host
        print(usage())
        return
    noise.quiet()
    try:
        command, tracking_uri, url = server_command(arguments)
    except UserError as error:
        fail(str(error))
    print(f"MLflow UI on {tracking_uri}\n  {url}\n(Ctrl-C stops it)", flush=True)
    # The server replaces this process (its Ctrl-C and exit status are ours); our own interpreter, no shell.
    os.execv(sys.executable, command)  # noqa: S606


def server_command(arguments: list[str]) -> tuple[list[str], str, str]:
    """The `mlflow ui` command line, the store it opens, and the address of the experiment's runs."""
    from fmnist_exp.tracking.links import ui_link

    keys = {key: value for key, _, value in (word.partition("=") for word in arguments) if key in KEYS}
    passed = [word for word in arguments if word.partition("=")[0] not in KEYS]
    for word in passed:
        if "=" in word and not word.startswith("-"):
            key = word.partition("=")[0]
            raise UserError(f"{key}: not a known key; the keys: {', '.join(KEYS)} (mlflow ui options start with --)")
    tracking_uri = keys.get("mlflow.tracking_uri") or default_tracking_uri()
    if tracking_uri.startswith(("http://", "https://")):
        raise TrackingError(f"mlflow.tracking_uri: {tracking_uri} is a tracking server already: open it in a browser")
    experiment_name = keys.get("mlflow.experiment_name") or MlflowConfig.experiment_name
    experiment_id = existing_experiment(tracking_uri, experiment_name)
    host = option(passed, "--host", "-h")
    port = option(passed, "--port", "-p") or "5000"
    defaults = [] if host else ["--host", "127.0.0.1"]
    # One worker is plenty for one person; MLflow's default of 4 costs memory and start-up time.
    defaults += [] if option(passed, "--workers", "-w") else ["--workers", "1"]
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, *defaults, *passed]
    url = ui_link(tracking_uri, experiment_id, address=f"http://{host or '127.0.0.1'}:{port}")
    return command, tracking_uri, url


def existing_experiment(tracking_uri: str, experiment_name: str) -> str | None:
    """The experiment's id in an existing store; refuses a SQLite store that does not exist yet."""
    from fmnist_exp.tracking.location import sqlite_path
    from fmnist_exp.tracking.store import Store

    database = sqlite_path(tracking_uri)
    if database is not None and not database.is_file():
        raise TrackingError(
            f"mlflow.tracking_uri: no MLflow store at {database} yet; train a run first "
            "(python -m fmnist_exp.run experiment=fast) or name another store"
        )
    Store(tracking_uri).reap_orphans()  # the default mlflow.orphan_after_minutes
    experiment_id = Store(tracking_uri).experiment_id(experiment_name, create=False)
    if experiment_id is None:
        print(f"no experiment named {experiment_name!r} in this store yet; the link opens the list of experiments")
    return experiment_id


def option(arguments: list[str], *names: str) -> str | None:
    """The value of an option given as `--name value` or `--name=value`, or None."""
    for index, word in enumerate(arguments):
        name, separator, value = word.partition("=")
        if name in names:
            if separator:
                return value
            if index + 1 < len(arguments):
                return arguments[index + 1]
    return None


if __name__ == "__main__":
    main()
