"""Racing seeds (`replicates=auto`): the decision rule on fixed numbers, and real races.

The rule (analysis/racing.py) on hand-made objectives; a job's replicates in a race; a real race of
four tiny configs in a subprocess, checked in its MLflow store against the rule; and the same race's
later round under the joblib launcher. The races use twins, two configs that train alike (deterministic,
differing only in their test set's size), so that a tie, and with it a later round, is certain.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pytest

from fmnist_exp.analysis import racing
from fmnist_exp.sweeps.jobs import replicate_indices
from helpers import all_runs, multirun, small_run, typed_config


def entrant(label: str, *objectives: float) -> racing.Entrant:
    return racing.Entrant(label, [label], {str(42 + index): value for index, value in enumerate(objectives)})


# -- the rule, on fixed numbers ---------------------------------------------------------------------


@pytest.mark.unit
def test_a_clear_loser_is_decided_after_two_seeds_and_a_close_rival_races_on():
    leader, loser, close = entrant("a", 0.80, 0.82), entrant("b", 0.20, 0.21), entrant("c", 0.78, 0.83)
    more = racing.decide([leader, loser, close], max_seeds=3)
    # a leads b by 0.60 and 0.61 on seeds 42 and 43: paired, t = 121 on 1 degree of freedom.
    assert more == [leader, close]
    assert loser.state == racing.BEHIND
    assert loser.reason.startswith("behind after 2 seeds: a leads by +60.50 points (95% interval +54.15 to +66.85)")
    assert "paired t-test over seeds 42,43" in loser.reason
    assert leader.state == close.state == racing.RACING

    leader.scores["44"], close.scores["44"] = 0.81, 0.80  # a third seed: c is still within noise, at the max
    assert racing.decide([leader, close], max_seeds=3) == []
    assert close.state == racing.AT_MAX and close.reason.startswith("undecided at the max of 3 seeds: a leads by +0.67")
    assert leader.state == racing.LEADER and leader.reason == "the leader after 3 seeds; 1 rival undecided at the max"


@pytest.mark.unit
def test_configs_that_tie_on_every_seed_race_to_the_max():
    twins = [entrant("x", 0.5, 0.6), entrant("y", 0.5, 0.6)]
    assert racing.decide(twins, max_seeds=4) == twins  # the first of equals leads
    for twin in twins:
        twin.scores["44"] = 0.55
    assert racing.decide(twins, max_seeds=3) == []
    assert [twin.state for twin in twins] == [racing.LEADER, racing.AT_MAX]


@pytest.mark.unit
def test_the_same_difference_on_every_seed_decides_nothing():
    """Two seeds that differ by the same step (validation accuracies move in steps of 1/6,000) give a
    zero-width interval: no spread is known, so the rival races on instead of being called behind."""
    leader, rival = entrant("a", 0.9005, 0.9010), entrant("b", 0.9000, 0.9005)
    assert racing.decide([leader, rival], max_seeds=3) == [leader, rival]
    assert rival.state == racing.RACING
    leader.scores["44"], rival.scores["44"] = 0.9020, 0.9000  # a third seed gives the spread: +0.05, +0.05, +0.20
    assert racing.decide([leader, rival], max_seeds=3) == []
    assert rival.state == racing.AT_MAX


@pytest.mark.unit
def test_a_config_out_of_the_race_stays_out_when_the_leader_changes():
    race = racing.Race(min_seeds=2, max_seeds=3)
    for label, objectives in (("a", [0.80, 0.82]), ("b", [0.20, 0.21]), ("c", [0.78, 0.83])):
        race.record(label, [label], [42, 43], objectives, pruned=False, failure="")
    assert [item.label for item in race.next_round()] == ["a", "c"]
    race.record("a", ["a"], [44], [0.50], pruned=False, failure="")  # a falls behind c's mean
    race.record("c", ["c"], [44], [0.80], pruned=False, failure="")
    assert race.next_round() == []
    states = {item.label: item.state for item in race.entrants}
    assert states == {"a": racing.AT_MAX, "b": racing.BEHIND, "c": racing.LEADER}
    assert race.rounds == 2 and race.runs == 8 and race.saved == 1
    lines = race.lines()
    assert lines[0] == (
        "Race (replicates=auto): 2 to 3 seeds per config, 1 more a round; 2 rounds, 8 runs instead of 9 with "
        "every config on 3 seeds (1 saved)."
    )
    assert [line.split(":")[0] for line in lines[1:]] == ["- c", "- a", "- b"]  # leader, undecided, behind


@pytest.mark.unit
def test_failed_and_pruned_configs_are_dropped_with_why():
    race = racing.Race(min_seeds=2, max_seeds=5)
    race.record("ok", ["ok"], [42, 43], [0.7, 0.72], pruned=False, failure="")
    race.record("failed", ["failed"], [42, 43], [0.7, math.nan], pruned=False, failure="RunStopped: NaN loss")
    race.record("pruned", ["pruned"], [42], [0.1], pruned=True, failure="")
    race.record("refused", ["refused"], [], [], pruned=False, failure="model.width: 0 must be ...")
    assert race.next_round() == []  # the one config left leads alone
    reasons = {item.label: item.reason for item in race.entrants}
    assert reasons == {
        "ok": "the leader after 2 seeds",
        "failed": "dropped: its run on seed 43 failed (RunStopped: NaN loss)",
        "pruned": "dropped after 1 seed: a run was pruned",
        "refused": "dropped: its job trained nothing (model.width: 0 must be ...)",
    }
    assert race.runs == 5 and race.saved == 15


@pytest.mark.unit
def test_the_race_is_kept_and_read_back(tmp_path):
    race = racing.Race(2, 3)
    race.record("a", ["x=1"], [42, 43], [0.5, 0.6], pruned=False, failure="")
    race.save(tmp_path / "summary" / racing.RACE_FILE)
    assert racing.load(tmp_path / "summary" / racing.RACE_FILE) == race
    assert racing.load(tmp_path / "nothing.json") is None


@pytest.mark.unit
def test_a_race_job_trains_its_rounds_seeds():
    def indices(*settings: str) -> list[int]:
        return list(replicate_indices(typed_config(["replicates=auto", "race.max_seeds=5", *settings])))

    assert indices() == [0, 1]  # the first round: race.min_seeds
    assert indices("race.min_seeds=3") == [0, 1, 2]
    assert indices("race.seed_offset=2") == [2]  # a later round: race.seeds_per_round more
    assert indices("race.seed_offset=4", "race.seeds_per_round=2") == [4]  # never past race.max_seeds
    assert list(replicate_indices(typed_config(["replicates=3"]))) == [0, 1, 2]


# -- real races -------------------------------------------------------------------------------------

# Twins: data.max_test_samples=200,201 train alike (deterministic; the test set is not the objective).
RACE = [
    *small_run(600, "200,201", "epochs=1", "trainer.verbose=0", "deterministic=true"),
    "model=fast_cnn",
    "model.width=8",
    "mlflow.log_model=false",
    "replicates=auto",
    "race.min_seeds=2",
    "race.max_seeds=3",
]


def children_by_job(tracking_uri: str, sweep: Path) -> tuple[object, dict[int, list]]:
    """The parent run, and its children by the job (the sweep's subfolder) that trained them."""
    runs = all_runs(tracking_uri)
    assert [run.info.status for run in runs if run.info.status != "FINISHED"] == []  # none left RUNNING
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    jobs: dict[int, list] = defaultdict(list)
    for run in runs:
        if run is not parent:
            jobs[int(Path(run.data.tags["output_dir"]).relative_to(sweep).parts[0])].append(run)
    return parent, jobs


def label(run) -> str:
    return run.data.tags["config_group"].rsplit(" [", 1)[0]


@pytest.mark.slow
def test_a_race_gives_more_seeds_only_to_undecided_configs(tmp_path, tracking_uri):
    result = multirun([*RACE, "optimizer.learning_rate=0.003,0.000001"], tracking_uri, tmp_path)
    parent, jobs = children_by_job(tracking_uri, tmp_path / "sweep")

    # The first round: the grid's four jobs, each config on race.min_seeds seeds.
    first = {number: runs for number, runs in jobs.items() if number < 4}
    assert len(first) == 4 and all(
        sorted(run.data.params["seed"] for run in runs) == ["42", "43"] for runs in first.values()
    )
    standing = [
        racing.Entrant(label(runs[0]), [], {run.data.params["seed"]: run.data.metrics["objective"] for run in runs})
        for runs in first.values()
    ]
    undecided = {item.label for item in racing.decide(standing, max_seeds=3)}
    later = [run for number, runs in jobs.items() if number >= 4 for run in runs]
    assert {label(run) for run in later} == undecided and all(run.data.params["seed"] == "44" for run in later)
    twins = {item.label for item in standing if "learning_rate=0.003" in item.label}
    assert twins <= undecided  # they tie on every seed, so neither can be decided
    assert "in round 2 of the race" in result.stdout

    note = parent.data.tags["mlflow.note.content"]
    runs = 8 + len(later)
    assert (
        f"Race (replicates=auto): 2 to 3 seeds per config, 1 more a round; 2 rounds, {runs} runs instead of 12" in note
    )
    assert f"every config on 3 seeds ({12 - runs} saved)" in note
    assert "the leader after 3 seeds" in note and ": undecided at the max of 3 seeds: " in note
    assert "optimizer.learning_rate=1e-06: behind after" in note  # each of the twins at 1e-6
    assert parent.data.params["replicates"] == "auto" and parent.data.params["race.max_seeds"] == "3"
    assert note.rstrip().endswith("replicates=3")  # the winner re-run on the seeds it ran


@pytest.mark.slow
def test_a_race_launches_its_later_round_through_the_joblib_launcher(tmp_path, tracking_uri):
    multirun([*RACE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tracking_uri, tmp_path)
    parent, jobs = children_by_job(tracking_uri, tmp_path / "sweep")
    assert sorted(len(runs) for runs in jobs.values()) == [1, 1, 2, 2]  # two twins on 2 seeds, then 1 more each
    seeds = defaultdict(set)
    for runs in jobs.values():
        for run in runs:
            seeds[label(run)].add(run.data.params["seed"])
    assert list(seeds.values()) == [{"42", "43", "44"}] * 2
    assert "6 runs instead of 6 with every config on 3 seeds (0 saved)" in parent.data.tags["mlflow.note.content"]
