"""`python -m fmnist_exp.report`: an experiment's runs, or one sweep's, as a table best-first.

python -m fmnist_exp.report                              # the newest sweep of experiment fmnist_exp
python -m fmnist_exp.report sweep=<parent run id>
python -m fmnist_exp.report sweep=all experiment=fmnist_exp   # every run of the experiment
python -m fmnist_exp.report champion=fmnist_cnn          # also register the best as @champion
"""

from __future__ import annotations

import sys

from fmnist_exp import cli
from fmnist_exp.config import default_tracking_uri
from fmnist_exp.errors import UserError

USAGE = "usage: python -m fmnist_exp.report [experiment=NAME] [sweep=latest|all|RUN_ID] [champion=MODEL_NAME] [tracking_uri=URI]"
DEFAULTS = {"experiment": "fmnist_exp", "sweep": "latest", "champion": "", "tracking_uri": ""}


def rows_for(experiment_name: str, sweep: str, tracking_uri: str) -> tuple[list[dict], str]:
    import mlflow

    from fmnist_exp import sweep as sweeps

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise UserError(f"experiment: no experiment named {experiment_name!r} in {tracking_uri}")
    client = mlflow.MlflowClient()
    if sweep == "all":
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.sweep_key IS NULL", max_results=10000)
        rows = sweeps.best_first([sweeps.row_of(run) for run in runs])
        return rows, f"all {len(rows)} runs of experiment {experiment_name}"
    if sweep == "latest":
        parents = client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.sweep_key != ''",
            order_by=["start_time DESC"],
            max_results=1,
        )
        if not parents:
            raise UserError(f"sweep: experiment {experiment_name!r} has no sweep; try sweep=all")
        sweep = parents[0].info.run_id
    try:
        rows = sweeps.sweep_rows(sweep, tracking_uri)
    except mlflow.exceptions.MlflowException as error:
        raise UserError(f"sweep: {sweep!r} is not a run id in {tracking_uri}") from error
    return rows, f"sweep {sweep} ({len(rows)} jobs)"


def main(argv: list[str] | None = None) -> list[dict]:
    arguments = cli.parse_assignments(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    tracking_uri = arguments["tracking_uri"] or default_tracking_uri()
    from fmnist_exp import sweep, tracking

    try:
        rows, title = rows_for(arguments["experiment"], arguments["sweep"], tracking_uri)
    except UserError as error:
        cli.fail(str(error))
    print(f"{title}, best objective first (validation accuracy, or training accuracy without a validation set):\n")
    print(sweep.markdown_table(rows))
    finished = [row for row in rows if row["status"] == "FINISHED"]
    if arguments["champion"] and finished:
        version = tracking.register_model(finished[0]["run_id"], arguments["champion"], alias="champion")
        print(f"registered run {finished[0]['run_id']} as {arguments['champion']} version {version} @champion")
    return rows


if __name__ == "__main__":
    main()
