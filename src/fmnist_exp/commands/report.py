"""`python -m fmnist_exp.report`: an experiment's runs, or one sweep's, as a table best-first.

python -m fmnist_exp.report                              # the newest sweep of experiment fmnist_exp
python -m fmnist_exp.report sweep=<parent run id>
python -m fmnist_exp.report sweep=all mlflow.experiment_name=fmnist_exp   # every run of the experiment
python -m fmnist_exp.report champion=fmnist_cnn          # also register the best as @champion

The keys are conf/report.yaml's, typed by ReportConfig; `--help` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fmnist_exp.analysis import ranking
from fmnist_exp.analysis import seed_noise as compare
from fmnist_exp.commands import hydra_app as commands
from fmnist_exp.config import checks
from fmnist_exp.errors import UserError
from fmnist_exp.runtime import noise
from fmnist_exp.tracking import registry


@dataclass
class ReportConfig:
    # latest: the experiment's newest sweep | all: every run of the experiment | a sweep's parent run id.
    sweep: str = "latest"
    # A registry name: file the best FINISHED run's model there as @champion (None: register nothing).
    champion: str | None = None
    mlflow: commands.ExperimentStoreConfig = field(default_factory=commands.ExperimentStoreConfig)


def rows_for(store, experiment_name: str, sweep: str) -> tuple[list[dict], str, list[str], str]:
    """The rows, a title, the swept keys (columns of their own) and the UI link to look at them."""
    from fmnist_exp.sweeps import comparison
    from fmnist_exp.tracking.links import ui_link

    store.reap_orphans()  # in every experiment of the store, not only the one reported
    experiment_id = store.experiment_id(experiment_name, create=False)
    if experiment_id is None:
        raise UserError(f"mlflow.experiment_name: no experiment named {experiment_name!r} in {store.uri}")
    if sweep == "all":
        runs = store.search(experiment_name, "tags.sweep_key IS NULL")
        rows = ranking.best_first([ranking.row_of(run) for run in runs])
        return rows, f"all {len(rows)} runs of experiment {experiment_name}", [], ui_link(store.uri, experiment_id)
    if sweep == "latest":
        parents = store.search(experiment_name, "tags.sweep_key != ''", max_results=1, order_by=["start_time DESC"])
        if not parents:
            raise UserError(f"sweep: experiment {experiment_name!r} has no sweep; try sweep=all")
        sweep = parents[0].run_id
    else:
        try:
            tags = store.get_run(sweep).tags
        except UserError as error:
            raise UserError(f"sweep: {error}; give a sweep's parent run id, latest or all") from error
        if "sweep_key" not in tags:
            raise UserError(
                f"sweep: run {sweep} is no sweep (a single run, or a sweep's job); give a sweep's parent run id, "
                "latest (the newest sweep) or all (every run of the experiment)"
            )
    rows = comparison.sweep_rows(store, sweep)
    keys = comparison.swept_keys(dict(store.get_run(sweep).params))
    return rows, f"sweep {sweep} ({len(rows)} jobs)", keys, ui_link(store.uri, experiment_id, sweep)


def main(argv: list[str] | None = None) -> list[dict] | None:
    """The command line (`argv`, else sys.argv): prints the table and returns its rows."""
    noise.quiet()
    return commands.run("report", ReportConfig, report, argv)


def console() -> None:
    """`fmnist-report`: main without its return value, which a console script would pass to sys.exit."""
    main()


def report(config: ReportConfig) -> list[dict]:
    from fmnist_exp.tracking.store import Store

    checks.check_orphan_bound(config.mlflow.orphan_after_minutes)
    store = Store(config.mlflow.tracking_uri, config.mlflow.orphan_after_minutes)
    store.check(existing=True)
    rows, title, keys, link = rows_for(store, config.mlflow.experiment_name, config.sweep)
    print(f"{title}, best objective first (validation accuracy, or training accuracy without a validation set):\n")
    print(ranking.markdown_table(rows, keys))
    configs = compare.by_config(rows)
    if configs:
        print(
            "Per config over its seeds (95% t-interval; the best against each other at the 5% level, by a paired "
            "t-test where the two share their seeds, else by Welch's t-test):\n"
        )
        print(compare.noise_table(configs))
        print("\n".join(compare.winner_lines(configs)))
    print(f"\nIn the MLflow UI: {link}")
    finished = [row for row in rows if row["status"] == "FINISHED"]
    if config.champion and finished:
        version = registry.register_model(store, finished[0]["run_id"], config.champion, alias="champion")
        print(f"registered run {finished[0]['run_id']} as {config.champion} version {version} @champion")
    return rows


if __name__ == "__main__":
    main()
