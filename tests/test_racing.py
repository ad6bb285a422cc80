"""Racing seeds (`replicates=auto`): the decision rule (analysis/racing.py) on fixed numbers."""

from __future__ import annotations

import math

import pytest

from fmnist_exp.analysis import racing


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
